// `augment`: shorter-side resize, then a crop (center, random or random-resized) and a mirror.
//
// Contract: concurrent; process() touches only its sample. Every random choice comes from a
// counter-based generator keyed on (seed, epoch, sample id, stage name), so a sample's output is
// the same for any thread count, queue size, ordering mode or batch size. A crop is recorded as a
// region of the sample and the mirror as a deferred flip: normalize applies both while it copies,
// so a plain center crop costs no pass over the pixels here.
#pragma once

#include <array>

#include "engine/registry.hpp"
#include "stages/augment/augment_kernel.hpp"

namespace millrace {

class AugmentStage final : public TransformStage {
 public:
  enum class Crop { kNone, kCenter, kRandom, kRandomResized };
  struct Params {
    int resize = 0;
    Crop crop = Crop::kCenter;
    std::array<int, 2> size{0, 0};  // height, width
    double mirror = 0.0;
    std::array<double, 2> scale{0.08, 1.0};
    std::array<double, 2> ratio{3.0 / 4.0, 4.0 / 3.0};
    augment::Interp interpolation = augment::Interp::kLinear;
    std::int64_t seed = -1;
  };
  static StageInfo info();
  static const Schema<Params>& schema();
  static void check(const Params& p, const ConfigNode& node, const std::string& where,
                    Diagnostics& d);

  AugmentStage(StageContext context, Params params);
  void prepare() override;
  void process(Sample& sample, RunReporter& reporter) const override;
  const Params& params() const { return params_; }

 private:
  Params params_;
  std::uint64_t seed_ = 0;
};

}  // namespace millrace
