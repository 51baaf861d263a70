// Engine overhead: a pipeline against the same stage objects called back to back on one thread.
//
// BM_EngineOverhead/<config> takes a real config (configs/train.yaml, configs/default.yaml) and
// runs it three ways over the same files, one after the other in every iteration:
// - loop: the config's stages, built by the same config loader, called in a plain loop on the
//   benchmark's thread (source next + load, every transform's process, the batch stage's push,
//   the sinks' consume), one recycled sample, no engine at all;
// - pipeline at `pipeline.threads` 1 and 2: Pipeline::from_file with the same overrides.
// Both sides read the files from the page cache (one untimed loop pass reads every file first)
// and are timed alike: images after the first batch over the time from the first batch to the
// last (the pipeline's steady-state images_per_second). Counters: the three rates,
// pipeline_1t_over_loop (the engine's own per-item cost at one thread: 1.0 is free) and
// pipeline_2t_over_2x_loop (the two-core scaling against a perfect 2x of the loop).
//
// Data: MILLRACE_BENCH_DATA, default data/imagenet-like of the source tree
// (`millrace make-dataset data/imagenet-like --count 2000`); MILLRACE_BENCH_IMAGES > 0 takes the
// first N entries. default.yaml's npy sink writes into a temporary folder, removed at exit.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "bench/two_buffer_emitter.hpp"
#include "engine/config.hpp"
#include "engine/registry.hpp"
#include "engine/stage.hpp"
#include "millrace/millrace.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string data_root() {
  const char* env = std::getenv("MILLRACE_BENCH_DATA");
  return env != nullptr && *env != '\0' ? std::string(env)
                                        : std::string(MILLRACE_SOURCE_DIR) + "/data/imagenet-like";
}

long image_limit() {
  const char* env = std::getenv("MILLRACE_BENCH_IMAGES");
  return env != nullptr ? std::strtol(env, nullptr, 10) : 0;
}

// Where default.yaml's npy sink writes during the benchmark; removed at exit.
class ScratchDir {
 public:
  ScratchDir()
      : dir_(fs::temp_directory_path() /
             ("millrace_overhead_bench_" + std::to_string(::getpid()))) {}
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string path() const { return dir_.string(); }

 private:
  fs::path dir_;
};

const ScratchDir& scratch() {
  static const ScratchDir instance;
  return instance;
}

// The --set overrides both sides use: the data set, the thread count, the output folder.
std::vector<std::string> overrides(const std::string& config, int threads) {
  std::vector<std::string> out = {"files.root=" + data_root(),
                                  "pipeline.threads=" + std::to_string(threads)};
  if (image_limit() > 0) out.push_back("files.limit=" + std::to_string(image_limit()));
  if (config == "default") out.push_back("npy.dir=" + scratch().path());
  return out;
}

std::string config_path(const std::string& config) {
  return std::string(MILLRACE_SOURCE_DIR) + "/configs/" + config + ".yaml";
}

class CountingReporter final : public RunReporter {
 public:
  void warn(const Sample&, const std::string&, const std::string&) override { ++warnings_; }

 private:
  std::uint64_t warnings_ = 0;
};

// The batch stage's buffers in the loop (see TwoBufferEmitter). An emitted batch goes through the
// sinks and straight back; the first and last emits time the steady state.
class LoopEmitter final : public TwoBufferEmitter {
 public:
  explicit LoopEmitter(std::vector<SinkStage*> sinks) : sinks_(std::move(sinks)) {}

  void emit(BatchData& batch) override {
    batch.index = batches_++;
    for (SinkStage* sink : sinks_) sink->consume(batch);
    const auto now = Clock::now();
    if (batches_ == 1) {
      first_ = now;
    } else {
      images_after_first_ += batch.rows - static_cast<std::size_t>(batch.pad);
    }
    last_ = now;
    recycle(batch);
  }

  double images_per_second() const {
    const double seconds = std::chrono::duration<double>(last_ - first_).count();
    return batches_ > 1 && seconds > 0 ? static_cast<double>(images_after_first_) / seconds : 0.0;
  }
  std::uint64_t batches() const { return batches_; }

 private:
  std::vector<SinkStage*> sinks_;
  std::uint64_t batches_ = 0;
  std::uint64_t images_after_first_ = 0;
  Clock::time_point first_{};
  Clock::time_point last_{};
};

// One pass of the config's stages in a plain loop on this thread; returns steady-state images/s.
double loop_pass(const std::string& config) {
  std::ifstream in(config_path(config), std::ios::binary);
  if (!in) throw std::runtime_error(config_path(config) + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  Diagnostics diagnostics;
  ConfigNode root = load_config_document(text.str(), config_path(config), diagnostics);
  PipelinePlan plan;
  if (!diagnostics.has_errors()) {
    plan = parse_pipeline(std::move(root), overrides(config, 1), Registry::builtin(), diagnostics);
  }
  diagnostics.throw_if_errors();

  SourceStage* source = nullptr;
  std::vector<const TransformStage*> transforms;
  BatchStage* batcher = nullptr;
  std::vector<SinkStage*> sinks;
  for (StagePlan& s : plan.stages) {
    switch (s.factory->info().shape) {
      case StageShape::kSource:
        source = static_cast<SourceStage*>(s.stage.get());
        break;
      case StageShape::kTransform:
        transforms.push_back(static_cast<const TransformStage*>(s.stage.get()));
        break;
      case StageShape::kBatch:
        batcher = static_cast<BatchStage*>(s.stage.get());
        break;
      case StageShape::kSink:
        sinks.push_back(static_cast<SinkStage*>(s.stage.get()));
        break;
      case StageShape::kBatchTransform:
        throw std::runtime_error(config + ": the loop does not run batch transforms (" + s.name +
                                 ")");
    }
  }
  if (source == nullptr || batcher == nullptr) {
    throw std::runtime_error(config + ": needs a source and a batch stage");
  }
  for (StagePlan& s : plan.stages) s.stage->prepare();
  for (StagePlan& s : plan.stages) s.stage->open();

  CountingReporter reporter;
  LoopEmitter emitter(sinks);
  Sample sample;
  std::uint32_t epoch = 0;
  for (std::uint64_t seq = 0;; ++seq) {
    sample.reset();
    const SourceStatus status = source->next(sample);
    if (status == SourceStatus::kEnd) break;
    if (status == SourceStatus::kEpochEnd) {
      batcher->finish_epoch(epoch++, emitter);
      continue;
    }
    sample.seq = seq;
    try {
      source->load(sample);
      for (const TransformStage* t : transforms) t->process(sample, reporter);
    } catch (const SampleError&) {
      continue;  // on_error: skip, as the pipeline does
    }
    batcher->push(sample, emitter);
  }
  for (StagePlan& s : plan.stages) s.stage->finish();
  return emitter.images_per_second();
}

double pipeline_pass(const std::string& config, int threads) {
  Pipeline pipeline = Pipeline::from_file(config_path(config), overrides(config, threads));
  const RunStats stats = pipeline.run([](const Batch&) {});
  if (!stats.error.empty()) throw std::runtime_error(stats.error);
  return stats.images_per_second;
}

void BM_EngineOverhead(benchmark::State& state, const std::string& config) {
  if (!fs::is_regular_file(data_root() + "/labels.lst")) {
    state.SkipWithError(("no data set at " + data_root() +
                         ": run `millrace make-dataset data/imagenet-like --count 2000` or set "
                         "MILLRACE_BENCH_DATA")
                            .c_str());
    return;
  }
  double loop = 0;
  double one = 0;
  double two = 0;
  try {
    loop_pass(config);  // reads every file into the page cache, warms the buffers
    for (auto _ : state) {
      loop += loop_pass(config);
      one += pipeline_pass(config, 1);
      two += pipeline_pass(config, 2);
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const auto runs = static_cast<double>(state.iterations());
  loop /= runs;
  one /= runs;
  two /= runs;
  state.counters["loop_images_per_second"] = loop;
  state.counters["pipeline_1t_images_per_second"] = one;
  state.counters["pipeline_2t_images_per_second"] = two;
  state.counters["pipeline_1t_over_loop"] = loop > 0 ? one / loop : 0.0;
  state.counters["pipeline_2t_over_2x_loop"] = loop > 0 ? two / (2 * loop) : 0.0;
}
BENCHMARK_CAPTURE(BM_EngineOverhead, train, std::string("train"))
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(BM_EngineOverhead, default, std::string("default"))
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kSecond);

}  // namespace
}  // namespace millrace
