#include "stages/augment/augment_kernel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace millrace::augment {
namespace {

constexpr std::array<double, 2> kImageNetScale{0.08, 1.0};
constexpr std::array<double, 2> kImageNetRatio{3.0 / 4.0, 4.0 / 3.0};

TEST(ResizeShorterSize, MxnetExamples) {
  // 256 * 500 / 375 = 341.33 -> 341.
  EXPECT_EQ(resize_shorter_size(500, 375, 256), std::make_pair(341, 256));
  EXPECT_EQ(resize_shorter_size(375, 500, 256), std::make_pair(256, 341));
  EXPECT_EQ(resize_shorter_size(300, 300, 224), std::make_pair(224, 224));
  // Upscaling and truncation: 10 * 999 / 100 = 99.9 -> 99.
  EXPECT_EQ(resize_shorter_size(100, 999, 10), std::make_pair(10, 99));
  // The product 30000 * 100000 overflows 32 bits.
  EXPECT_EQ(resize_shorter_size(100000, 50000, 30000), std::make_pair(60000, 30000));
}

TEST(ResizeShorterSize, RejectsNonPositive) {
  EXPECT_THROW(resize_shorter_size(0, 10, 5), std::invalid_argument);
  EXPECT_THROW(resize_shorter_size(10, -1, 5), std::invalid_argument);
  EXPECT_THROW(resize_shorter_size(10, 10, 0), std::invalid_argument);
}

TEST(MxnetFitSteps, ScalesUpWhatTheCropDoesNotFit) {
  // Fits: nothing to do.
  EXPECT_EQ(mxnet_fit_steps(300, 300, 224, 224).count, 0);
  EXPECT_EQ(mxnet_fit_steps(224, 224, 224, 224).count, 0);
  // Lower than the crop: to its height, the width (int)(224.f / 112 * 112) = 224.
  FitSteps s = mxnet_fit_steps(112, 112, 160, 224);
  ASSERT_EQ(s.count, 1);
  EXPECT_EQ(s.size[0], std::make_pair(224, 224));
  // 100x50: (int)(224.f / 50 * 100) = (int)448.00000 = 448.
  s = mxnet_fit_steps(100, 50, 224, 224);
  ASSERT_EQ(s.count, 1);
  EXPECT_EQ(s.size[0], std::make_pair(448, 224));
  // Narrower only: to its width, the height (int)(224.f / 50 * 300) = 1344.
  s = mxnet_fit_steps(50, 300, 224, 224);
  ASSERT_EQ(s.count, 1);
  EXPECT_EQ(s.size[0], std::make_pair(224, 1344));
  // Both, height first: 30x40 -> (int)(5.6f * 30) = 168 wide (5.6f is 5.5999999, the product
  // rounds to 168.0f), still narrower, so -> 224 x (int)(224.f / 168 * 224) = 298.
  s = mxnet_fit_steps(30, 40, 224, 224);
  ASSERT_EQ(s.count, 2);
  EXPECT_EQ(s.size[0], std::make_pair(168, 224));
  EXPECT_EQ(s.size[1], std::make_pair(224, 298));
}

TEST(MxnetFitSteps, RefusesHugeAndInvalid) {
  // 1x1000 to a width of 224 would be 224 x 224000: more than 64 crops' worth of pixels.
  EXPECT_THROW(mxnet_fit_steps(1, 1000, 224, 224), CropError);
  // 1000x1 to a height of 224: 224000 x 224.
  EXPECT_THROW(mxnet_fit_steps(1000, 1, 224, 224), CropError);
  EXPECT_THROW(mxnet_fit_steps(0, 10, 5, 5), std::invalid_argument);
  EXPECT_THROW(mxnet_fit_steps(10, 10, 0, 5), std::invalid_argument);
}

TEST(CenterWindow, OffsetsByHand) {
  // (341 - 224) / 2 = 58 (117 / 2 truncated), (256 - 224) / 2 = 16.
  EXPECT_EQ(center_window(341, 256, 224, 224), (Rect{58, 16, 224, 224}));
  EXPECT_EQ(center_window(256, 341, 224, 224), (Rect{16, 58, 224, 224}));
  EXPECT_EQ(center_window(5, 4, 2, 1), (Rect{1, 1, 2, 1}));  // 3 / 2 = 1, 3 / 2 = 1
  EXPECT_EQ(center_window(224, 224, 224, 224), (Rect{0, 0, 224, 224}));
  EXPECT_EQ(center_window(10, 7, 3, 6), (Rect{3, 0, 3, 6}));
}

TEST(CenterWindow, CropThatDoesNotFit) {
  EXPECT_THROW(center_window(223, 300, 224, 224), CropError);
  EXPECT_THROW(center_window(300, 223, 224, 224), CropError);
  EXPECT_THROW(center_window(300, 300, 0, 224), std::invalid_argument);
  // A CropError is a runtime_error (a data problem), not an invalid_argument.
  try {
    center_window(10, 10, 11, 5);
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("11x5"), std::string::npos) << e.what();
  }
}

TEST(RandomWindow, AlwaysInsideAndReachesEveryPosition) {
  std::set<std::pair<int, int>> seen;
  for (std::uint64_t id = 0; id < 400; ++id) {
    CounterRng rng(1, stable_hash("crop"), 0, id);
    const Rect r = random_window(5, 4, 3, 3, rng);
    ASSERT_GE(r.x, 0);
    ASSERT_GE(r.y, 0);
    ASSERT_EQ(r.width, 3);
    ASSERT_EQ(r.height, 3);
    ASSERT_LE(r.x + r.width, 5);
    ASSERT_LE(r.y + r.height, 4);
    seen.insert({r.x, r.y});
  }
  EXPECT_EQ(seen.size(), 6u);  // x in {0, 1, 2}, y in {0, 1}
}

TEST(RandomWindow, DeterministicAndDrawsYThenX) {
  CounterRng a(9, 8, 7, 6);
  CounterRng b(9, 8, 7, 6);
  CounterRng draws(9, 8, 7, 6);
  for (int i = 0; i < 50; ++i) {
    const Rect ra = random_window(500, 375, 224, 224, a);
    const Rect rb = random_window(500, 375, 224, 224, b);
    ASSERT_EQ(ra, rb);
    const int y = draws.uniform_int(0, 375 - 224);
    const int x = draws.uniform_int(0, 500 - 224);
    ASSERT_EQ(ra, (Rect{x, y, 224, 224}));
  }
  CounterRng c(1, 1, 1, 1);
  EXPECT_THROW(random_window(100, 100, 101, 10, c), CropError);
  const Rect whole = random_window(100, 50, 100, 50, c);
  EXPECT_EQ(whole, (Rect{0, 0, 100, 50}));
}

// Python's round() written with the library's nearbyint (ties to even in the default mode), as
// an independent implementation of the kernel's rounding.
double py_round(double x) { return std::nearbyint(x); }

TEST(RandomResizedWindow, FirstAttemptFollowsTorchvisionFormula) {
  // Replays the documented draw order (area fraction, log aspect, then y, then x) on a copy of the
  // generator: whenever the first attempt fits, the kernel must return exactly that window.
  int checked = 0;
  for (std::uint64_t id = 0; id < 500; ++id) {
    CounterRng rng(3, stable_hash("rrc"), 1, id);
    CounterRng replay = rng;
    const Rect r = random_resized_window(500, 375, kImageNetScale, kImageNetRatio, rng);
    const double target = 500.0 * 375.0 * replay.uniform(0.08, 1.0);
    const double aspect = std::exp(replay.uniform(std::log(3.0 / 4.0), std::log(4.0 / 3.0)));
    const int w = static_cast<int>(py_round(std::sqrt(target * aspect)));
    const int h = static_cast<int>(py_round(std::sqrt(target / aspect)));
    if (0 < w && w <= 500 && 0 < h && h <= 375) {
      const int y = replay.uniform_int(0, 375 - h);
      const int x = replay.uniform_int(0, 500 - w);
      ASSERT_EQ(r, (Rect{x, y, w, h})) << "sample " << id;
      ++checked;
    }
  }
  EXPECT_GT(checked, 300);  // most first attempts fit with the ImageNet parameters
}

TEST(RandomResizedWindow, Statistics) {
  const int width = 500;
  const int height = 375;
  const double area = static_cast<double>(width) * height;
  double min_frac = 1e9;
  double max_frac = 0;
  int wider = 0;
  int taller = 0;
  for (std::uint64_t id = 0; id < 3000; ++id) {
    CounterRng rng(11, stable_hash("rrc"), 0, id);
    const Rect r = random_resized_window(width, height, kImageNetScale, kImageNetRatio, rng);
    ASSERT_GE(r.x, 0);
    ASSERT_GE(r.y, 0);
    ASSERT_GT(r.width, 0);
    ASSERT_GT(r.height, 0);
    ASSERT_LE(r.x + r.width, width);
    ASSERT_LE(r.y + r.height, height);
    if (r == Rect{0, 0, width, height}) continue;  // fallback (whole image, 500/375 == 4/3)
    // Rounding each side by up to half a pixel moves the area and the aspect a little.
    const double frac = r.width * static_cast<double>(r.height) / area;
    const double slack_w = 0.5 / r.width;
    const double slack_h = 0.5 / r.height;
    ASSERT_GE(frac, 0.08 * (1 - slack_w) * (1 - slack_h));
    ASSERT_LE(frac, 1.0 * (1 + slack_w) * (1 + slack_h));
    const double aspect = static_cast<double>(r.width) / r.height;
    ASSERT_GE(aspect, 3.0 / 4.0 * (1 - slack_w) / (1 + slack_h));
    ASSERT_LE(aspect, 4.0 / 3.0 * (1 + slack_w) / (1 - slack_h));
    min_frac = std::min(min_frac, frac);
    max_frac = std::max(max_frac, frac);
    wider += aspect > 1.05 ? 1 : 0;
    taller += aspect < 0.95 ? 1 : 0;
  }
  EXPECT_LT(min_frac, 0.1);
  EXPECT_GT(max_frac, 0.85);
  EXPECT_GT(wider, 600);
  EXPECT_GT(taller, 600);
}

TEST(RandomResizedWindow, FallbackClampsToMaxRatio) {
  // 1000x10 cannot hold any window of area >= 800 with aspect <= 4/3 (its height would exceed
  // 24), so every draw takes the central-crop fallback: h = 10, w = round(10 * 4/3) = 13,
  // x = (1000 - 13) / 2 = 493.
  for (std::uint64_t id = 0; id < 20; ++id) {
    CounterRng rng(0, 0, 0, id);
    EXPECT_EQ(random_resized_window(1000, 10, kImageNetScale, kImageNetRatio, rng),
              (Rect{493, 0, 13, 10}));
  }
}

TEST(RandomResizedWindow, FallbackClampsToMinRatio) {
  // 10x1000: w = 10, h = round(10 / (3/4)) = round(13.33) = 13, y = (1000 - 13) / 2 = 493.
  CounterRng rng(0, 0, 0, 1);
  EXPECT_EQ(random_resized_window(10, 1000, kImageNetScale, kImageNetRatio, rng),
            (Rect{0, 493, 10, 13}));
}

TEST(RandomResizedWindow, FallbackRoundsHalfToEven) {
  // 100x3, ratio (1, 1.5): a fitting window needs h >= sqrt(0.08 * 300 / 1.5) = 4 > 3, so the
  // fallback runs: w = round(3 * 1.5) = round(4.5) = 4 (half to even, not 5), x = 96 / 2 = 48.
  CounterRng a(0, 0, 0, 0);
  EXPECT_EQ(random_resized_window(100, 3, kImageNetScale, {1.0, 1.5}, a), (Rect{48, 0, 4, 3}));
  // 5x100, ratio (2, 3): w >= sqrt(0.08 * 500 * 2) = 8.9 > 5; h = round(5 / 2) = round(2.5) = 2,
  // y = 98 / 2 = 49.
  CounterRng b(0, 0, 0, 0);
  EXPECT_EQ(random_resized_window(5, 100, kImageNetScale, {2.0, 3.0}, b), (Rect{0, 49, 5, 2}));
}

TEST(RandomResizedWindow, FallbackWholeImageWhenRatioInRange) {
  // Areas of at least twice the image never fit; the image's own ratio 1 is in range.
  CounterRng rng(0, 0, 0, 0);
  EXPECT_EQ(random_resized_window(100, 100, {2.0, 3.0}, {0.5, 2.0}, rng), (Rect{0, 0, 100, 100}));
}

TEST(RandomResizedWindow, RejectsBadParameters) {
  CounterRng rng(0, 0, 0, 0);
  EXPECT_THROW(random_resized_window(0, 10, kImageNetScale, kImageNetRatio, rng),
               std::invalid_argument);
  EXPECT_THROW(random_resized_window(10, 10, {0.5, 0.2}, kImageNetRatio, rng),
               std::invalid_argument);
  EXPECT_THROW(random_resized_window(10, 10, {0.0, 0.0}, kImageNetRatio, rng),
               std::invalid_argument);
  EXPECT_THROW(random_resized_window(10, 10, kImageNetScale, {0.0, 1.0}, rng),
               std::invalid_argument);
  EXPECT_THROW(random_resized_window(10, 10, kImageNetScale, {2.0, 1.0}, rng),
               std::invalid_argument);
}

// A deterministic noise image with rows `pad` bytes longer than the pixels, so that stride
// handling is exercised.
struct TestImage {
  std::vector<std::uint8_t> bytes;
  ImageView view;
};

TestImage make_image(int width, int height, int pad) {
  TestImage img;
  const std::size_t stride = static_cast<std::size_t>(width) * 3 + static_cast<std::size_t>(pad);
  img.bytes.resize(stride * static_cast<std::size_t>(height));
  CounterRng rng(99, 0, 0, static_cast<std::uint64_t>(width) * 7919 + height);
  for (auto& b : img.bytes) b = static_cast<std::uint8_t>(rng.next_u32() >> 24);
  img.view = ImageView{img.bytes.data(), width, height, 3, stride};
  return img;
}

cv::Mat reference_resize(const TestImage& img, Rect roi, int out_w, int out_h, int flag) {
  const cv::Mat full(img.view.height, img.view.width, CV_8UC3,
                     const_cast<std::uint8_t*>(img.view.data), img.view.stride);
  const cv::Mat crop = full(cv::Rect(roi.x, roi.y, roi.width, roi.height)).clone();
  cv::Mat out;
  cv::resize(crop, out, cv::Size(out_w, out_h), 0, 0, flag);
  return out;
}

void expect_same(const cv::Mat& expected, const std::vector<std::uint8_t>& got) {
  ASSERT_TRUE(expected.isContinuous());
  ASSERT_EQ(got.size(), expected.total() * expected.elemSize());
  EXPECT_EQ(std::memcmp(got.data(), expected.data, got.size()), 0);
}

TEST(ResizeWindow, BitIdenticalToCvResizeOnClonedRoi) {
  const TestImage img = make_image(500, 375, 5);
  const struct {
    Interp interp;
    int flag;
  } modes[] = {{Interp::kLinear, cv::INTER_LINEAR},
               {Interp::kArea, cv::INTER_AREA},
               {Interp::kCubic, cv::INTER_CUBIC},
               {Interp::kNearest, cv::INTER_NEAREST}};
  const Rect rois[] = {{37, 20, 300, 211}, {0, 0, 500, 375}, {450, 300, 50, 75}, {3, 5, 17, 9}};
  for (const auto& mode : modes) {
    for (const Rect& roi : rois) {
      SCOPED_TRACE(::testing::Message() << "flag " << mode.flag << " roi " << roi.x << "," << roi.y
                                        << " " << roi.width << "x" << roi.height);
      std::vector<std::uint8_t> out;
      resize_window(img.view, roi, 224, 224, mode.interp, out);
      expect_same(reference_resize(img, roi, 224, 224, mode.flag), out);
      // Non-square output, shrinking in one direction and growing in the other.
      resize_window(img.view, roi, 31, 260, mode.interp, out);
      expect_same(reference_resize(img, roi, 31, 260, mode.flag), out);
    }
  }
}

// Bilinear interpolation in double precision at the positions resample_window promises, with the
// pixels past the edges replicated: the reference its fixed-point taps are held to.
std::vector<double> reference_resample(const TestImage& img, WindowF w, int out_w, int out_h) {
  const ImageView& v = img.view;
  std::vector<double> out(static_cast<std::size_t>(out_w) * out_h * 3);
  const auto at = [&](int x, int y, int ch) {
    x = std::clamp(x, 0, v.width - 1);
    y = std::clamp(y, 0, v.height - 1);
    return static_cast<double>(v.row(y)[static_cast<std::size_t>(x) * 3 + ch]);
  };
  for (int i = 0; i < out_h; ++i) {
    const double sy = w.y + (i + 0.5) * w.height / out_h - 0.5;
    const int y0 = static_cast<int>(std::floor(sy));
    const double fy = sy - y0;
    for (int j = 0; j < out_w; ++j) {
      const double sx = w.x + (j + 0.5) * w.width / out_w - 0.5;
      const int x0 = static_cast<int>(std::floor(sx));
      const double fx = sx - x0;
      for (int ch = 0; ch < 3; ++ch) {
        const double top = at(x0, y0, ch) * (1 - fx) + at(x0 + 1, y0, ch) * fx;
        const double bottom = at(x0, y0 + 1, ch) * (1 - fx) + at(x0 + 1, y0 + 1, ch) * fx;
        out[(static_cast<std::size_t>(i) * out_w + j) * 3 + ch] = top * (1 - fy) + bottom * fy;
      }
    }
  }
  return out;
}

// The fixed-point taps stay within their documented 1.01 steps of exact bilinear interpolation
// (0.5 of it the output's own rounding), on shrinking, growing and mixed windows, fractional or
// whole, inside the image and reaching past its edges (replicated), on an image of noise (the
// largest differences between neighbours).
TEST(ResampleWindow, LinearWithinOneStepOfExactBilinear) {
  const TestImage img = make_image(500, 375, 3);
  const WindowF windows[] = {{37.25, 20.5, 300.75, 211.125}, {0, 0, 500, 375},
                             {451.9, 300.3, 48.1, 74.7},     {-3.5, -2.25, 20.0, 12.5},
                             {480.5, 360.75, 30.0, 20.0},    {100.0, 50.0, 7.3, 9.1}};
  for (const WindowF& w : windows) {
    for (const auto& [ow, oh] : {std::pair{224, 224}, std::pair{31, 260}, std::pair{1, 1}}) {
      SCOPED_TRACE(::testing::Message() << "window " << w.x << "," << w.y << " " << w.width << "x"
                                        << w.height << " -> " << ow << "x" << oh);
      std::vector<std::uint8_t> got;
      resample_window(img.view, w, ow, oh, Interp::kLinear, got);
      const std::vector<double> want = reference_resample(img, w, ow, oh);
      ASSERT_EQ(got.size(), want.size());
      double worst = 0;
      for (std::size_t k = 0; k < got.size(); ++k) {
        worst = std::max(worst, std::abs(got[k] - want[k]));
      }
      EXPECT_LE(worst, 1.01);
    }
  }
}

// The whole image through the fractional path gives what cv::resize gives, up to one step of
// either side's rounding: the two paths of the window-only decode agree. (On a window inside the
// image they differ at its edges by design: cv::resize on a ROI replicates the ROI's border,
// resample_window reads the real neighbours.)
TEST(ResampleWindow, LinearAgreesWithCvResizeOnTheWholeImage) {
  const TestImage img = make_image(500, 375, 4);
  const Rect roi{0, 0, 500, 375};
  const cv::Mat expected = reference_resize(img, roi, 224, 224, cv::INTER_LINEAR);
  std::vector<std::uint8_t> got;
  resample_window(img.view, WindowF{0, 0, 500, 375}, 224, 224, Interp::kLinear, got);
  ASSERT_EQ(got.size(), expected.total() * expected.elemSize());
  int worst = 0;
  for (std::size_t k = 0; k < got.size(); ++k) {
    worst =
        std::max(worst, std::abs(static_cast<int>(got[k]) - static_cast<int>(expected.data[k])));
  }
  EXPECT_LE(worst, 1);
}

TEST(ResizeWindow, ShorterSideThenCenterCropPipeline) {
  // The MXNet evaluation chain: 500x375 -> 341x256 -> centre 224.
  const TestImage img = make_image(500, 375, 0);
  const auto [rw, rh] = resize_shorter_size(500, 375, 256);
  std::vector<std::uint8_t> resized;
  resize_window(img.view, Rect{0, 0, 500, 375}, rw, rh, Interp::kLinear, resized);
  const ImageView mid{resized.data(), rw, rh, 3, static_cast<std::size_t>(rw) * 3};
  const Rect win = center_window(rw, rh, 224, 224);
  std::vector<std::uint8_t> out;
  resize_window(mid, win, 224, 224, Interp::kLinear, out);

  const cv::Mat full(375, 500, CV_8UC3, const_cast<std::uint8_t*>(img.view.data));
  cv::Mat ref;
  cv::resize(full, ref, cv::Size(341, 256), 0, 0, cv::INTER_LINEAR);
  expect_same(ref(cv::Rect(58, 16, 224, 224)).clone(), out);
}

TEST(ResizeWindow, SameSizeWindowIsACopy) {
  const TestImage img = make_image(40, 30, 7);
  const Rect roi{5, 6, 20, 10};
  std::vector<std::uint8_t> out;
  for (const Interp interp : {Interp::kLinear, Interp::kCubic}) {
    resize_window(img.view, roi, 20, 10, interp, out);
    ASSERT_EQ(out.size(), 20u * 10u * 3u);
    for (int y = 0; y < 10; ++y) {
      for (int x = 0; x < 20 * 3; ++x) {
        ASSERT_EQ(out[static_cast<std::size_t>(y) * 60 + static_cast<std::size_t>(x)],
                  img.view.row(roi.y + y)[roi.x * 3 + x]);
      }
    }
  }
}

TEST(ResizeWindow, ReusesCapacity) {
  const TestImage img = make_image(64, 48, 0);
  std::vector<std::uint8_t> out;
  out.reserve(std::size_t{224} * 224 * 3);
  const std::uint8_t* before = out.data();
  resize_window(img.view, Rect{0, 0, 64, 48}, 224, 224, Interp::kLinear, out);
  resize_window(img.view, Rect{1, 1, 30, 30}, 100, 80, Interp::kArea, out);
  EXPECT_EQ(out.data(), before);
  EXPECT_EQ(out.size(), 100u * 80u * 3u);
}

TEST(ResizeWindow, RejectsBadArguments) {
  const TestImage img = make_image(20, 10, 0);
  std::vector<std::uint8_t> out;
  EXPECT_THROW(resize_window(img.view, Rect{15, 0, 6, 5}, 4, 4, Interp::kLinear, out),
               std::invalid_argument);
  EXPECT_THROW(resize_window(img.view, Rect{0, -1, 6, 5}, 4, 4, Interp::kLinear, out),
               std::invalid_argument);
  EXPECT_THROW(resize_window(img.view, Rect{0, 0, 0, 5}, 4, 4, Interp::kLinear, out),
               std::invalid_argument);
  EXPECT_THROW(resize_window(img.view, Rect{0, 0, 6, 5}, 0, 4, Interp::kLinear, out),
               std::invalid_argument);
  ImageView gray = img.view;
  gray.channels = 1;
  EXPECT_THROW(resize_window(gray, Rect{0, 0, 6, 5}, 4, 4, Interp::kLinear, out),
               std::invalid_argument);
}

}  // namespace
}  // namespace millrace::augment
