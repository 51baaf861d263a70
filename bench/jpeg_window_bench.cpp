// Windows decoded from a restart grid against the same windows from the original files, and
// against whole images, one core. The JPEGs are those of the folder MILLRACE_BENCH_JPEGS (every
// file that starts like a JPEG, e.g. real photos), or procedural ~500x375 photos without it; the
// "prepared" copies are rewritten in memory with an automatic restart grid, as `millrace prepare`
// writes them. Items are images.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>
#include <string>
#include <vector>

#include "bench/recipe_window.hpp"
#include "engine/random.hpp"
#include "stages/augment/augment_kernel.hpp"
#include "stages/common/jpeg/jpeg_restart.hpp"
#include "stages/decode/decode_kernel.hpp"

namespace millrace::decode {
namespace {

using Bytes = std::vector<std::uint8_t>;

std::vector<Bytes> original_jpegs() {
  std::vector<Bytes> out;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read once, before the benchmarks start threads
  if (const char* dir = std::getenv("MILLRACE_BENCH_JPEGS")) {
    std::vector<std::filesystem::path> paths;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      if (e.is_regular_file()) paths.push_back(e.path());
    }
    std::sort(paths.begin(), paths.end());
    for (const auto& p : paths) {
      std::ifstream in(p, std::ios::binary);
      Bytes b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (b.size() > 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) out.push_back(std::move(b));
    }
    return out;
  }
  cv::RNG rng(7);
  for (int i = 0; i < 16; ++i) {
    const int w = i % 4 == 0 ? 375 : 500;
    const int h = i % 4 == 0 ? 500 : 375;
    cv::Mat bgr(h, w, CV_8UC3);
    cv::Mat small(h / 8, w / 8, CV_8UC3);
    rng.fill(small, cv::RNG::UNIFORM, 0, 255);
    cv::resize(small, bgr, bgr.size(), 0, 0, cv::INTER_CUBIC);
    cv::Mat noise(h, w, CV_8UC3);
    rng.fill(noise, cv::RNG::NORMAL, 0, 12);
    bgr += noise;
    Bytes jpeg;
    cv::imencode(".jpg", bgr, jpeg, {cv::IMWRITE_JPEG_QUALITY, 90});
    out.push_back(std::move(jpeg));
  }
  return out;
}

const std::vector<Bytes>& jpegs(bool prepared) {
  static const std::vector<Bytes> originals = original_jpegs();
  static const std::vector<Bytes> gridded = [] {
    std::vector<Bytes> out;
    for (const Bytes& b : originals) {
      Bytes rewritten;
      const auto r = recordio::add_restart_grid(b.data(), b.size(), 0, rewritten);
      out.push_back(r.outcome == recordio::RestartOutcome::kRewritten ? rewritten : b);
    }
    return out;
  }();
  return prepared ? gridded : originals;
}

// range(0): 1 = the prepared copies; range(1): 0 whole images, 1 train windows, 2 val windows.
// Counter "grid": the share of images served from the restart grid.
void BM_WindowDecode(benchmark::State& state) {
  const std::vector<Bytes>& files = jpegs(state.range(0) == 1);
  if (files.empty()) {
    state.SkipWithError("no JPEGs in MILLRACE_BENCH_JPEGS");
    return;
  }
  const int mode = static_cast<int>(state.range(1));
  Bytes out;
  const Options options;
  std::uint64_t id = 0;
  std::int64_t grid = 0;
  for (auto _ : state) {
    const Bytes& jpeg = files[id % files.size()];
    const RecipeWindow chooser(mode == 1, id++);
    const Info info =
        decode(jpeg.data(), jpeg.size(), options, out, mode == 0 ? nullptr : &chooser);
    benchmark::DoNotOptimize(out.data());
    grid += info.reduction.from_grid ? 1 : 0;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["grid"] =
      benchmark::Counter(static_cast<double>(grid) /
                         static_cast<double>(std::max<std::int64_t>(state.iterations(), 1)));
}
BENCHMARK(BM_WindowDecode)->ArgNames({"prepared", "window"})->ArgsProduct({{0, 1}, {0, 1, 2}});

}  // namespace
}  // namespace millrace::decode
