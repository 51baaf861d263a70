#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "engine/random.hpp"
#include "stages/augment/augment_kernel.hpp"

namespace millrace::augment {
namespace {

constexpr int kWidth = 500;  // a typical ImageNet validation image
constexpr int kHeight = 375;

std::vector<std::uint8_t> make_image() {
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(kWidth) * kHeight * 3);
  std::uint32_t state = 6789;
  for (auto& p : pixels) {
    state = state * 1664525u + 1013904223u;
    p = static_cast<std::uint8_t>(state >> 24);
  }
  return pixels;
}

// Evaluation geometry: shorter side to 256, then the centre 224x224 window.
void BM_ResizeCrop(benchmark::State& state) {
  const std::vector<std::uint8_t> pixels = make_image();
  const ImageView src{pixels.data(), kWidth, kHeight, 3, static_cast<std::size_t>(kWidth) * 3};
  std::vector<std::uint8_t> resized;
  std::vector<std::uint8_t> crop;
  for (auto _ : state) {
    const auto [rw, rh] = resize_shorter_size(kWidth, kHeight, 256);
    resize_window(src, Rect{0, 0, kWidth, kHeight}, rw, rh, Interp::kLinear, resized);
    const ImageView mid{resized.data(), rw, rh, 3, static_cast<std::size_t>(rw) * 3};
    resize_window(mid, center_window(rw, rh, 224, 224), 224, 224, Interp::kLinear, crop);
    benchmark::DoNotOptimize(crop.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ResizeCrop);

// Training geometry: a RandomResizedCrop window resized to 224x224, a new sample each iteration.
void BM_RandomResizedCrop(benchmark::State& state) {
  const std::vector<std::uint8_t> pixels = make_image();
  const ImageView src{pixels.data(), kWidth, kHeight, 3, static_cast<std::size_t>(kWidth) * 3};
  std::vector<std::uint8_t> crop;
  std::uint64_t sample = 0;
  for (auto _ : state) {
    CounterRng rng(0, stable_hash("augment"), 0, sample++);
    const Rect win =
        random_resized_window(kWidth, kHeight, {0.08, 1.0}, {3.0 / 4.0, 4.0 / 3.0}, rng);
    resize_window(src, win, 224, 224, Interp::kLinear, crop);
    benchmark::DoNotOptimize(crop.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RandomResizedCrop);

// The window-only decode's resampling: a fractional window (full-scale coordinates of the
// evaluation geometry, as `decode.reduce: auto` delivers it with a few pixels of margin) straight
// to 224x224, where the whole-image path resizes and then crops.
void BM_ResampleWindowVal(benchmark::State& state) {
  const std::vector<std::uint8_t> pixels = make_image();
  const ImageView src{pixels.data(), kWidth, kHeight, 3, static_cast<std::size_t>(kWidth) * 3};
  const auto [rw, rh] = resize_shorter_size(kWidth, kHeight, 256);
  const double fx = static_cast<double>(kWidth) / rw;
  const double fy = static_cast<double>(kHeight) / rh;
  const Rect c = center_window(rw, rh, 224, 224);
  const WindowF window{c.x * fx, c.y * fy, c.width * fx, c.height * fy};
  std::vector<std::uint8_t> crop;
  for (auto _ : state) {
    resample_window(src, window, 224, 224, Interp::kLinear, crop);
    benchmark::DoNotOptimize(crop.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ResampleWindowVal);

// The training geometry through the same resampler: a RandomResizedCrop window shifted by a
// fraction of a pixel (a window of a DCT-scaled decode has fractional bounds), to 224x224.
void BM_ResampleWindowTrain(benchmark::State& state) {
  const std::vector<std::uint8_t> pixels = make_image();
  const ImageView src{pixels.data(), kWidth, kHeight, 3, static_cast<std::size_t>(kWidth) * 3};
  std::vector<std::uint8_t> crop;
  std::uint64_t sample = 0;
  for (auto _ : state) {
    CounterRng rng(0, stable_hash("augment"), 0, sample++);
    const Rect win =
        random_resized_window(kWidth, kHeight, {0.08, 1.0}, {3.0 / 4.0, 4.0 / 3.0}, rng);
    const WindowF window{win.x + 0.375, win.y + 0.625, win.width - 1.0, win.height - 1.0};
    resample_window(src, window, 224, 224, Interp::kLinear, crop);
    benchmark::DoNotOptimize(crop.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ResampleWindowTrain);

}  // namespace
}  // namespace millrace::augment
