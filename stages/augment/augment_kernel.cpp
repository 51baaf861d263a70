#include "stages/augment/augment_kernel.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

#include "stages/common/rounding.hpp"

namespace millrace::augment {
namespace {

void check_crop(int width, int height, int crop_w, int crop_h) {
  if (width <= 0 || height <= 0) throw std::invalid_argument("crop: image size must be positive");
  if (crop_w <= 0 || crop_h <= 0) throw std::invalid_argument("crop: crop size must be positive");
  if (crop_w > width || crop_h > height) {
    throw CropError("crop " + std::to_string(crop_w) + "x" + std::to_string(crop_h) +
                    " does not fit in an image of " + std::to_string(width) + "x" +
                    std::to_string(height));
  }
}

int cv_interpolation(Interp interp) {
  switch (interp) {
    case Interp::kLinear:
      return cv::INTER_LINEAR;
    case Interp::kArea:
      return cv::INTER_AREA;
    case Interp::kCubic:
      return cv::INTER_CUBIC;
    case Interp::kNearest:
      return cv::INTER_NEAREST;
  }
  throw std::invalid_argument("resize_window: unknown interpolation");
}

}  // namespace

std::pair<int, int> resize_shorter_size(int width, int height, int shorter) {
  if (width <= 0 || height <= 0 || shorter <= 0) {
    throw std::invalid_argument("resize_shorter_size: sizes must be positive");
  }
  // 64-bit product: shorter * longer overflows int for large images.
  if (height > width) {
    return {shorter, static_cast<int>(std::int64_t{shorter} * height / width)};
  }
  return {static_cast<int>(std::int64_t{shorter} * width / height), shorter};
}

Rect center_window(int width, int height, int crop_w, int crop_h) {
  check_crop(width, height, crop_w, crop_h);
  return Rect{(width - crop_w) / 2, (height - crop_h) / 2, crop_w, crop_h};
}

FitSteps mxnet_fit_steps(int width, int height, int crop_w, int crop_h) {
  if (width <= 0 || height <= 0 || crop_w <= 0 || crop_h <= 0) {
    throw std::invalid_argument("mxnet_fit_steps: sizes must be positive");
  }
  // A very elongated image would be scaled to a huge one (1 x 1000 to a height of 224: 224,000
  // pixels wide); beyond this many crops' worth of pixels it is a per-sample error instead.
  const std::int64_t max_pixels = kMaxFitCrops * std::int64_t{crop_w} * crop_h;
  FitSteps steps;
  // Single-precision arithmetic truncated to an integer, as image_aug_default.cc computes it.
  if (height < crop_h) {
    const auto w = static_cast<std::int64_t>(
        static_cast<float>(crop_h) / static_cast<float>(height) * static_cast<float>(width));
    if (w <= 0 || w * crop_h > max_pixels) {
      throw CropError("an image of " + std::to_string(width) + "x" + std::to_string(height) +
                      " cannot be scaled to the crop's height " + std::to_string(crop_h));
    }
    steps.size[steps.count++] = {static_cast<int>(w), crop_h};
    width = static_cast<int>(w);
    height = crop_h;
  }
  if (width < crop_w) {
    const auto h = static_cast<std::int64_t>(
        static_cast<float>(crop_w) / static_cast<float>(width) * static_cast<float>(height));
    if (h <= 0 || h * crop_w > max_pixels) {
      throw CropError("an image of " + std::to_string(width) + "x" + std::to_string(height) +
                      " cannot be scaled to the crop's width " + std::to_string(crop_w));
    }
    steps.size[steps.count++] = {crop_w, static_cast<int>(h)};
  }
  return steps;
}

Rect random_window(int width, int height, int crop_w, int crop_h, CounterRng& rng) {
  check_crop(width, height, crop_w, crop_h);
  const int y = rng.uniform_int(0, height - crop_h);
  const int x = rng.uniform_int(0, width - crop_w);
  return Rect{x, y, crop_w, crop_h};
}

Rect random_resized_window(int width, int height, std::array<double, 2> scale,
                           std::array<double, 2> ratio, CounterRng& rng) {
  if (width <= 0 || height <= 0) {
    throw std::invalid_argument("random_resized_window: image size must be positive");
  }
  if (!(std::isfinite(scale[0]) && std::isfinite(scale[1]) && scale[0] >= 0 &&
        scale[0] <= scale[1] && scale[1] > 0)) {
    throw std::invalid_argument("random_resized_window: scale must satisfy 0 <= lo <= hi, hi > 0");
  }
  if (!(std::isfinite(ratio[0]) && std::isfinite(ratio[1]) && ratio[0] > 0 &&
        ratio[0] <= ratio[1])) {
    throw std::invalid_argument("random_resized_window: ratio must satisfy 0 < lo <= hi");
  }

  const double area = static_cast<double>(width) * height;
  const double log_lo = std::log(ratio[0]);
  const double log_hi = std::log(ratio[1]);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * rng.uniform(scale[0], scale[1]);
    const double aspect = std::exp(rng.uniform(log_lo, log_hi));
    // Compared as doubles: a large scale could give a size beyond int.
    const double w = round_half_to_even(std::sqrt(target_area * aspect));
    const double h = round_half_to_even(std::sqrt(target_area / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const int cw = static_cast<int>(w);
      const int ch = static_cast<int>(h);
      const int y = rng.uniform_int(0, height - ch);
      const int x = rng.uniform_int(0, width - cw);
      return Rect{x, y, cw, ch};
    }
  }

  // Central crop. torchvision can round a side to 0 here for an extreme image and ratio (e.g.
  // 1x1000 with ratio >= 3); we keep one pixel so that the window is always usable.
  const double in_ratio = static_cast<double>(width) / height;
  int cw = width;
  int ch = height;
  if (in_ratio < ratio[0]) {
    ch = std::max(1, static_cast<int>(round_half_to_even(cw / ratio[0])));
  } else if (in_ratio > ratio[1]) {
    cw = std::max(1, static_cast<int>(round_half_to_even(ch * ratio[1])));
  }
  return Rect{(width - cw) / 2, (height - ch) / 2, cw, ch};
}

void resize_window(const ImageView& src, Rect roi, int out_w, int out_h, Interp interp,
                   std::vector<std::uint8_t>& out) {
  if (src.channels != 3) throw std::invalid_argument("resize_window: source must have 3 channels");
  if (out_w <= 0 || out_h <= 0) {
    throw std::invalid_argument("resize_window: output size must be positive");
  }
  if (roi.width <= 0 || roi.height <= 0 || roi.x < 0 || roi.y < 0 ||
      roi.width > src.width - roi.x || roi.height > src.height - roi.y) {
    throw std::invalid_argument("resize_window: window outside the image");
  }
  if (src.data == nullptr || src.stride < static_cast<std::size_t>(src.width) * 3) {
    throw std::invalid_argument("resize_window: source has no pixels or a short stride");
  }
  const int flag = cv_interpolation(interp);

  const std::size_t out_row = static_cast<std::size_t>(out_w) * 3;
  out.resize(out_row * static_cast<std::size_t>(out_h));
  const std::uint8_t* first = src.row(roi.y) + static_cast<std::size_t>(roi.x) * 3;

  if (roi.width == out_w && roi.height == out_h) {
    for (int y = 0; y < out_h; ++y) {
      std::memcpy(out.data() + out_row * static_cast<std::size_t>(y),
                  first + src.stride * static_cast<std::size_t>(y), out_row);
    }
    return;
  }

  // Headers over the caller's buffers: cv::resize only reads the source, and a destination of
  // the right size and type is written in place rather than reallocated.
  const cv::Mat in(roi.height, roi.width, CV_8UC3, const_cast<std::uint8_t*>(first), src.stride);
  cv::Mat dst(out_h, out_w, CV_8UC3, out.data(), out_row);
  cv::resize(in, dst, dst.size(), 0, 0, flag);
  if (dst.data != out.data()) {
    throw std::logic_error("resize_window: cv::resize reallocated its destination");
  }
}

}  // namespace millrace::augment

namespace millrace::augment {

namespace {

// Bilinear taps in fixed point. Rows: weights in 1/256ths, and a blended row is kept halved, in
// 1/128ths of a value (at most 255 * 128: 16 bits), so that the row pass runs as 16-bit vector
// multiplies, which every x86-64 vector unit has (SSE2 has no 32-bit one). Columns: weights in
// 1/16384ths, one 16-bit multiply-add per pair of taps. Against exact bilinear interpolation an
// output is off by at most 0.5 (its rounding) + 255 / 512 (the row weights) + 255 / 32768 (the
// column weights) + 1 / 256 (the halving): 1.01 steps; cv::warpAffine's 1/32-pixel taps allowed
// four.
constexpr int kColumnBits = 14;
constexpr int kRowBits = 8;

// One output coordinate's two source neighbours (replicated past the edges) and their weights.
struct Tap {
  int first = 0;
  int second = 0;
  std::int32_t w_first = 0;
  std::int32_t w_second = 0;
};

// The taps of `n` output positions at origin + (i + 0.5) * step - 0.5 over `size` source pixels,
// with weights in 1/2^bits.
void make_taps(double origin, double step, int n, int size, int bits, std::vector<Tap>& taps) {
  const int one = 1 << bits;
  taps.resize(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    const double at = origin + (i + 0.5) * step - 0.5;
    const double floor_at = std::floor(at);
    const auto w_second = static_cast<std::int32_t>(std::lround((at - floor_at) * one));
    // Clamped in double first: a window far outside the image must not overflow an int.
    const int below = static_cast<int>(std::clamp(floor_at, -1.0, static_cast<double>(size)));
    Tap& t = taps[static_cast<std::size_t>(i)];
    t.first = std::clamp(below, 0, size - 1);
    t.second = std::clamp(below + 1, 0, size - 1);
    t.w_second = w_second;
    t.w_first = one - w_second;
  }
}

// Separable bilinear resampling, rows first: each output row blends its two source rows over the
// columns any output pixel reads (contiguous bytes: the compiler vectorises it), then each output
// pixel blends two columns of that blended row. Half the multiplications of a two-dimensional
// remap and no per-pixel coordinate arithmetic: cv::warpAffine took twice as long on the same
// windows (BM_ResampleWindow*). Scratch is per thread and keeps its capacity.
void resample_linear(const ImageView& src, const WindowF& window, int out_w, int out_h,
                     std::uint8_t* out) {
  thread_local std::vector<Tap> columns;
  thread_local std::vector<Tap> rows;
  thread_local std::vector<std::int16_t> blended;
  make_taps(window.x, window.width / out_w, out_w, src.width, kColumnBits, columns);
  make_taps(window.y, window.height / out_h, out_h, src.height, kRowBits, rows);
  int lo = src.width - 1;
  int hi = 0;
  for (const Tap& t : columns) {
    lo = std::min(lo, t.first);
    hi = std::max(hi, t.second);
  }
  // From here on a column tap holds its two byte offsets into the blended row.
  for (Tap& t : columns) {
    t.first = (t.first - lo) * 3;
    t.second = (t.second - lo) * 3;
  }
  const std::size_t span = static_cast<std::size_t>(hi - lo + 1) * 3;
  // Four values of padding: the vector loop reads a tap's fourth value (weighted by nothing).
  blended.assign(span + 4, 0);
  constexpr int kShift = kColumnBits + kRowBits - 1;
  constexpr std::int32_t kHalf = 1 << (kShift - 1);
  for (int i = 0; i < out_h; ++i) {
    const Tap& r = rows[static_cast<std::size_t>(i)];
    const std::uint8_t* a = src.row(r.first) + static_cast<std::size_t>(lo) * 3;
    const std::uint8_t* b = src.row(r.second) + static_cast<std::size_t>(lo) * 3;
    const auto w_first = static_cast<std::uint16_t>(r.w_first);
    const auto w_second = static_cast<std::uint16_t>(r.w_second);
    std::int16_t* m = blended.data();
    for (std::size_t k = 0; k < span; ++k) {
      // At most 255 * 256 = 65280: the sum fits 16 bits unsigned, its half 15.
      const auto sum = static_cast<std::uint16_t>(a[k] * w_first + b[k] * w_second);
      m[k] = static_cast<std::int16_t>(static_cast<std::uint16_t>(sum + 1U) >> 1U);
    }
    std::uint8_t* o = out + static_cast<std::size_t>(i) * static_cast<std::size_t>(out_w) * 3;
    const Tap* c = columns.data();
    int j = 0;
#if defined(__SSE2__)
    // One pixel per step: its three channels' (first, second) pairs interleaved into 16-bit
    // lanes, one multiply-add against (w_first, w_second), and four bytes stored, the fourth
    // overwritten by the next pixel (so the row's last pixel is left to the scalar loop).
    const __m128i half = _mm_set1_epi32(kHalf);
    for (; j + 1 < out_w; ++j, ++c, o += 3) {
      const __m128i p = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m + c->first));
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m + c->second));
      const __m128i w =
          _mm_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(c->w_first) |
                                          (static_cast<std::uint32_t>(c->w_second) << 16)));
      __m128i v = _mm_madd_epi16(_mm_unpacklo_epi16(p, q), w);
      v = _mm_srai_epi32(_mm_add_epi32(v, half), kShift);
      v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);
      const auto bytes = static_cast<std::uint32_t>(_mm_cvtsi128_si32(v));
      std::memcpy(o, &bytes, 4);
    }
#endif
    for (; j < out_w; ++j, ++c, o += 3) {
      const std::int16_t* p = m + c->first;
      const std::int16_t* q = m + c->second;
      const std::int32_t w_p = c->w_first;
      const std::int32_t w_q = c->w_second;
      // At most 255 * 2^21 + 2^20: within int32, and never above 255 after the shift.
      o[0] = static_cast<std::uint8_t>((p[0] * w_p + q[0] * w_q + kHalf) >> kShift);
      o[1] = static_cast<std::uint8_t>((p[1] * w_p + q[1] * w_q + kHalf) >> kShift);
      o[2] = static_cast<std::uint8_t>((p[2] * w_p + q[2] * w_q + kHalf) >> kShift);
    }
  }
}

}  // namespace

void resample_window(const ImageView& src, WindowF window, int out_w, int out_h, Interp interp,
                     std::vector<std::uint8_t>& out) {
  if (src.channels != 3) {
    throw std::invalid_argument("resample_window: source must have 3 channels");
  }
  if (src.data == nullptr || src.width <= 0 || src.height <= 0 ||
      src.stride < static_cast<std::size_t>(src.width) * 3) {
    throw std::invalid_argument("resample_window: source has no pixels or a short stride");
  }
  if (out_w <= 0 || out_h <= 0) {
    throw std::invalid_argument("resample_window: output size must be positive");
  }
  if (!(std::isfinite(window.x) && std::isfinite(window.y) && std::isfinite(window.width) &&
        std::isfinite(window.height) && window.width > 0 && window.height > 0)) {
    throw std::invalid_argument("resample_window: the window must be finite and not empty");
  }
  if (interp == Interp::kArea) {
    throw std::invalid_argument("resample_window: area interpolation needs whole-pixel windows");
  }
  const std::size_t out_row = static_cast<std::size_t>(out_w) * 3;
  out.resize(out_row * static_cast<std::size_t>(out_h));
  if (interp == Interp::kLinear) {
    resample_linear(src, window, out_w, out_h, out.data());
    return;
  }
  const double sx = window.width / out_w;
  const double sy = window.height / out_h;
  // The inverse map, output pixel -> source position, as cv::resize's (dst + 0.5) * s - 0.5.
  const cv::Matx23d to_source(sx, 0.0, window.x + 0.5 * sx - 0.5,  //
                              0.0, sy, window.y + 0.5 * sy - 0.5);
  const cv::Mat in(src.height, src.width, CV_8UC3, const_cast<std::uint8_t*>(src.data), src.stride);
  cv::Mat dst(out_h, out_w, CV_8UC3, out.data(), out_row);
  cv::warpAffine(in, dst, to_source, dst.size(), cv_interpolation(interp) | cv::WARP_INVERSE_MAP,
                 cv::BORDER_REPLICATE);
  if (dst.data != out.data()) {
    throw std::logic_error("resample_window: cv::warpAffine reallocated its destination");
  }
}

}  // namespace millrace::augment
