// Geometry kernels of the augment stage: where to crop, and resizing a window of an image.
//
// Contract: every function here is a plain function of its arguments (plus the CounterRng it is
// handed, which it advances), so any number of threads may call them at once as long as each uses
// its own CounterRng and its own output buffer. Source pixels are only read; the caller owns
// them and keeps them alive during the call. `resize_window` writes into the caller's vector and
// reuses its capacity, so a pooled buffer stops allocating after its first use. Nothing blocks.
//
// The window choices reproduce the reference libraries exactly (MXNet's shorter-side resize and
// centre crop, torchvision's RandomResizedCrop.get_params), so that a model trained with those
// pipelines sees the same geometry here. Resizing delegates to OpenCV's cv::resize, the kernel
// MXNet and most C++ loaders use, so results are bit-identical to it.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "engine/random.hpp"
#include "stages/common/image.hpp"

namespace millrace::augment {

// A crop that does not fit the image: a per-sample data problem (an image smaller than the crop),
// which the stage handles by its on_error policy rather than a programming error.
class CropError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Interp { kLinear, kArea, kCubic, kNearest };

// MXNet's shorter-side resize: the shorter side becomes `shorter`, the longer one
// shorter * long / short (integer division). Returns (width, height). Throws
// std::invalid_argument for non-positive sizes.
std::pair<int, int> resize_shorter_size(int width, int height, int shorter);

// The window of crop_w x crop_h centred with integer division: x = (width - crop_w) / 2.
// Throws CropError if the crop does not fit, std::invalid_argument for non-positive crop sizes.
Rect center_window(int width, int height, int crop_w, int crop_h);

// MXNet's default augmenter before its center or random crop: an image lower than the crop is
// first scaled to the crop's height, its width becoming (int)((float)crop_h / height * width);
// then one narrower than the crop is scaled to the crop's width, its height becoming
// (int)((float)crop_w / width * height). The sizes (width, height) of those resizes, in order:
// none, one or two. Throws CropError when a computed side is 0 (where MXNet's cv::resize would
// fail) or a scaled image would hold more than kMaxFitCrops times the crop's pixels (an image
// some 64 times wider than high, which MXNet would scale anyway), std::invalid_argument for
// non-positive sizes.
constexpr std::int64_t kMaxFitCrops = 64;
struct FitSteps {
  int count = 0;
  std::array<std::pair<int, int>, 2> size{};
};
FitSteps mxnet_fit_steps(int width, int height, int crop_w, int crop_h);

// A uniformly placed crop_w x crop_h window: y = uniform_int(0, height - crop_h), then
// x = uniform_int(0, width - crop_w) (torchvision RandomCrop's draw order).
// Throws like center_window.
Rect random_window(int width, int height, int crop_w, int crop_h, CounterRng& rng);

// torchvision.transforms.RandomResizedCrop.get_params: up to 10 attempts at a window whose area is
// a U(scale) fraction of the image and whose log aspect ratio (w / h) is U(log ratio); a window
// that does not fit is retried; after 10 failures, a central crop clamped to the ratio range.
// Rounding is Python's round (half to even). Throws std::invalid_argument for a non-positive image,
// scale outside 0 <= lo <= hi with hi > 0, or ratio outside 0 < lo <= hi.
Rect random_resized_window(int width, int height, std::array<double, 2> scale,
                           std::array<double, 2> ratio, CounterRng& rng);

// Resizes the `roi` of `src` (3-channel, 8-bit, interleaved) to out_w x out_h into `out`, which is
// resized to out_w * out_h * 3 bytes (rows packed). The result equals cv::resize on the ROI with
// the matching INTER_ flag, bit for bit; a roi that already has the output size is copied. Throws
// std::invalid_argument if src is not 3-channel, the roi is empty or outside the image, or the
// output size is not positive.
//
// cv::resize may split a large image into parallel tasks of OpenCV's parallel backend; Debian's
// OpenCV uses oneTBB for that, so those tasks share the pipeline's TBB workers rather than adding
// threads. cv::setNumThreads(1) turns the splitting off.
void resize_window(const ImageView& src, Rect roi, int out_w, int out_h, Interp interp,
                   std::vector<std::uint8_t>& out);

// A window with fractional bounds: [x, x + width) x [y, y + height) in the continuous
// coordinates of `src` (pixel i covers [i, i + 1)).
struct WindowF {
  double x = 0;
  double y = 0;
  double width = 0;
  double height = 0;
};

// Resamples a fractional window of `src` to out_w x out_h into `out` (resized to out_w * out_h *
// 3 bytes): output pixel (i, j) is interpolated at source position (x + (j + 0.5) * width / out_w
// - 0.5, y + (i + 0.5) * height / out_h - 0.5), the mapping cv::resize applies to a whole image,
// with the pixels past the edges of `src` replicated. kLinear runs a separable fixed-point
// bilinear kernel of its own, within 1.01 steps of exact bilinear interpolation and twice as fast
// as cv::warpAffine on these windows; kCubic and kNearest run cv::warpAffine (OpenCV's
// fixed-point taps, 1/32 pixel); kArea is not supported. Scratch rows are per thread and keep
// their capacity. Throws std::invalid_argument for a source that is not 3-channel, an empty or
// non-finite window, a non-positive output size or kArea.
void resample_window(const ImageView& src, WindowF window, int out_w, int out_h, Interp interp,
                     std::vector<std::uint8_t>& out);

}  // namespace millrace::augment
