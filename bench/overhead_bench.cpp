// Engine overhead: a pipeline against the same stage objects called back to back on one thread.
//
// BM_EngineOverhead/<config> takes a real config (configs/train.yaml, configs/default.yaml) and
// runs it four ways over the same files in every repetition, each repetition starting with the
// next of the four (so that none always runs first on a machine whose speed drifts):
// - loop: the config's stages, built by the same config loader, called in a plain loop on the
//   benchmark's thread (source next + load, every transform's process, the batch stage's push,
//   the sinks' consume), one recycled sample, no engine at all;
// - two loops: two such loops at once on two threads, each over every file: what two cores
//   give with no engine, their shared caches and memory included;
// - pipeline at `pipeline.threads` 1 and 2: Pipeline::from_file with the same overrides.
// All read the files from the page cache (one untimed loop pass reads every file first) and are
// timed alike: images after the first batch over the time from the first batch to the last (the
// pipeline's steady-state images_per_second). Counters: the rates; pipeline_1t_over_loop (the
// engine's own per-item cost at one thread: 1.0 is free); pipeline_2t_over_2x_loop (two-core
// scaling against a perfect 2x of the loop); two_loops_over_2x_loop (what the machine itself
// loses on the second core); pipeline_2t_over_two_loops; and the process's CPU time per pass
// over the loop's (*_cpu_over_loop, per file): above 1 is work added, not time spent idle.
//
// Data: MILLRACE_BENCH_DATA, default data/imagenet-like of the source tree
// (`millrace make-dataset data/imagenet-like --count 2000`); MILLRACE_BENCH_IMAGES > 0 takes the
// first N entries. default.yaml's npy sink writes into a temporary folder, removed at exit.
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "bench/two_buffer_emitter.hpp"
#include "engine/config.hpp"
#include "engine/registry.hpp"
#include "engine/stage.hpp"
#include "millrace/millrace.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string data_root() {
  const char* env = std::getenv("MILLRACE_BENCH_DATA");  // NOLINT(concurrency-mt-unsafe): setup
  return env != nullptr && *env != '\0' ? std::string(env)
                                        : std::string(MILLRACE_SOURCE_DIR) + "/data/imagenet-like";
}

long image_limit() {
  const char* env = std::getenv("MILLRACE_BENCH_IMAGES");  // NOLINT(concurrency-mt-unsafe): setup
  return env != nullptr ? std::strtol(env, nullptr, 10) : 0;
}

// Where default.yaml's npy sink writes during the benchmark; removed at exit.
const millrace::testing::TempDir& scratch() {
  static const millrace::testing::TempDir instance("millrace_overhead_bench");
  return instance;
}

// The --set overrides both sides use: the data set, the thread count, the output folder (one per
// lane, for loops that run side by side).
std::vector<std::string> overrides(const std::string& config, int threads, int lane = 0) {
  std::vector<std::string> out = {"files.root=" + data_root(),
                                  "pipeline.threads=" + std::to_string(threads)};
  if (image_limit() > 0) out.push_back("files.limit=" + std::to_string(image_limit()));
  if (config == "default") {
    out.push_back("npy.dir=" + scratch().str() + (lane > 0 ? "/" + std::to_string(lane) : ""));
  }
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
double loop_pass(const std::string& config, int lane = 0) {
  std::ifstream in(config_path(config), std::ios::binary);
  if (!in) throw std::runtime_error(config_path(config) + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  Diagnostics diagnostics;
  ConfigNode root = load_config_document(text.str(), config_path(config), diagnostics);
  PipelinePlan plan;
  if (!diagnostics.has_errors()) {
    plan = parse_pipeline(std::move(root), overrides(config, 1, lane), Registry::builtin(),
                          diagnostics);
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

// Seconds of CPU (user + system) the whole process has used: every thread, TBB's workers too.
double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// Two loops at once, each on its own thread over the same files: what two cores give with no
// engine at all (their shared caches and memory bus included). Returns the sum of their rates.
double two_loops_pass(const std::string& config) {
  double rates[2] = {0, 0};
  std::exception_ptr errors[2];
  auto lane = [&](int i) {
    try {
      rates[i] = loop_pass(config, i + 1);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  std::thread second(lane, 1);
  lane(0);
  second.join();
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  return rates[0] + rates[1];
}

// A pass's steady-state rate and the CPU time the whole pass took (set-up included).
struct Pass {
  double images_per_second = 0;
  double cpu_seconds = 0;
};

Pass measured(const std::function<double()>& pass) {
  const double cpu0 = process_cpu_seconds();
  Pass p;
  p.images_per_second = pass();
  p.cpu_seconds = process_cpu_seconds() - cpu0;
  return p;
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
  // The four passes, summed over the repetitions (the two loops' CPU time counts per file, as
  // the others': each of them reads every file).
  enum Kind { kLoop, kPipeline1, kPipeline2, kTwoLoops, kKinds };
  const std::array<std::function<double()>, kKinds> passes = {
      [&] { return loop_pass(config); }, [&] { return pipeline_pass(config, 1); },
      [&] { return pipeline_pass(config, 2); }, [&] { return two_loops_pass(config); }};
  std::array<Pass, kKinds> total{};
  try {
    loop_pass(config);    // reads every file into the page cache, warms the buffers
    static int turn = 0;  // repetitions are separate calls with one iteration each
    for (auto _ : state) {
      // Each repetition starts with the next of the four, so that none always runs first (or
      // always right after another) on a machine whose speed drifts.
      for (int k = 0; k < kKinds; ++k) {
        const int kind = (turn + k) % kKinds;
        const Pass p = measured(passes[kind]);
        total[kind].images_per_second += p.images_per_second;
        total[kind].cpu_seconds += kind == kTwoLoops ? p.cpu_seconds / 2 : p.cpu_seconds;
      }
      ++turn;
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const auto runs = static_cast<double>(state.iterations());
  const double loop = total[kLoop].images_per_second / runs;
  const double one = total[kPipeline1].images_per_second / runs;
  const double two = total[kPipeline2].images_per_second / runs;
  const double loops = total[kTwoLoops].images_per_second / runs;
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  state.counters["loop_images_per_second"] = loop;
  state.counters["two_loops_images_per_second"] = loops;
  state.counters["pipeline_1t_images_per_second"] = one;
  state.counters["pipeline_2t_images_per_second"] = two;
  state.counters["pipeline_1t_over_loop"] = ratio(one, loop);
  state.counters["pipeline_2t_over_2x_loop"] = ratio(two, 2 * loop);
  // Against what two cores deliver without an engine (two loops side by side): 2 x loop assumes
  // that a second busy core leaves the first one's speed alone.
  state.counters["two_loops_over_2x_loop"] = ratio(loops, 2 * loop);
  state.counters["pipeline_2t_over_two_loops"] = ratio(two, loops);
  // CPU per pass against the loop's (the same files each time): above 1 is work the pipeline
  // adds; a rate gap with a CPU ratio near 1 is time the threads spend idle.
  const double loop_cpu = total[kLoop].cpu_seconds;
  state.counters["pipeline_1t_cpu_over_loop"] = ratio(total[kPipeline1].cpu_seconds, loop_cpu);
  state.counters["pipeline_2t_cpu_over_loop"] = ratio(total[kPipeline2].cpu_seconds, loop_cpu);
  state.counters["two_loops_cpu_over_loop"] = ratio(total[kTwoLoops].cpu_seconds, loop_cpu);
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
