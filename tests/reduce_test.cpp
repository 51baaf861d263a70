// decode `reduce: auto` with the augment stage after it: the same windows and the same draws as
// whole-image decoding, and outputs within 35 dB PSNR of it.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

#include "datasets/make_dataset.hpp"
#include "engine/random.hpp"
#include "millrace/millrace.hpp"
#include "stages/augment/augment_stage.hpp"
#include "stages/common/stage_testing.hpp"
#include "stages/decode/decode_stage.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

using testing::NullReporter;

StageContext context_for(const std::string& name) { return testing::stage_context(name, 7); }

// Smooth shading, edges and mild grain: photo-like, so that a bilinear resize of the full image
// and a DCT-scaled one agree as they do on photographs.
std::vector<std::uint8_t> photo_like_jpeg(int width, int height, int seed) {
  cv::Mat bgr(height, width, CV_8UC3);
  cv::RNG rng(static_cast<std::uint64_t>(seed) + 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const double u = static_cast<double>(x) / width;
      const double v = static_cast<double>(y) / height;
      const bool disc = std::hypot(u - 0.6, v - 0.4) < 0.2;
      auto& px = bgr.at<cv::Vec3b>(y, x);
      px[0] = cv::saturate_cast<std::uint8_t>(60 + 120 * u + (disc ? 60 : 0) + rng.gaussian(3));
      px[1] = cv::saturate_cast<std::uint8_t>(100 + 80 * std::sin(6 * u + 4 * v + seed) +
                                              rng.gaussian(3));
      px[2] = cv::saturate_cast<std::uint8_t>(200 * v + (((x / 40 + y / 40) % 2) ? 30 : 0) +
                                              rng.gaussian(3));
    }
  }
  std::vector<std::uint8_t> jpeg;
  cv::imencode(".jpg", bgr, jpeg, {cv::IMWRITE_JPEG_QUALITY, 90});
  return jpeg;
}

struct Pair {
  std::unique_ptr<DecodeStage> decode;
  std::unique_ptr<AugmentStage> augment;
};

Pair make_pair(DecodeStage::Reduce reduce, const AugmentStage::Params& params) {
  DecodeStage::Params dp;
  dp.reduce = reduce;
  Pair p{std::make_unique<DecodeStage>(context_for("decode"), dp),
         std::make_unique<AugmentStage>(context_for("augment"), params)};
  Diagnostics d;
  link_stream({p.decode.get(), p.augment.get()}, d);
  EXPECT_FALSE(d.has_errors());
  return p;
}

struct Output {
  std::vector<std::uint8_t> pixels;  // the region, packed
  std::uint32_t deferred = 0;
  int scale = 0;  // what decode did
};

Output run_pair(const Pair& p, const std::vector<std::uint8_t>& jpeg, std::uint64_t id) {
  NullReporter reporter;
  Sample s;
  s.id = id;
  s.epoch = 1;
  s.bytes = jpeg;
  p.decode->process(s, reporter);
  Output out;
  out.scale = s.geometry.source.scale;
  p.augment->process(s, reporter);
  EXPECT_EQ(s.geometry.source.scale, 0) << "augment consumes the record";
  const auto width = s.tensor.shape[1];
  const Region& r = s.geometry.roi;
  for (std::int64_t y = r.y; y < r.y + r.height; ++y) {
    const auto* row = s.tensor.storage.data() + (y * width + r.x) * 3;
    out.pixels.insert(out.pixels.end(), row, row + r.width * 3);
  }
  out.deferred = s.geometry.flips;
  return out;
}

struct Mse {
  double sum = 0;
  std::size_t count = 0;
  void add(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) {
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double d = static_cast<double>(a[i]) - b[i];
      sum += d * d;
    }
    count += a.size();
  }
  double psnr() const {
    const double mse = sum / static_cast<double>(count);
    return mse == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 / mse);
  }
};

struct CropCase {
  const char* name;
  AugmentStage::Crop crop;
  int resize;
  bool exact_at_full_scale;  // no resize: a full-scale window must give identical bytes
};

class ReduceWindows : public ::testing::TestWithParam<CropCase> {};

// For many sample ids, decoding the window (at whatever scale it allows) gives the output of
// whole-image decoding: bit-identical where nothing is resampled at full scale, and close (PSNR)
// where the scaled window is resampled; the mirror draw after the window agrees too.
TEST_P(ReduceWindows, SameWindowsAndDrawsAsWholeImageDecoding) {
  const CropCase& c = GetParam();
  AugmentStage::Params params;
  params.crop = c.crop;
  params.resize = c.resize;
  params.size = {224, 224};
  params.mirror = 0.5;
  const Pair off = make_pair(DecodeStage::Reduce::kOff, params);
  const Pair on = make_pair(DecodeStage::Reduce::kAuto, params);
  for (const auto& [w, h] : std::vector<std::array<int, 2>>{{500, 375}, {375, 500}, {1600, 1200}}) {
    SCOPED_TRACE(::testing::Message() << w << "x" << h);
    const auto jpeg = photo_like_jpeg(w, h, w);
    Mse all;
    std::array<int, 9> scales{};
    int mirrored = 0;
    for (std::uint64_t id = 0; id < 120; ++id) {
      SCOPED_TRACE(id);
      const Output a = run_pair(off, jpeg, id);
      const Output b = run_pair(on, jpeg, id);
      EXPECT_EQ(a.scale, 0);
      ASSERT_GT(b.scale, 0);
      ++scales[static_cast<std::size_t>(b.scale)];
      EXPECT_EQ(a.deferred, b.deferred);
      mirrored += a.deferred != 0;
      ASSERT_EQ(a.pixels.size(), b.pixels.size());
      if (c.exact_at_full_scale && b.scale == 1) {
        ASSERT_EQ(a.pixels, b.pixels);
      }
      Mse one;
      one.add(a.pixels, b.pixels);
      EXPECT_GE(one.psnr(), 30.0);
      all.add(a.pixels, b.pixels);
    }
    EXPECT_GE(all.psnr(), 35.0);
    EXPECT_GT(mirrored, 20);
    EXPECT_LT(mirrored, 100);
    // Large images are often decoded scaled down when a resize or a random-resized crop shrinks
    // them; a plain crop never is.
    if (w == 1600 && (c.resize > 0 || c.crop == AugmentStage::Crop::kRandomResized)) {
      EXPECT_GT(scales[2] + scales[4] + scales[8], 30);
    }
    if (c.resize == 0 && c.crop != AugmentStage::Crop::kRandomResized) {
      EXPECT_EQ(scales[1], 120);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Crops, ReduceWindows,
    ::testing::Values(CropCase{"random_resized", AugmentStage::Crop::kRandomResized, 0, true},
                      CropCase{"random", AugmentStage::Crop::kRandom, 0, true},
                      CropCase{"center", AugmentStage::Crop::kCenter, 0, true},
                      CropCase{"resize_center", AugmentStage::Crop::kCenter, 256, false},
                      CropCase{"resize_random", AugmentStage::Crop::kRandom, 256, false},
                      CropCase{"resize_random_resized", AugmentStage::Crop::kRandomResized, 256,
                               false}),
    [](const ::testing::TestParamInfo<CropCase>& info) { return std::string(info.param.name); });

TEST(Reduce, AutoWithoutAFollowingAugmentDecodesWholeImages) {
  DecodeStage::Params dp;
  dp.reduce = DecodeStage::Reduce::kAuto;
  DecodeStage decode(context_for("decode"), dp);
  NullReporter reporter;
  Sample s;
  s.bytes = photo_like_jpeg(320, 240, 1);
  decode.process(s, reporter);
  EXPECT_EQ(s.geometry.source.scale, 0);
  EXPECT_EQ(s.tensor.shape[0], 240);
  EXPECT_EQ(s.tensor.shape[1], 320);
}

TEST(Reduce, OnlyAutoAcceptsAWindowSource) {
  AugmentStage::Params params;
  params.crop = AugmentStage::Crop::kCenter;
  params.size = {64, 64};
  const AugmentStage augment(context_for("augment"), params);
  DecodeStage off(context_for("decode"), DecodeStage::Params{});
  EXPECT_FALSE(off.attach_window_source(&augment));
  DecodeStage::Params dp;
  dp.reduce = DecodeStage::Reduce::kAuto;
  DecodeStage on(context_for("decode"), dp);
  EXPECT_TRUE(on.attach_window_source(&augment));
}

TEST(Reduce, ACropLargerThanTheImageIsStillAugmentsError) {
  AugmentStage::Params params;
  params.crop = AugmentStage::Crop::kCenter;
  params.size = {400, 400};
  const Pair on = make_pair(DecodeStage::Reduce::kAuto, params);
  NullReporter reporter;
  Sample s;
  s.bytes = photo_like_jpeg(320, 240, 2);
  on.decode->process(s, reporter);
  EXPECT_EQ(s.geometry.source.scale, 0);
  EXPECT_THROW(on.augment->process(s, reporter), SampleError);
}

// compat: mxnet scales an image smaller than the crop up to it, as MXNet's default augmenter
// does: 320x240 to a 400x400 crop is cv::resize to (int)(400.f / 240 * 320) = 533 x 400, then the
// center crop at x = (533 - 400) / 2 = 66. decode, asked for a window that does not fit, delivers
// the whole image.
TEST(Reduce, CompatMxnetScalesUpAnImageSmallerThanTheCrop) {
  AugmentStage::Params params;
  params.crop = AugmentStage::Crop::kCenter;
  params.size = {400, 400};
  params.compat = Compat::kMxnet;
  const std::vector<std::uint8_t> jpeg = photo_like_jpeg(320, 240, 5);
  const Output got = run_pair(make_pair(DecodeStage::Reduce::kAuto, params), jpeg, 3);
  EXPECT_EQ(got.scale, 0);

  const cv::Mat bgr = cv::imdecode(jpeg, cv::IMREAD_COLOR);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  cv::Mat scaled;
  cv::resize(rgb, scaled, cv::Size(533, 400), 0, 0, cv::INTER_LINEAR);
  const cv::Mat expected = scaled(cv::Rect(66, 0, 400, 400)).clone();
  ASSERT_EQ(got.pixels.size(), expected.total() * 3);
  EXPECT_TRUE(std::equal(got.pixels.begin(), got.pixels.end(), expected.data));

  params.compat = Compat::kNone;
  const Pair own = make_pair(DecodeStage::Reduce::kAuto, params);
  NullReporter reporter;
  Sample s;
  s.bytes = jpeg;
  own.decode->process(s, reporter);
  EXPECT_THROW(own.augment->process(s, reporter), SampleError);
}

// A whole pipeline, files to int8 batches, on photos cut by the dataset generator (ImageNet-like
// and large), reduce: auto against off: PSNR of the int8 outputs at least 35 dB.
TEST(Reduce, WholePipelineOutputsStayWithin35DbOfWholeImageDecoding) {
  const testing::TempDir dir("millrace_reduce");
  const std::filesystem::path& root = dir.path();
  for (const auto& [name, size] : {std::pair{"imagenet", datasets::DatasetSpec::Size::kImageNet},
                                   std::pair{"large", datasets::DatasetSpec::Size::kLarge}}) {
    datasets::DatasetSpec spec;
    spec.dir = (root / name).string();
    spec.count = 24;
    spec.classes = 2;
    spec.size = size;
    datasets::make_dataset(spec, [](int, int) {});
    for (const char* augment :
         {"{type: augment, crop: random_resized, size: [224, 224], mirror: 0.5}",
          "{type: augment, resize: 256, crop: center, size: [224, 224]}"}) {
      SCOPED_TRACE(::testing::Message() << name << " " << augment);
      const auto run = [&](const char* reduce) {
        const std::string yaml =
            std::string("pipeline: {threads: 2, seed: 3}\nstages:\n") +
            "  - {type: files, root: \"" + spec.dir + "\", list: labels.lst}\n" +
            "  - {type: decode, reduce: " + reduce + "}\n  - " + augment + "\n" +
            "  - {type: normalize, dtype: int8, mean: [124, 117, 104], layout: NCHW}\n"
            "  - {type: batch, size: 8, last: partial}\n  - {type: discard}\n";
        Pipeline p = Pipeline::from_string(yaml);
        std::vector<std::int8_t> values;
        while (auto batch = p.next()) {
          const auto v = batch->values<std::int8_t>();
          values.insert(values.end(), v.begin(), v.end());
        }
        return values;
      };
      const auto off = run("off");
      const auto on = run("auto");
      ASSERT_EQ(off.size(), on.size());
      ASSERT_EQ(off.size(), 24u * 3 * 224 * 224);
      double sum = 0;
      for (std::size_t i = 0; i < off.size(); ++i) {
        const double d = static_cast<double>(off[i]) - on[i];
        sum += d * d;
      }
      const double psnr = 10 * std::log10(255.0 * 255.0 / (sum / static_cast<double>(off.size())));
      EXPECT_GE(psnr, 35.0);
    }
  }
}

}  // namespace
}  // namespace millrace
