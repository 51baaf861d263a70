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

}  // namespace
}  // namespace millrace::augment
