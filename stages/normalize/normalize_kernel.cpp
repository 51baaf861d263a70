#include "stages/normalize/normalize_kernel.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>

#include "stages/common/rounding.hpp"

namespace millrace::normalize {
namespace {

// Expands 0, 1 or 3 values to three (RGB order); `fallback` for an empty list.
std::array<double, 3> per_channel(const std::vector<double>& values, double fallback,
                                  const char* name) {
  for (const double v : values) {
    if (!std::isfinite(v)) {
      throw std::invalid_argument(std::string("'") + name + "' must be finite");
    }
  }
  switch (values.size()) {
    case 0:
      return {fallback, fallback, fallback};
    case 1:
      return {values[0], values[0], values[0]};
    case 3:
      return {values[0], values[1], values[2]};
    default:
      throw std::invalid_argument(std::string("'") + name + "' expects 1 or 3 numbers, got " +
                                  std::to_string(values.size()));
  }
}

void check_image(const ImageView& src, const void* dst) {
  if (src.channels != 3) throw std::invalid_argument("normalize: source must have 3 channels");
  if (src.width < 0 || src.height < 0) throw std::invalid_argument("normalize: negative size");
  if (src.width == 0 || src.height == 0) return;
  if (src.data == nullptr || dst == nullptr) {
    throw std::invalid_argument("normalize: null source or destination");
  }
  if (src.stride < static_cast<std::size_t>(src.width) * 3) {
    throw std::invalid_argument("normalize: stride shorter than a row");
  }
}

// The copy loops. Mirror, layout and element type are template parameters so that the inner
// loops carry no branches; the channel order is two runtime offsets (c0, c2) into the pixel.
// A mirrored row is read from its last pixel backwards, so the writes stay sequential.
template <typename T, bool kMirror>
void copy_planar(const ImageView& src, const std::array<const T*, 3>& table, int c0, int c2,
                 T* dst) {
  const int w = src.width;
  const std::size_t plane = static_cast<std::size_t>(w) * static_cast<std::size_t>(src.height);
  const T* t0 = table[0];
  const T* t1 = table[1];
  const T* t2 = table[2];
  constexpr std::ptrdiff_t kStep = kMirror ? -3 : 3;
  for (int y = 0; y < src.height; ++y) {
    const std::uint8_t* s = src.row(y) + (kMirror ? 3 * static_cast<std::ptrdiff_t>(w - 1) : 0);
    T* o0 = dst + static_cast<std::size_t>(y) * static_cast<std::size_t>(w);
    T* o1 = o0 + plane;
    T* o2 = o1 + plane;
    for (int x = 0; x < w; ++x, s += kStep) {
      o0[x] = t0[s[c0]];
      o1[x] = t1[s[1]];
      o2[x] = t2[s[c2]];
    }
  }
}

template <typename T, bool kMirror>
void copy_interleaved(const ImageView& src, const std::array<const T*, 3>& table, int c0, int c2,
                      T* dst) {
  const int w = src.width;
  const T* t0 = table[0];
  const T* t1 = table[1];
  const T* t2 = table[2];
  constexpr std::ptrdiff_t kStep = kMirror ? -3 : 3;
  for (int y = 0; y < src.height; ++y) {
    const std::uint8_t* s = src.row(y) + (kMirror ? 3 * static_cast<std::ptrdiff_t>(w - 1) : 0);
    T* o = dst + static_cast<std::size_t>(y) * static_cast<std::size_t>(w) * 3;
    for (int x = 0; x < w; ++x, s += kStep, o += 3) {
      o[0] = t0[s[c0]];
      o[1] = t1[s[1]];
      o[2] = t2[s[c2]];
    }
  }
}

template <typename T>
void copy_with_table(const ImageView& src, bool mirror, Layout layout,
                     const std::array<const T*, 3>& table, bool bgr, T* dst) {
  const int c0 = bgr ? 2 : 0;
  const int c2 = bgr ? 0 : 2;
  if (layout == Layout::kNCHW) {
    if (mirror) {
      copy_planar<T, true>(src, table, c0, c2, dst);
    } else {
      copy_planar<T, false>(src, table, c0, c2, dst);
    }
  } else {
    if (mirror) {
      copy_interleaved<T, true>(src, table, c0, c2, dst);
    } else {
      copy_interleaved<T, false>(src, table, c0, c2, dst);
    }
  }
}

// One row of an MXNet-mode int8 image into the three planes of an NCHW destination: pixel -
// mean, saturated to int8, which is what the table holds, computed so that the compiler
// vectorizes it (the lookups cannot be): about 21 us instead of 50-60 us per 224x224 image.
// The means and planes are indexed by source (RGB) channel.
template <bool kMirror>
[[gnu::always_inline]] inline void subtract_row_body(const std::uint8_t* __restrict s, int w,
                                                     int m0, int m1, int m2,
                                                     std::int8_t* __restrict p0,
                                                     std::int8_t* __restrict p1,
                                                     std::int8_t* __restrict p2) {
  for (int x = 0; x < w; ++x, s += 3) {
    const int o = kMirror ? w - 1 - x : x;
    p0[o] = static_cast<std::int8_t>(std::clamp(s[0] - m0, -128, 127));
    p1[o] = static_cast<std::int8_t>(std::clamp(s[1] - m1, -128, 127));
    p2[o] = static_cast<std::int8_t>(std::clamp(s[2] - m2, -128, 127));
  }
}

// The same loop compiled for AVX2 and for the baseline, picked per call from a flag read once.
// (Not GCC's target_clones: its ifunc resolver runs before the sanitizers' runtimes start, and
// crashes ThreadSanitizer builds.)
template <bool kMirror>
[[gnu::target("avx2")]] void subtract_row_avx2(const std::uint8_t* s, int w,
                                               const std::array<int, 3>& m, std::int8_t* p0,
                                               std::int8_t* p1, std::int8_t* p2) {
  subtract_row_body<kMirror>(s, w, m[0], m[1], m[2], p0, p1, p2);
}

template <bool kMirror>
void subtract_row_baseline(const std::uint8_t* s, int w, const std::array<int, 3>& m,
                           std::int8_t* p0, std::int8_t* p1, std::int8_t* p2) {
  subtract_row_body<kMirror>(s, w, m[0], m[1], m[2], p0, p1, p2);
}

void subtract_row(const std::uint8_t* s, int w, bool mirror, const std::array<int, 3>& mean,
                  std::int8_t* p0, std::int8_t* p1, std::int8_t* p2) {
  static const bool avx2 = __builtin_cpu_supports("avx2") != 0;
  if (avx2) {
    (mirror ? subtract_row_avx2<true> : subtract_row_avx2<false>)(s, w, mean, p0, p1, p2);
  } else {
    (mirror ? subtract_row_baseline<true> : subtract_row_baseline<false>)(s, w, mean, p0, p1, p2);
  }
}

// MXNet's subtraction for a mean that is already an integer. A mean beyond [-512, 512] saturates
// every pixel the same way as any larger one, so clamping it first keeps the arithmetic small
// (fmin/fmax also map a NaN to a defined value, where a cast to int would not be).
int clamped_mean(double mean) {
  return static_cast<int>(std::fmin(std::fmax(mean, -512.0), 512.0));
}

int subtract_clamp(int pixel, double mean) {
  return std::clamp(pixel - clamped_mean(mean), -128, 127);
}

}  // namespace

std::int64_t round_half_away_from_zero(double x) {
  if (std::isnan(x)) throw std::invalid_argument("round_half_away_from_zero: NaN");
  const double r = std::round(x);  // C's round(): halfway cases away from zero
  // 2^63 is exactly representable; anything at or beyond it does not fit.
  constexpr double kLimit = 9223372036854775808.0;
  if (r >= kLimit) return std::numeric_limits<std::int64_t>::max();
  if (r < -kLimit) return std::numeric_limits<std::int64_t>::min();
  return static_cast<std::int64_t>(r);
}

Table::Table(const Params& params) : dtype_(params.dtype), bgr_(params.bgr) {
  const std::array<double, 3> mean = per_channel(params.mean, 0.0, "mean");
  const std::array<double, 3> stdev = per_channel(params.std, 1.0, "std");
  for (const double s : stdev) {
    if (!(s > 0)) throw std::invalid_argument("'std' must be positive");
  }
  if (!std::isfinite(params.scale) || !(params.scale > 0)) {
    throw std::invalid_argument("'scale' must be positive and finite");
  }
  if (!std::isfinite(params.zero_point)) {
    throw std::invalid_argument("'zero_point' must be finite");
  }
  const bool integer_type = dtype_ != DType::kFloat32;
  if (integer_type) {
    const double lo = dtype_ == DType::kInt8 ? -128.0 : 0.0;
    const double hi = dtype_ == DType::kInt8 ? 127.0 : 255.0;
    if (params.zero_point != std::trunc(params.zero_point) || params.zero_point < lo ||
        params.zero_point > hi) {
      throw std::invalid_argument("'zero_point' must be an integer in the range of " +
                                  std::string(dtype_ == DType::kInt8 ? "int8" : "uint8"));
    }
  }
  quant_.mxnet_mode = dtype_ == DType::kInt8 && params.std.empty() && params.scale == 1.0 &&
                      params.zero_point == 0.0;
  quant_.zero_point = static_cast<float>(params.zero_point);

  for (int k = 0; k < 3; ++k) {
    // Output channel k reads source (RGB) channel c.
    const int c = bgr_ ? 2 - k : k;
    const auto uk = static_cast<std::size_t>(k);
    const auto uc = static_cast<std::size_t>(c);
    if (quant_.mxnet_mode) {
      quant_.unit[uk] = 1.0f;
      const auto m = static_cast<double>(round_half_away_from_zero(mean[uc]));
      mxnet_mean_[uk] = clamped_mean(m);
      for (int p = 0; p < 256; ++p) {
        bytes_[uk][static_cast<std::size_t>(p)] =
            static_cast<std::uint8_t>(static_cast<std::int8_t>(subtract_clamp(p, m)));
      }
      continue;
    }
    quant_.unit[uk] = static_cast<float>(stdev[uc] / params.scale);
    for (int p = 0; p < 256; ++p) {
      const double v = (p - mean[uc]) / stdev[uc] * params.scale + params.zero_point;
      const auto up = static_cast<std::size_t>(p);
      switch (dtype_) {
        case DType::kInt8:
          bytes_[uk][up] = static_cast<std::uint8_t>(
              static_cast<std::int8_t>(std::clamp(round_half_to_even(v), -128.0, 127.0)));
          break;
        case DType::kUInt8:
          bytes_[uk][up] = static_cast<std::uint8_t>(std::clamp(round_half_to_even(v), 0.0, 255.0));
          break;
        case DType::kFloat32:
          floats_[uk][up] = static_cast<float>(v);
          break;
      }
    }
  }
}

void Table::apply(const ImageView& src, bool mirror, Layout layout, void* dst) const {
  check_image(src, dst);
  if (src.width == 0 || src.height == 0) return;
  if (quant_.mxnet_mode && layout == Layout::kNCHW) {
    const int w = src.width;
    const std::size_t plane = static_cast<std::size_t>(w) * static_cast<std::size_t>(src.height);
    // Source channel j lands in output channel k = j, or 2 - j for BGR.
    const auto k_of = [&](std::size_t j) { return bgr_ ? 2 - j : j; };
    const std::array<int, 3> mean{mxnet_mean_[k_of(0)], mxnet_mean_[1], mxnet_mean_[k_of(2)]};
    auto* out = static_cast<std::int8_t*>(dst);
    for (int y = 0; y < src.height; ++y) {
      std::int8_t* row = out + static_cast<std::size_t>(y) * static_cast<std::size_t>(w);
      subtract_row(src.row(y), w, mirror, mean, row + k_of(0) * plane, row + plane,
                   row + k_of(2) * plane);
    }
    return;
  }
  if (dtype_ == DType::kFloat32) {
    copy_with_table<float>(src, mirror, layout,
                           {floats_[0].data(), floats_[1].data(), floats_[2].data()}, bgr_,
                           static_cast<float*>(dst));
  } else {
    // int8 and uint8 share the byte path: the table already holds the int8 bit patterns.
    copy_with_table<std::uint8_t>(src, mirror, layout,
                                  {bytes_[0].data(), bytes_[1].data(), bytes_[2].data()}, bgr_,
                                  static_cast<std::uint8_t*>(dst));
  }
}

void apply_mean_image(const ImageView& src, bool mirror, Layout layout, const float* mean_chw,
                      bool bgr, std::int8_t* dst) {
  check_image(src, dst);
  if (src.width == 0 || src.height == 0) return;
  if (mean_chw == nullptr) throw std::invalid_argument("normalize: null mean image");
  const int w = src.width;
  const int h = src.height;
  const std::size_t plane = static_cast<std::size_t>(w) * static_cast<std::size_t>(h);
  // Channel stride and pixel stride of the destination for the two layouts.
  const std::size_t dst_c = layout == Layout::kNCHW ? plane : 1;
  const std::size_t dst_px = layout == Layout::kNCHW ? 1 : 3;
  const std::ptrdiff_t step = mirror ? -3 : 3;
  for (int y = 0; y < h; ++y) {
    const std::uint8_t* s = src.row(y) + (mirror ? 3 * static_cast<std::ptrdiff_t>(w - 1) : 0);
    const std::size_t row = static_cast<std::size_t>(y) * static_cast<std::size_t>(w);
    for (int x = 0; x < w; ++x, s += step) {
      const std::size_t i = row + static_cast<std::size_t>(x);
      for (int k = 0; k < 3; ++k) {
        const int c = bgr ? 2 - k : k;
        // std::round rounds halfway cases away from zero, as MXNet's mean image path does.
        const float m = std::round(mean_chw[static_cast<std::size_t>(k) * plane + i]);
        dst[static_cast<std::size_t>(k) * dst_c + i * dst_px] =
            static_cast<std::int8_t>(subtract_clamp(s[c], m));
      }
    }
  }
}

}  // namespace millrace::normalize
