#include "stages/normalize/normalize_kernel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

// GCC 12 warns about designated initializers that leave members to their default member
// initializers, which is exactly how Params is meant to be written.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace millrace::normalize {
namespace {

const std::vector<double> kImageNetMean{123.68, 116.779, 103.939};

// An image with rows `pad` bytes longer than their pixels.
struct TestImage {
  std::vector<std::uint8_t> bytes;
  ImageView view;
  std::uint8_t at(int x, int y, int c) const { return view.row(y)[x * 3 + c]; }
};

TestImage make_image(int width, int height, int pad, std::uint32_t seed) {
  TestImage img;
  const std::size_t stride = static_cast<std::size_t>(width) * 3 + static_cast<std::size_t>(pad);
  img.bytes.resize(stride * static_cast<std::size_t>(height));
  std::uint32_t state = seed * 2654435761u + 1;
  for (auto& b : img.bytes) {
    state = state * 1664525u + 1013904223u;  // Numerical Recipes LCG, enough for test pixels
    b = static_cast<std::uint8_t>(state >> 24);
  }
  img.view = ImageView{img.bytes.data(), width, height, 3, stride};
  return img;
}

// A single-row image of the given RGB pixels.
TestImage row_image(const std::vector<std::array<std::uint8_t, 3>>& pixels) {
  TestImage img;
  for (const auto& p : pixels) img.bytes.insert(img.bytes.end(), p.begin(), p.end());
  img.view = ImageView{img.bytes.data(), static_cast<int>(pixels.size()), 1, 3, img.bytes.size()};
  return img;
}

std::vector<std::int8_t> apply_int8(const Table& t, const ImageView& v, bool mirror = false,
                                    Layout layout = Layout::kNHWC) {
  std::vector<std::int8_t> out(static_cast<std::size_t>(v.width) * v.height * 3);
  t.apply(v, mirror, layout, out.data());
  return out;
}

TEST(RoundHalfAwayFromZero, MxnetMeans) {
  EXPECT_EQ(round_half_away_from_zero(123.68), 124);
  EXPECT_EQ(round_half_away_from_zero(116.779), 117);
  EXPECT_EQ(round_half_away_from_zero(103.939), 104);
  EXPECT_EQ(round_half_away_from_zero(0.5), 1);
  EXPECT_EQ(round_half_away_from_zero(-0.5), -1);
  EXPECT_EQ(round_half_away_from_zero(2.5), 3);
  EXPECT_EQ(round_half_away_from_zero(-2.5), -3);
  EXPECT_EQ(round_half_away_from_zero(123.5), 124);
  EXPECT_EQ(round_half_away_from_zero(1.4999), 1);
  EXPECT_EQ(round_half_away_from_zero(-0.4), 0);
  EXPECT_EQ(round_half_away_from_zero(1e300), std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(round_half_away_from_zero(-1e300), std::numeric_limits<std::int64_t>::min());
  EXPECT_THROW(round_half_away_from_zero(std::nan("")), std::invalid_argument);
}

TEST(MxnetMode, HandComputedImageNet) {
  // Means round to (124, 117, 104).
  const Table t(Params{.mean = kImageNetMean});
  EXPECT_TRUE(t.quant().mxnet_mode);
  EXPECT_EQ(t.element_size(), 1);
  // R channel: 0 - 124 = -124, 123 - 124 = -1, 124 - 124 = 0, 255 - 124 = 131 -> 127.
  // G channel: 0 - 117 = -117, 117 - 117 = 0, 244 - 117 = 127, 245 - 117 = 128 -> 127.
  // B channel: 0 - 104 = -104, 103 - 104 = -1, 231 - 104 = 127, 232 - 104 = 128 -> 127.
  const TestImage img = row_image({{0, 0, 0}, {123, 117, 103}, {124, 244, 231}, {255, 245, 232}});
  const std::vector<std::int8_t> expected{-124, -117, -104, -1, 0, -1, 0, 127, 127, 127, 127, 127};
  EXPECT_EQ(apply_int8(t, img.view), expected);
}

TEST(MxnetMode, SaturationBothEnds) {
  const Table t(Params{.mean = kImageNetMean});
  // R >= 252 clips to 127 (252 - 124 = 128), R = 251 is exactly 127.
  const TestImage hi = row_image({{251, 0, 0}, {252, 0, 0}});
  const auto out_hi = apply_int8(t, hi.view);
  EXPECT_EQ(out_hi[0], 127);
  EXPECT_EQ(out_hi[3], 127);

  // With a mean of 200, 0 - 200, 71 - 200 = -129 clip to -128; 72 - 200 = -128; 73 -> -127.
  const Table big(Params{.mean = {200.0}});
  const TestImage lo = row_image({{0, 71, 72}, {73, 255, 200}});
  const std::vector<std::int8_t> expected{-128, -128, -128, -127, 55, 0};
  EXPECT_EQ(apply_int8(big, lo.view), expected);

  // A mean far beyond the pixel range saturates everything without overflow.
  const Table huge(Params{.mean = {1e12, -1e12, 0.0}});
  const TestImage any = row_image({{255, 0, 7}});
  const std::vector<std::int8_t> expected_huge{-128, 127, 7};
  EXPECT_EQ(apply_int8(huge, any.view), expected_huge);
}

TEST(MxnetMode, MeanRoundsHalfAwayFromZero) {
  // Means 0.5 -> 1, 2.5 -> 3, 123.5 -> 124.
  const Table t(Params{.mean = {0.5, 2.5, 123.5}});
  const TestImage img = row_image({{1, 3, 124}, {0, 0, 0}});
  const std::vector<std::int8_t> expected{0, 0, 0, -1, -3, -124};
  EXPECT_EQ(apply_int8(t, img.view), expected);
}

TEST(MxnetMode, QuantInfoIsOnePixelUnit) {
  const Table t(Params{.mean = kImageNetMean});
  EXPECT_EQ(t.quant().unit, (std::array<float, 3>{1.0f, 1.0f, 1.0f}));
  EXPECT_EQ(t.quant().zero_point, 0.0f);
  EXPECT_EQ(t.dtype(), DType::kInt8);
  // Any of std, scale or zero point leaves MXNet mode.
  EXPECT_FALSE(Table(Params{.mean = kImageNetMean, .std = {1.0}}).quant().mxnet_mode);
  EXPECT_FALSE(Table(Params{.mean = kImageNetMean, .scale = 2.0}).quant().mxnet_mode);
  EXPECT_FALSE(Table(Params{.mean = kImageNetMean, .zero_point = -1.0}).quant().mxnet_mode);
  EXPECT_FALSE(Table(Params{.dtype = DType::kUInt8}).quant().mxnet_mode);
}

TEST(GeneralMode, RoundsHalfToEven) {
  // mean 128, std 2: (1 - 128) / 2 = -63.5 -> -64, (3 - 128) / 2 = -62.5 -> -62,
  // (255 - 128) / 2 = 63.5 -> 64, (130 - 128) / 2 = 1 exactly.
  const Table t(Params{.mean = {128.0}, .std = {2.0}});
  EXPECT_FALSE(t.quant().mxnet_mode);
  const TestImage img = row_image({{1, 3, 255}, {130, 128, 129}});
  // (129 - 128) / 2 = 0.5 -> 0.
  const std::vector<std::int8_t> expected{-64, -62, 64, 1, 0, 0};
  EXPECT_EQ(apply_int8(t, img.view), expected);
}

TEST(GeneralMode, DiffersFromMxnetModeOnHalfMeans) {
  // Mean 2.5: MXNet subtracts 3 from every pixel; general mode rounds p - 2.5 to even:
  // 0 -> -2.5 -> -2, 1 -> -1.5 -> -2, 3 -> 0.5 -> 0, 4 -> 1.5 -> 2.
  const Table mxnet(Params{.mean = {2.5}});
  const Table general(Params{.mean = {2.5}, .std = {1.0}});
  const TestImage img = row_image({{0, 1, 3}, {4, 4, 4}});
  EXPECT_EQ(apply_int8(mxnet, img.view), (std::vector<std::int8_t>{-3, -2, 0, 1, 1, 1}));
  EXPECT_EQ(apply_int8(general, img.view), (std::vector<std::int8_t>{-2, -2, 0, 2, 2, 2}));
}

TEST(GeneralMode, ScaleZeroPointAndSaturation) {
  // (p - 100) / 50 * 64 - 10: p = 0 -> -138 -> -128; p = 255 -> 188.4 -> 127;
  // p = 100 -> -10; p = 125 -> 22; p = 75 -> -42.
  const Table t(Params{.mean = {100.0}, .std = {50.0}, .scale = 64.0, .zero_point = -10.0});
  const TestImage img = row_image({{0, 255, 100}, {125, 75, 101}});
  // p = 101: 1.28 - 10 = -8.72 -> -9.
  const std::vector<std::int8_t> expected{-128, 127, -10, 22, -42, -9};
  EXPECT_EQ(apply_int8(t, img.view), expected);
  EXPECT_FLOAT_EQ(t.quant().unit[0], 50.0f / 64.0f);
  EXPECT_EQ(t.quant().zero_point, -10.0f);
}

// The section 2 formula computed per element in double with the C library's rounding (ties to
// even in the default mode), independently of the kernel's table.
double reference_value(const Params& p, int pixel, int rgb_channel) {
  auto pick = [](const std::vector<double>& v, int c, double fallback) {
    if (v.empty()) return fallback;
    return v.size() == 1 ? v[0] : v[static_cast<std::size_t>(c)];
  };
  const double mean = pick(p.mean, rgb_channel, 0.0);
  const double stdev = pick(p.std, rgb_channel, 1.0);
  const double v = (pixel - mean) / stdev * p.scale + p.zero_point;
  switch (p.dtype) {
    case DType::kInt8:
      return std::clamp(std::nearbyint(v), -128.0, 127.0);
    case DType::kUInt8:
      return std::clamp(std::nearbyint(v), 0.0, 255.0);
    case DType::kFloat32:
      return static_cast<float>(v);
  }
  return 0;
}

// Element (c, y, x) of the output in `layout`, as a double.
double read(const std::vector<std::uint8_t>& out, DType dtype, std::size_t index) {
  switch (dtype) {
    case DType::kInt8:
      return static_cast<std::int8_t>(out[index]);
    case DType::kUInt8:
      return out[index];
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, out.data() + index * 4, 4);
      return f;
    }
  }
  return 0;
}

// Straightforward loops over output coordinates: where each output element comes from is
// spelled out here, not taken from the kernel.
void check_against_reference(const Params& params, const TestImage& img) {
  const Table t(params);
  const int w = img.view.width;
  const int h = img.view.height;
  for (const bool mirror : {false, true}) {
    for (const Layout layout : {Layout::kNCHW, Layout::kNHWC}) {
      SCOPED_TRACE(::testing::Message()
                   << "mirror " << mirror << " layout "
                   << (layout == Layout::kNCHW ? "NCHW" : "NHWC") << " bgr " << params.bgr
                   << " dtype " << static_cast<int>(params.dtype));
      const std::size_t n = static_cast<std::size_t>(w) * h * 3;
      std::vector<std::uint8_t> out(n * static_cast<std::size_t>(t.element_size()), 0xAB);
      // float output must be float-aligned; vector storage from operator new is.
      t.apply(img.view, mirror, layout, out.data());
      for (int c = 0; c < 3; ++c) {
        for (int y = 0; y < h; ++y) {
          for (int x = 0; x < w; ++x) {
            const int sx = mirror ? w - 1 - x : x;
            const int rgb = params.bgr ? 2 - c : c;
            const double expected = reference_value(params, img.at(sx, y, rgb), rgb);
            const std::size_t index =
                layout == Layout::kNCHW
                    ? (static_cast<std::size_t>(c) * h + y) * w + x
                    : (static_cast<std::size_t>(y) * w + x) * 3 + static_cast<std::size_t>(c);
            ASSERT_EQ(read(out, params.dtype, index), expected)
                << "c " << c << " y " << y << " x " << x;
          }
        }
      }
    }
  }
}

TEST(GeneralMode, FormulaAgainstDoubleReference) {
  const TestImage img = make_image(7, 5, 3, 1);
  const std::vector<Params> cases = {
      {.dtype = DType::kInt8,
       .mean = {123.675, 116.28, 103.53},
       .std = {58.395, 57.12, 57.375},
       .scale = 127.0 / 2.64},
      {.dtype = DType::kInt8, .mean = {127.5}, .std = {1.0}, .scale = 1.0},
      {.dtype = DType::kInt8,
       .mean = {10.0, 20.0, 30.0},
       .std = {0.5, 1.5, 3.0},
       .scale = 1.0,
       .zero_point = 5.0,
       .bgr = true},
      {.dtype = DType::kUInt8, .mean = {128.0}, .std = {2.0}, .zero_point = 128.0},
      {.dtype = DType::kUInt8, .std = {1.0, 2.0, 4.0}, .scale = 3.0, .bgr = true},
      {.dtype = DType::kUInt8},
      {.dtype = DType::kFloat32, .mean = {123.675, 116.28, 103.53}, .std = {58.395, 57.12, 57.375}},
      {.dtype = DType::kFloat32, .mean = {0.5}, .scale = 1.0 / 255.0, .bgr = true},
  };
  for (const Params& p : cases) check_against_reference(p, img);
}

// MXNet mode into NCHW is computed, not looked up, a row at a time in vector-sized steps: widths
// below, at and past the vector lengths (and a padded stride), both channel orders, means that
// saturate either way. Integer means, so that MXNet's mean rounding and the reference's agree.
TEST(MirrorAndLayout, MxnetModeEveryWidthAgainstReference) {
  const std::vector<Params> cases = {
      {.mean = {124.0, 117.0, 104.0}},
      {.mean = {124.0, 117.0, 104.0}, .bgr = true},
      {.mean = {-300.0, 0.0, 400.0}},
      {.mean = {600.0, -700.0, 255.0}, .bgr = true},
  };
  for (const int width : {1, 15, 16, 31, 33, 64, 224, 257}) {
    const TestImage img = make_image(width, 3, 5, static_cast<std::uint32_t>(width));
    for (const Params& p : cases) {
      ASSERT_TRUE(Table(p).quant().mxnet_mode);
      SCOPED_TRACE(::testing::Message() << "width " << width);
      check_against_reference(p, img);
    }
  }
}

TEST(MirrorAndLayout, MxnetModeOnNonSymmetricImage) {
  // Every pixel distinct, odd width (a middle column that must stay put), padded stride.
  TestImage img = make_image(5, 3, 2, 0);
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 5; ++x) {
      for (int c = 0; c < 3; ++c) {
        img.bytes[static_cast<std::size_t>(y) * img.view.stride +
                  static_cast<std::size_t>(x * 3 + c)] =
            static_cast<std::uint8_t>(100 + 30 * c + 5 * y + x);
      }
    }
  }
  const Params params{.mean = {100.0, 130.0, 160.0}};
  const Table t(params);
  // With these means every output is 5 * y + x of the SOURCE pixel: the position is readable.
  std::vector<std::int8_t> planar(45);
  t.apply(img.view, true, Layout::kNCHW, planar.data());
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 3; ++y) {
      for (int x = 0; x < 5; ++x) {
        ASSERT_EQ(planar[static_cast<std::size_t>((c * 3 + y) * 5 + x)], 5 * y + (4 - x));
      }
    }
  }
  std::vector<std::int8_t> interleaved(45);
  t.apply(img.view, false, Layout::kNHWC, interleaved.data());
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 5; ++x) {
      for (int c = 0; c < 3; ++c) {
        ASSERT_EQ(interleaved[static_cast<std::size_t>((y * 5 + x) * 3 + c)], 5 * y + x);
      }
    }
  }
  check_against_reference(params, img);
  check_against_reference(Params{.mean = kImageNetMean, .bgr = true}, make_image(9, 4, 0, 7));
}

TEST(ChannelOrder, BgrTakesMeansInRgbOrder) {
  // Pixel R=10, G=20, B=30 with means (R 1, G 2, B 3): BGR output is (30-3, 20-2, 10-1).
  const Table t(Params{.mean = {1.0, 2.0, 3.0}, .bgr = true});
  const TestImage img = row_image({{10, 20, 30}});
  EXPECT_EQ(apply_int8(t, img.view), (std::vector<std::int8_t>{27, 18, 9}));
  std::vector<std::int8_t> planar(3);
  t.apply(img.view, false, Layout::kNCHW, planar.data());
  EXPECT_EQ(planar, (std::vector<std::int8_t>{27, 18, 9}));
  // QuantInfo follows the output order: unit of channel 0 is the blue one.
  const Table g(Params{.mean = {1.0, 2.0, 3.0}, .std = {1.0, 2.0, 4.0}, .scale = 2.0, .bgr = true});
  EXPECT_EQ(g.quant().unit, (std::array<float, 3>{2.0f, 1.0f, 0.5f}));
}

TEST(UInt8, RawPixelsAndZeroPoint) {
  const Table raw(Params{.dtype = DType::kUInt8});
  const TestImage img = row_image({{0, 128, 255}, {1, 2, 3}});
  std::vector<std::uint8_t> out(6);
  raw.apply(img.view, false, Layout::kNHWC, out.data());
  EXPECT_EQ(out, (std::vector<std::uint8_t>{0, 128, 255, 1, 2, 3}));
  // mean 128, std 2, zero point 128: (0 - 128) / 2 + 128 = 64, 64.5 -> 64 for p = 1,
  // (255 - 128) / 2 + 128 = 191.5 -> 192.
  const Table zp(Params{.dtype = DType::kUInt8, .mean = {128.0}, .std = {2.0}, .zero_point = 128});
  const TestImage img2 = row_image({{0, 1, 255}});
  std::vector<std::uint8_t> out2(3);
  zp.apply(img2.view, false, Layout::kNHWC, out2.data());
  EXPECT_EQ(out2, (std::vector<std::uint8_t>{64, 64, 192}));
  // Saturation at both ends of uint8.
  const Table wide(Params{.dtype = DType::kUInt8, .mean = {100.0}, .scale = 4.0, .zero_point = 10});
  wide.apply(img2.view, false, Layout::kNHWC, out2.data());
  EXPECT_EQ(out2, (std::vector<std::uint8_t>{0, 0, 255}));
  // A mean with zero point 0 computes as written (the stage decides whether to allow it):
  // everything below the mean saturates to 0. 0 - 100 -> 0, 1 - 100 -> 0, 255 - 100 = 155.
  const Table below(Params{.dtype = DType::kUInt8, .mean = {100.0}, .std = {1.0}});
  below.apply(img2.view, false, Layout::kNHWC, out2.data());
  EXPECT_EQ(out2, (std::vector<std::uint8_t>{0, 0, 155}));
}

TEST(Float32, ExactFormulaNoRounding) {
  const Table t(Params{
      .dtype = DType::kFloat32, .mean = {123.675, 116.28, 103.53}, .std = {58.395, 57.12, 57.375}});
  EXPECT_EQ(t.element_size(), 4);
  EXPECT_FALSE(t.quant().mxnet_mode);
  const TestImage img = row_image({{0, 255, 124}});
  std::vector<float> out(3);
  t.apply(img.view, false, Layout::kNCHW, out.data());
  EXPECT_FLOAT_EQ(out[0], static_cast<float>(-123.675 / 58.395));
  EXPECT_FLOAT_EQ(out[1], static_cast<float>((255 - 116.28) / 57.12));
  EXPECT_FLOAT_EQ(out[2], static_cast<float>((124 - 103.53) / 57.375));
  // Far outside any integer range: no saturation.
  const Table big(Params{.dtype = DType::kFloat32, .scale = 1000.0});
  big.apply(img.view, false, Layout::kNHWC, out.data());
  EXPECT_EQ(out, (std::vector<float>{0.0f, 255000.0f, 124000.0f}));
}

TEST(Table, RejectsImpossibleParams) {
  EXPECT_THROW(Table(Params{.std = {0.0}}), std::invalid_argument);
  EXPECT_THROW(Table(Params{.std = {1.0, -1.0, 1.0}}), std::invalid_argument);
  EXPECT_THROW(Table(Params{.mean = {1.0, 2.0}}), std::invalid_argument);
  EXPECT_THROW(Table(Params{.std = {1.0, 2.0, 3.0, 4.0}}), std::invalid_argument);
  EXPECT_THROW(Table(Params{.mean = {std::nan("")}}), std::invalid_argument);
  EXPECT_THROW(Table(Params{.scale = 0.0}), std::invalid_argument);
  EXPECT_THROW(Table(Params{.scale = std::numeric_limits<double>::infinity()}),
               std::invalid_argument);
  EXPECT_THROW(Table(Params{.zero_point = 0.5}), std::invalid_argument);
  EXPECT_THROW(Table(Params{.zero_point = 128.0}), std::invalid_argument);
  EXPECT_THROW(Table(Params{.dtype = DType::kUInt8, .zero_point = -1.0}), std::invalid_argument);
  // Messages name the offending parameter.
  try {
    Table(Params{.mean = {1.0, 2.0}});
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'mean'"), std::string::npos) << e.what();
  }
  // Fine: a fractional zero point for float output, and a zero mean for uint8.
  EXPECT_NO_THROW(Table(Params{.dtype = DType::kFloat32, .zero_point = 0.25}));
  EXPECT_NO_THROW(Table(Params{.dtype = DType::kUInt8, .mean = {0.0}}));
}

TEST(Table, RejectsBadImages) {
  const Table t(Params{.mean = kImageNetMean});
  TestImage img = make_image(4, 4, 0, 3);
  std::vector<std::int8_t> out(48);
  ImageView gray = img.view;
  gray.channels = 1;
  EXPECT_THROW(t.apply(gray, false, Layout::kNCHW, out.data()), std::invalid_argument);
  ImageView short_rows = img.view;
  short_rows.stride = 11;
  EXPECT_THROW(t.apply(short_rows, false, Layout::kNCHW, out.data()), std::invalid_argument);
  EXPECT_THROW(t.apply(img.view, false, Layout::kNCHW, nullptr), std::invalid_argument);
  // An empty image writes nothing.
  ImageView empty{nullptr, 0, 0, 3, 0};
  EXPECT_NO_THROW(t.apply(empty, false, Layout::kNCHW, nullptr));
}

TEST(MeanImage, PerPixelRoundingMirrorLayoutAndOrder) {
  // 3x2 image; the mean image is indexed by output (c, y, x).
  TestImage img = make_image(3, 2, 1, 5);
  const int w = 3;
  const int h = 2;
  std::vector<float> mean(18);
  for (std::size_t i = 0; i < mean.size(); ++i) mean[i] = 40.0f + 10.5f * static_cast<float>(i);
  mean[0] = 0.5f;     // -> 1
  mean[1] = -2.5f;    // -> -3
  mean[2] = 123.5f;   // -> 124
  mean[3] = 300.0f;   // saturates to -128
  mean[4] = -200.0f;  // saturates to 127
  auto rounded = [&](int c, int y, int x) {
    // Half away from zero, written independently of the kernel.
    const double m = mean[(static_cast<std::size_t>(c) * h + y) * w + x];
    return m < 0 ? -std::floor(-m + 0.5) : std::floor(m + 0.5);
  };
  for (const bool mirror : {false, true}) {
    for (const bool bgr : {false, true}) {
      for (const Layout layout : {Layout::kNCHW, Layout::kNHWC}) {
        std::vector<std::int8_t> out(18);
        apply_mean_image(img.view, mirror, layout, mean.data(), bgr, out.data());
        for (int c = 0; c < 3; ++c) {
          for (int y = 0; y < h; ++y) {
            for (int x = 0; x < w; ++x) {
              const int p = img.at(mirror ? w - 1 - x : x, y, bgr ? 2 - c : c);
              const double expected = std::clamp(p - rounded(c, y, x), -128.0, 127.0);
              const std::size_t index = layout == Layout::kNCHW
                                            ? static_cast<std::size_t>((c * h + y) * w + x)
                                            : static_cast<std::size_t>((y * w + x) * 3 + c);
              ASSERT_EQ(out[index], expected)
                  << mirror << bgr << " c" << c << " y" << y << " x" << x;
            }
          }
        }
      }
    }
  }
  // Hand-checked corners: output (c 0, y 0, x 0) without mirror is pixel R(0,0) - 1, and the
  // saturating elements give -128 and 127 whatever the pixel.
  std::vector<std::int8_t> out(18);
  apply_mean_image(img.view, false, Layout::kNCHW, mean.data(), false, out.data());
  EXPECT_EQ(out[0], std::clamp(img.at(0, 0, 0) - 1, -128, 127));
  EXPECT_EQ(out[3], -128);
  EXPECT_EQ(out[4], 127);
}

TEST(MeanImage, ConstantMeanImageMatchesMxnetTable) {
  // A mean image that is the ImageNet mean everywhere gives the scalar MXNet result.
  const TestImage img = make_image(16, 9, 4, 11);
  const std::size_t plane = std::size_t{16} * 9;
  std::vector<float> mean(plane * 3);
  for (std::size_t c = 0; c < 3; ++c) {
    std::fill_n(mean.begin() + static_cast<std::ptrdiff_t>(c * plane), plane,
                static_cast<float>(kImageNetMean[c]));
  }
  const Table t(Params{.mean = kImageNetMean});
  for (const bool mirror : {false, true}) {
    std::vector<std::int8_t> a(plane * 3);
    std::vector<std::int8_t> b(plane * 3);
    apply_mean_image(img.view, mirror, Layout::kNCHW, mean.data(), false, a.data());
    t.apply(img.view, mirror, Layout::kNCHW, b.data());
    EXPECT_EQ(a, b);
  }
}

}  // namespace
}  // namespace millrace::normalize
