// `normalize`: the int8 contract (docs/int8-contract.md) applied in one pass.
//
// Contract: concurrent; the lookup table is built once and only read. process() applies the
// sample's pending crop region and mirror (Sample::geometry.roi and kMirror in geometry.flips:
// stages/common/image_geometry.hpp), and then resets them, while mapping every pixel through the
// per-channel 256-entry table into the output layout, so decoded pixels are copied exactly once on
// their way to the batch. The effective quantization parameters ride on every sample (and so every
// batch). The output goes into the sample's own storage; the input image, when it was borrowed from
// a pool (a decoded or resized image read through its crop region), goes back to its pool once
// read, or when the sample fails here.
#pragma once

#include <memory>
#include <vector>

#include "engine/registry.hpp"
#include "stages/common/image_geometry.hpp"
#include "stages/normalize/normalize_kernel.hpp"

namespace millrace {

// Reads a float32 NumPy array (C order) from a .npy file; returns its shape. Throws
// std::runtime_error naming the path on any problem.
std::vector<std::int64_t> read_npy_float32(const std::string& path, std::vector<float>& values);

class NormalizeStage final : public TransformStage {
 public:
  enum class Order { kRgb, kBgr };
  struct Params {
    DType dtype = DType::kInt8;
    std::vector<double> mean;
    std::vector<double> std;
    double scale = 1.0;
    double zero_point = 0.0;
    Layout layout = Layout::kAny;  // kAny: `auto`
    Order order = Order::kRgb;
    std::string mean_image;
  };
  static StageInfo info();
  static const Schema<Params>& schema();
  static void check(const Params& p, const ConfigNode& node, const std::string& where,
                    Diagnostics& d);

  NormalizeStage(StageContext context, Params params);
  void prepare() override;
  void process(Sample& sample, RunReporter& reporter) const override;

  // `layout: auto` takes the layout the stages after it want (infer: what its first layer reads);
  // an explicit layout is kept.
  StreamWants want_input(const StreamWants& output) override;
  // Describes its output: element type, layout, the crop's shape and how the values relate to
  // pixels (the mean, the unit and zero point of the int8 contract).
  StreamDesc link(const StreamDesc& input, Diagnostics& diagnostics) override;

  const Params& params() const { return params_; }
  const Quantization& quantization() const { return quantization_; }
  Layout layout() const { return layout_; }

 private:
  Params params_;
  Layout layout_ = Layout::kNCHW;
  normalize::Table table_;
  Quantization quantization_;
  std::vector<float> mean_image_;
  std::vector<std::int64_t> mean_image_shape_;
};

}  // namespace millrace
