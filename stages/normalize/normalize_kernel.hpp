// The normalize kernel: 8-bit RGB pixels to the tensor a network consumes, as fixed by
// docs/int8-contract.md (mean subtraction to int8, MXNet-compatible or general quantization).
//
// Because every input is one of 256 values per channel, each mapping is precomputed once as a
// per-channel table; `Table::apply` then copies a crop into its batch slot in one pass, applying
// the table, the horizontal mirror and the layout change (HWC to CHW) together.
//
// Concurrency: a Table is immutable after construction; any number of threads may call `apply`
// on one Table at once, each writing to its own destination. `apply` and `apply_mean_image` only
// read the source pixels (owned by the caller, who keeps them alive during the call) and write
// exactly w * h * 3 elements to `dst` (owned by the caller). Nothing allocates after
// construction, and nothing blocks.
//
// Channel order: source pixels are RGB. With `bgr`, output channel 0 is B and channel 2 is R, but
// `Params::mean` and `Params::std` are still given in RGB order (mean[0] is the red mean), as in
// the configs; `QuantInfo` is reported in output channel order, since it describes the tensor.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "engine/layout.hpp"
#include "stages/common/image.hpp"

namespace millrace::normalize {

// The element type and layout are millrace::DType and millrace::Layout (engine/layout.hpp); a
// layout here is per sample, kNCHW writing CHW and kNHWC writing HWC.

struct Params {
  DType dtype = DType::kInt8;
  std::vector<double> mean;  // empty = 0; 1 or 3 values (1 = same for every channel), RGB order
  std::vector<double> std;   // empty = MXNet mode when dtype int8 and scale==1 and zero_point==0
  double scale = 1.0;
  double zero_point = 0.0;
  bool bgr = false;  // output channel order
};

// Per output channel: the real value of one output unit (std_c / scale; 1 in MXNet mode), so that
// real = (out - zero_point) * unit, in pixel units.
struct QuantInfo {
  std::array<float, 3> unit{};
  float zero_point = 0;
  bool mxnet_mode = false;
};

// The per-channel mapping of one normalize configuration.
//
// MXNet mode (dtype int8, std empty, scale 1, zero_point 0), exact integers:
//   out_c = clamp(p_c - round_half_away_from_zero(mean_c), -128, 127)
// General mode (std defaults to 1 when empty):
//   int8/uint8: out_c = saturate(round_half_to_even((p_c - mean_c) / std_c * scale + zero_point))
//   float32:    out_c = (p_c - mean_c) / std_c * scale + zero_point, computed in double, stored
//               as the nearest float.
// The int8 output range is the full -128..127: oneDNN's s8 source accepts -128, and clamping to
// -127 as MXNet reported it would change values MXNet itself produced.
class Table {
 public:
  // Throws std::invalid_argument for parameters with no meaningful mapping: mean or std with a
  // count other than 0, 1 or 3; a non-finite value; std <= 0; scale <= 0; for integer dtypes a
  // zero point that is not an integer inside the type's range (it travels to the network as an
  // integer). Messages name the parameter ("'std' must be positive") to read as config errors.
  // The contract's rule that uint8 with a mean needs a zero point is about whether the config
  // asked for one, which only the stage can tell: here a zero point of 0 simply computes.
  explicit Table(const Params& params);

  const QuantInfo& quant() const { return quant_; }
  DType dtype() const { return dtype_; }
  int element_size() const { return dtype_ == DType::kFloat32 ? 4 : 1; }

  // Applies the per-channel 256-entry table while copying an RGB8 HWC image (w x h x 3) into
  // dst, mirrored horizontally if `mirror`, in `layout`, channels in output order (RGB, or BGR
  // if bgr). dst must hold w*h*3*element_size bytes, aligned for the element type; elements are
  // int8_t, uint8_t or float. One pass over the pixels. Throws std::invalid_argument if src is
  // not 3-channel or has a stride shorter than its rows.
  void apply(const ImageView& src, bool mirror, Layout layout, void* dst) const;

 private:
  DType dtype_;
  QuantInfo quant_;
  bool bgr_;
  // MXNet mode: the integer each output channel subtracts (the table is pixel - mean, saturated),
  // which apply() computes directly for NCHW instead of looking it up.
  std::array<int, 3> mxnet_mean_{};
  // Indexed by output channel. int8 values are stored as their two's-complement bytes.
  alignas(64) std::array<std::array<std::uint8_t, 256>, 3> bytes_{};
  alignas(64) std::array<std::array<float, 256>, 3> floats_{};
};

// MXNet's mean rounding (C's round()): 123.68 -> 124, 0.5 -> 1, -0.5 -> -1, 2.5 -> 3. Values
// beyond the int64 range saturate; NaN throws std::invalid_argument.
std::int64_t round_half_away_from_zero(double x);

// Per-pixel mean image variant (MXNet mean_img: C,H,W float32, w x h matching src). The mean is
// indexed by OUTPUT coordinates after crop and mirror, including the channel: with `bgr`, plane 0
// of mean_chw is the blue mean, as the mean image was computed from the output tensors.
//   out = clamp(p - round_half_away_from_zero(mean[c][y][x]), -128, 127)
// Mean elements should be finite; a NaN element gives an unspecified value in -128..127.
// Throws std::invalid_argument like Table::apply.
void apply_mean_image(const ImageView& src, bool mirror, Layout layout, const float* mean_chw,
                      bool bgr, std::int8_t* dst);

}  // namespace millrace::normalize
