// JPEG decode throughput: the kernel (TurboJPEG straight into a reused RGB buffer) against
// OpenCV's imdecode followed by the BGR->RGB conversion that gives the same output, and reduced
// decoding (only the window an augmentation reads, at a DCT scale) against whole images, on
// ImageNet-sized (~500x375) and large (2400x1800) JPEGs.
// Items are images; bytes are the compressed input consumed.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>
#include <vector>

#include "bench/recipe_window.hpp"
#include "engine/random.hpp"
#include "stages/augment/augment_kernel.hpp"
#include "stages/decode/decode_kernel.hpp"

namespace millrace::decode {
namespace {

// Photo-like content (smooth shading, edges, fine noise) so that the entropy decoder and the
// IDCT see realistic work; flat synthetic images decode unrealistically fast.
cv::Mat procedural_bgr(int width, int height, int seed) {
  cv::Mat bgr(height, width, CV_8UC3);
  cv::RNG rng(static_cast<std::uint64_t>(seed) + 1);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const double shade = 0.5 + 0.5 * std::sin(x / (11.0 + seed) + y / 29.0);
      const double rings = std::sin(std::hypot(x - width / 3.0, y - height / 2.0) / (4.0 + seed));
      const bool tile = ((x / 24) + (y / 24) + seed) % 3 == 0;
      auto& px = bgr.at<cv::Vec3b>(y, x);
      px[0] = cv::saturate_cast<std::uint8_t>(200 * shade + 30 * rings + rng.uniform(-10, 11));
      px[1] = cv::saturate_cast<std::uint8_t>(tile ? 220 : 70 + 60 * rings + rng.uniform(-10, 11));
      px[2] = cv::saturate_cast<std::uint8_t>(255.0 * x / width * (1 - shade / 2) +
                                              rng.uniform(-10, 11));
    }
  }
  return bgr;
}

// JPEGs (quality 90) of procedural images of the given sizes, seeds counting up from `seed`.
std::vector<std::vector<std::uint8_t>> encode_corpus(const std::vector<std::array<int, 2>>& sizes,
                                                     int seed) {
  std::vector<std::vector<std::uint8_t>> out;
  for (const auto& [width, height] : sizes) {
    std::vector<std::uint8_t> jpeg;
    cv::imencode(".jpg", procedural_bgr(width, height, seed++), jpeg,
                 {cv::IMWRITE_JPEG_QUALITY, 90});
    out.push_back(std::move(jpeg));
  }
  return out;
}

const std::vector<std::vector<std::uint8_t>>& corpus() {
  static const auto jpegs = encode_corpus({{500, 375}, {375, 500}, {500, 375}, {500, 333}}, 0);
  return jpegs;
}

const std::vector<std::vector<std::uint8_t>>& large_corpus() {
  static const auto jpegs = encode_corpus({{2400, 1800}, {1800, 2400}}, 10);
  return jpegs;
}

const std::vector<std::vector<std::uint8_t>>& corpus_of(const benchmark::State& state) {
  return state.range(0) == 0 ? corpus() : large_corpus();
}

// Whole images: range(0) picks the corpus (0: ~500x375, 1: 2400x1800), range(1) `dct: fast`.
void BM_DecodeWhole(benchmark::State& state) {
  const auto& jpegs = corpus_of(state);
  std::vector<std::uint8_t> out;
  Options options;
  options.fast_dct = state.range(1) == 1;
  std::size_t i = 0;
  std::int64_t bytes = 0;
  for (auto _ : state) {
    const auto& jpeg = jpegs[i++ % jpegs.size()];
    const Info info = decode(jpeg.data(), jpeg.size(), options, out);
    benchmark::DoNotOptimize(out.data());
    bytes += static_cast<std::int64_t>(jpeg.size());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_DecodeWhole)->ArgNames({"large", "fast"})->ArgsProduct({{0, 1}, {0, 1}});

// Reduced: range(0) the corpus, range(1) the recipe (1: train's random-resized crop, a new window
// per image; 0: val's resize + center crop), range(2) `dct: fast`. Counters: the share of images
// decoded at each scale.
void decode_reduced(benchmark::State& state, bool strict) {
  const auto& jpegs = corpus_of(state);
  const bool train = state.range(1) == 1;
  std::vector<std::uint8_t> out;
  Options options;
  options.fast_dct = state.range(2) == 1;
  options.strict = strict;
  std::uint64_t id = 0;
  std::int64_t bytes = 0;
  std::array<std::int64_t, 9> scales{};
  for (auto _ : state) {
    const auto& jpeg = jpegs[id % jpegs.size()];
    const RecipeWindow chooser(train, id++);
    const Info info = decode(jpeg.data(), jpeg.size(), options, out, &chooser);
    benchmark::DoNotOptimize(out.data());
    ++scales[static_cast<std::size_t>(info.reduction.scale)];
    bytes += static_cast<std::int64_t>(jpeg.size());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
  const auto share = [&](int s) {
    return benchmark::Counter(static_cast<double>(scales[static_cast<std::size_t>(s)]) /
                              static_cast<double>(std::max<std::int64_t>(state.iterations(), 1)));
  };
  state.counters["whole"] = share(0);
  state.counters["at_1"] = share(1);
  state.counters["at_1/2"] = share(2);
  state.counters["at_1/4"] = share(4);
  state.counters["at_1/8"] = share(8);
}

void BM_DecodeReduced(benchmark::State& state) { decode_reduced(state, true); }
BENCHMARK(BM_DecodeReduced)
    ->ArgNames({"large", "train", "fast"})
    ->ArgsProduct({{0, 1}, {0, 1}, {0, 1}});

// The same without `strict`, which skips reading the stream below the window: the difference is
// the price of finding damage there (docs/RELIABILITY.md).
void BM_DecodeReducedLenient(benchmark::State& state) { decode_reduced(state, false); }
BENCHMARK(BM_DecodeReducedLenient)
    ->ArgNames({"large", "train", "fast"})
    ->ArgsProduct({{0, 1}, {0, 1}, {0}});

void BM_DecodeTurboJpeg(benchmark::State& state) {
  const auto& jpegs = corpus();
  std::vector<std::uint8_t> out;
  const Options options;
  std::size_t i = 0;
  std::int64_t bytes = 0;
  for (auto _ : state) {
    const auto& jpeg = jpegs[i++ % jpegs.size()];
    const Info info = decode(jpeg.data(), jpeg.size(), options, out);
    benchmark::DoNotOptimize(info.width);
    benchmark::DoNotOptimize(out.data());
    bytes += static_cast<std::int64_t>(jpeg.size());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_DecodeTurboJpeg);

void BM_DecodeOpenCv(benchmark::State& state) {
  const auto& jpegs = corpus();
  cv::Mat rgb;
  std::size_t i = 0;
  std::int64_t bytes = 0;
  for (auto _ : state) {
    const auto& jpeg = jpegs[i++ % jpegs.size()];
    const cv::Mat bgr = cv::imdecode(jpeg, cv::IMREAD_COLOR);
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    benchmark::DoNotOptimize(rgb.data);
    bytes += static_cast<std::int64_t>(jpeg.size());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_DecodeOpenCv);

}  // namespace
}  // namespace millrace::decode
