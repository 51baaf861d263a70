// Pipeline benchmarks: the batch stage alone, and whole pipelines through the public API.
//
// BM_BatchAssembly measures the batch stage's copy of int8 3x224x224 samples into batches of 64,
// with a stand-in for the engine's batch pool, so that the figure is the stage's own cost.
// BM_Pipeline runs the ImageNet validation recipe (resize 256, center 224, int8, batch 32, discard
// sink) end to end over 64 generated JPEGs, once per TBB thread count; it is timed on the wall
// clock because the work happens on the pipeline's threads, not on the benchmark's.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "bench/two_buffer_emitter.hpp"
#include "datasets/make_dataset.hpp"
#include "millrace/millrace.hpp"
#include "stages/batch/batch_stage.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

constexpr std::int64_t kChannels = 3;
constexpr std::int64_t kSide = 224;
constexpr int kAssemblyBatch = 64;
constexpr int kDatasetImages = 64;
constexpr int kPipelineBatch = 32;

// See TwoBufferEmitter: an emitted batch comes straight back.
class RecyclingEmitter final : public TwoBufferEmitter {
 public:
  void emit(BatchData& batch) override {
    benchmark::DoNotOptimize(batch.data.storage.data());
    ++emitted_;
    recycle(batch);
  }

  std::int64_t emitted() const { return emitted_; }

 private:
  std::int64_t emitted_ = 0;
};

void BM_BatchAssembly(benchmark::State& state) {
  const Quantization quantization{{1.0F, 1.0F, 1.0F}, 0.0F, true};
  Sample sample;
  sample.tensor.reshape(DType::kInt8, {kChannels, kSide, kSide}, "CHW");
  std::uint32_t seed = 2024;
  for (auto& v : sample.tensor.storage) {
    seed = seed * 1664525U + 1013904223U;
    v = static_cast<std::uint8_t>(seed >> 24);
  }
  sample.labels = {3.0F};
  sample.path = "class_003/img_000123.jpg";
  sample.quantization = &quantization;

  StageContext context;
  context.name = context.type = "batch";
  BatchAssembler assembler(context, BatchAssembler::Params{.size = kAssemblyBatch});
  RecyclingEmitter emitter;
  std::uint64_t id = 0;
  for (auto _ : state) {
    sample.seq = sample.id = id++;
    try {
      assembler.push(sample, emitter);
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
      break;
    }
  }
  if (state.error_occurred()) return;
  assembler.finish_epoch(0, emitter);
  const auto sample_bytes = static_cast<std::int64_t>(sample.tensor.bytes());
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * sample_bytes);
  state.counters["batches"] = static_cast<double>(emitter.emitted());
}
BENCHMARK(BM_BatchAssembly);

// The generated dataset, written once per process on first use and removed at exit.
class TempDataset {
 public:
  TempDataset() {
    try {
      datasets::DatasetSpec spec;
      spec.dir = dir_.str();
      spec.count = kDatasetImages;
      spec.classes = 4;
      const datasets::DatasetReport report = datasets::make_dataset(spec, {});
      if (report.images != kDatasetImages) {
        error_ = "make_dataset wrote " + std::to_string(report.images) + " images";
      }
    } catch (const std::exception& e) {
      error_ = std::string("make_dataset failed: ") + e.what();
    }
  }
  TempDataset(const TempDataset&) = delete;
  TempDataset& operator=(const TempDataset&) = delete;

  std::string dir() const { return dir_.str(); }
  const std::string& error() const { return error_; }

 private:
  millrace::testing::TempDir dir_{"millrace_pipeline_bench"};
  std::string error_;
};

const TempDataset& dataset() {
  static const TempDataset instance;
  return instance;
}

// The whole run is measured, building included: validating the config and scanning the folder
// are part of what a user pays per pipeline. startup_ms and steady_images_per_second separate
// that cost from the streaming rate.
void BM_Pipeline(benchmark::State& state) {
  const TempDataset& data = dataset();
  if (!data.error().empty()) {
    state.SkipWithError(data.error().c_str());
    return;
  }
  const std::string threads = std::to_string(state.range(0));
  const PipelineBuilder builder =
      PipelineBuilder("bench-validation-int8")
          .set("threads", threads)
          .stage("files", {{"root", data.dir()}, {"list", "labels.lst"}})
          .stage("decode")
          .stage("augment", {{"resize", "256"}, {"crop", "center"}, {"size", "[224, 224]"}})
          .stage("normalize", {{"dtype", "int8"}, {"mean", "[123.68, 116.779, 103.939]"}})
          .stage("batch", {{"size", std::to_string(kPipelineBatch)}})
          .stage("discard");
  double startup_seconds = 0;
  double steady_rate = 0;
  for (auto _ : state) {
    std::string error;
    try {
      Pipeline pipeline = builder.build();
      std::uint64_t bytes = 0;
      const RunStats stats = pipeline.run([&bytes](const Batch& batch) { bytes += batch.bytes(); });
      benchmark::DoNotOptimize(bytes);
      if (stats.images != kDatasetImages) {
        error = "the pipeline delivered " + std::to_string(stats.images) + " images, not " +
                std::to_string(kDatasetImages);
      }
      startup_seconds += stats.startup_seconds;
      steady_rate += stats.images_per_second;
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (!error.empty()) {
      state.SkipWithError(error.c_str());
      break;
    }
  }
  if (state.error_occurred()) return;
  state.SetItemsProcessed(state.iterations() * kDatasetImages);
  const auto runs = static_cast<double>(state.iterations());
  state.counters["startup_ms"] = 1000.0 * startup_seconds / runs;
  state.counters["steady_images_per_second"] = steady_rate / runs;
}
BENCHMARK(BM_Pipeline)
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->UseRealTime()
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace millrace
