#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "stages/normalize/normalize_kernel.hpp"

namespace millrace::normalize {
namespace {

constexpr int kSide = 224;

// A 224x224 crop with arbitrary pixel values, as it arrives from the augment stage.
std::vector<std::uint8_t> make_crop() {
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(kSide) * kSide * 3);
  std::uint32_t state = 12345;
  for (auto& p : pixels) {
    state = state * 1664525u + 1013904223u;
    p = static_cast<std::uint8_t>(state >> 24);
  }
  return pixels;
}

void run(benchmark::State& state, const Params& params, bool mirror, Layout layout) {
  const std::vector<std::uint8_t> pixels = make_crop();
  const ImageView src{pixels.data(), kSide, kSide, 3, static_cast<std::size_t>(kSide) * 3};
  const Table table(params);
  const std::size_t out_bytes = pixels.size() * static_cast<std::size_t>(table.element_size());
  std::vector<float> dst(out_bytes / sizeof(float) + 1);  // float-aligned storage for any dtype
  for (auto _ : state) {
    table.apply(src, mirror, layout, dst.data());
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(out_bytes));
}

// MXNet-compatible int8 with the ImageNet means, the reference configuration.
Params mxnet_int8() {
  Params p;
  p.mean = {123.68, 116.779, 103.939};
  return p;
}

Params imagenet_float32() {
  Params p;
  p.dtype = DType::kFloat32;
  p.mean = {123.675, 116.28, 103.53};
  p.std = {58.395, 57.12, 57.375};
  return p;
}

void BM_NormalizeInt8NCHW(benchmark::State& state) {
  run(state, mxnet_int8(), false, Layout::kNCHW);
}
BENCHMARK(BM_NormalizeInt8NCHW);

void BM_NormalizeInt8NHWC(benchmark::State& state) {
  run(state, mxnet_int8(), false, Layout::kNHWC);
}
BENCHMARK(BM_NormalizeInt8NHWC);

void BM_NormalizeInt8NCHWMirror(benchmark::State& state) {
  run(state, mxnet_int8(), true, Layout::kNCHW);
}
BENCHMARK(BM_NormalizeInt8NCHWMirror);

void BM_NormalizeFloat32NCHW(benchmark::State& state) {
  run(state, imagenet_float32(), false, Layout::kNCHW);
}
BENCHMARK(BM_NormalizeFloat32NCHW);

}  // namespace
}  // namespace millrace::normalize
