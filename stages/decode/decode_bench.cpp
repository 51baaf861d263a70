// JPEG decode throughput: the kernel (TurboJPEG straight into a reused RGB buffer) against
// OpenCV's imdecode followed by the BGR->RGB conversion that gives the same output.
// Items are images; bytes are the compressed input consumed.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <vector>

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

const std::vector<std::vector<std::uint8_t>>& corpus() {
  static const std::vector<std::vector<std::uint8_t>> jpegs = [] {
    std::vector<std::vector<std::uint8_t>> out;
    const int sizes[][2] = {{500, 375}, {375, 500}, {500, 375}, {500, 333}};
    int seed = 0;
    for (const auto& size : sizes) {
      std::vector<std::uint8_t> jpeg;
      cv::imencode(".jpg", procedural_bgr(size[0], size[1], seed++), jpeg,
                   {cv::IMWRITE_JPEG_QUALITY, 90});
      out.push_back(std::move(jpeg));
    }
    return out;
  }();
  return jpegs;
}

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
