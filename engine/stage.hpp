// The stage interface: what a stage author implements. Stage authors never see TBB.
//
// Contract:
// - One base class per node shape: SourceStage (next, serial), TransformStage (process, may run
//   concurrently on different samples when the stage declares it), BatchStage (push/finish_epoch,
//   serial) and SinkStage (consume, serial). The engine guarantees the calls of a serial stage
//   never overlap; a concurrent stage's process() must only touch the sample it is given and its
//   own immutable state (or thread-safe members it manages itself).
// - A per-sample data problem (unreadable file, corrupt image, impossible crop) is reported by
//   throwing SampleError: the engine applies the stage's on_error policy (skip: the sample travels
//   on as a tombstone and is listed; fail: the run stops, naming it). Any other exception is a
//   stage failure that cancels the run.
// - No stage method may block on another stage, sleep or spin: they run on TBB worker threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/config_node.hpp"
#include "engine/item.hpp"
#include "engine/stream.hpp"
#include "millrace/stats.hpp"

namespace millrace {

class SampleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class StageShape { kSource, kTransform, kBatch, kBatchTransform, kSink };
std::string_view shape_name(StageShape);

// What the engine knows about a configured stage instance, handed to its constructor.
struct StageContext {
  std::string name;  // unique in the pipeline; defaults to the type
  std::string type;
  Location where;               // the stage's mapping in the config
  std::uint64_t seed = 0;       // pipeline.seed, for stages that draw random numbers
  std::uint64_t stage_key = 0;  // stable hash of `name`: separates the random streams of stages
  int pipeline_threads = 1;
  // The process's place in a multi-process run (MPI); a single process is rank 0 of 1. Sources
  // shard by it unless configured otherwise; file sinks write under `rank<k>/` when world > 1.
  int rank = 0;
  int world = 1;
  // What the stage's type declares about the content of its samples (StageInfo::content), which
  // link_stream carries along the stream description.
  ContentStep content;
};

// Lets a stage report things that are not errors while it runs. Thread-safe.
class RunReporter {
 public:
  virtual void warn(const Sample& sample, const std::string& stage, const std::string& message) = 0;

 protected:
  ~RunReporter() = default;
};

class Stage {
 public:
  explicit Stage(StageContext context) : context_(std::move(context)) {}
  virtual ~Stage() = default;
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;

  const StageContext& context() const { return context_; }
  const std::string& name() const { return context_.name; }

  // The back-to-front pass of link_stream (engine/stream.hpp), once, after every stage is
  // constructed: `output` is what the stages after this one want from its output edge; returns
  // what this stage wants from its input edge. A stage settles choices left to it here (a layout
  // of `auto`). By default the wants pass through, less the window request, which is only ever
  // meant for the stage right before its reader.
  virtual StreamWants want_input(const StreamWants& output) {
    StreamWants wants = output;
    wants.window_reader = nullptr;
    return wants;
  }
  // The front-to-back pass: `input` describes what arrives on this stage's input edge (empty for
  // a source); returns the description of what it gives. Rules that span stages (a model's input
  // shape against the crop size, its mean against the loader's) are reported here as config
  // errors at this stage's place. No I/O beyond reading configs. By default the stream passes
  // through unchanged.
  virtual StreamDesc link(const StreamDesc& input, Diagnostics& diagnostics) {
    (void)diagnostics;
    return input;
  }
  // Called once, after every stage is constructed and before any item flows, on the thread that
  // builds the pipeline. Slow start-up work (scanning a folder, loading a model) belongs here.
  virtual void prepare() {}
  // Called once when the run starts, before the first item, on the engine's thread. Side effects
  // that only a run may have (creating output folders, truncating files) belong here, not in
  // prepare(): building a pipeline to validate or draw it must leave the disk alone.
  virtual void open() {}
  // Called once after the last item, on the engine's thread; sinks flush files here.
  virtual void finish() {}
  // Settings this stage leaves off that would make each item cheaper (the bottleneck report
  // offers them when the stage limits throughput); none by default.
  virtual std::vector<CheaperSetting> cheaper_settings() const { return {}; }

 private:
  StageContext context_;
};

enum class SourceStatus { kSample, kEpochEnd, kEnd };

class SourceStage : public Stage {
 public:
  using Stage::Stage;
  // Fills the metadata of the next sample (id, path, labels, epoch), cheaply: heavy per-sample
  // work belongs in load(), which runs concurrently. Returns kEpochEnd after the last sample of
  // each epoch and kEnd after the last epoch (kEnd then forever).
  virtual SourceStatus next(Sample& sample) = 0;
  // Concurrent per-sample work (reading the bytes). May throw SampleError. Default: nothing.
  virtual void load(Sample& sample) const { (void)sample; }
  virtual bool has_load() const { return false; }
  // Samples per epoch and epochs, when known (for progress, ETA and max_errors fractions).
  virtual std::optional<std::uint64_t> total_samples() const { return std::nullopt; }
  // The part of the dataset this source reads: {part_index, num_parts}.
  virtual std::pair<int, int> part() const { return {0, 1}; }
  // Samples in one epoch, when known before the run.
  virtual std::optional<std::uint64_t> samples_per_epoch() const { return std::nullopt; }
  // Called before the run, at most once: read `count` epochs (0: up to the configured last one)
  // starting with `first`, each exactly as it would be in a run from epoch 0. A source whose
  // epochs cannot be entered directly returns false (the default), and the pipeline reports it.
  virtual bool set_epochs(std::uint32_t first, std::uint32_t count) {
    (void)first;
    (void)count;
    return false;
  }
  // What identifies the source's data and how it deals an epoch to the parts (StreamIdentity's
  // dataset, dataset_samples and global). Default: nothing known, no global order.
  struct Split {
    std::uint64_t dataset = 0;
    std::uint64_t dataset_samples = 0;
    bool global = false;
  };
  virtual Split split() const { return {}; }
  // Called before the run, at most once, after set_epochs(): the first epoch read begins after
  // `start` positions of its global order (Pipeline::start_at's `global_start`). A source without
  // a global order accepts only 0.
  virtual bool set_global_start(std::uint64_t start) { return start == 0; }
};

// The epochs [first, end) that SourceStage::set_epochs(first, count) asks a source for, `count` 0
// meaning up to its `configured` number; empty when `first` is past what an int counts.
inline std::optional<std::pair<int, int>> epoch_range(std::uint32_t first, std::uint32_t count,
                                                      int configured) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<int>::max());
  if (first >= kMax) return std::nullopt;
  const auto begin = static_cast<int>(first);
  const int end = count == 0 ? std::max(configured, begin)
                             : static_cast<int>(std::min(std::uint64_t{first} + count, kMax));
  return std::make_pair(begin, end);
}

class TransformStage : public Stage {
 public:
  using Stage::Stage;
  virtual void process(Sample& sample, RunReporter& reporter) const = 0;
};

// Receives the usable samples (tombstones are counted by the engine, not pushed) and emits
// batches.
class BatchEmitter {
 public:
  virtual BatchData& acquire() = 0;            // a recycled, reset batch buffer
  virtual void emit(BatchData& batch) = 0;     // hands it downstream (at most one per call)
  virtual void discard(BatchData& batch) = 0;  // returns an acquired buffer unused

 protected:
  ~BatchEmitter() = default;
};

class BatchStage : public Stage {
 public:
  using Stage::Stage;
  // Takes one sample. Emits at most one batch per call.
  virtual void push(const Sample& sample, BatchEmitter& out) = 0;
  // Every sample of `epoch` has been pushed: emit what remains (at most one batch).
  virtual void finish_epoch(std::uint32_t epoch, BatchEmitter& out) = 0;
  // Whether the stage needs an epoch's first samples again to finish it (padding from them): a
  // run resumed mid-epoch then sends them once more, marked Sample::pad_only.
  virtual bool pads_from_epoch_start() const { return false; }
  // The fewest samples still to come in an epoch from which it can make another batch.
  virtual std::uint64_t samples_for_another_batch() const { return 1; }
  // The rows of a full batch (0: not fixed).
  virtual int batch_size() const { return 0; }
  // Batches made from an epoch of `samples` usable samples.
  virtual std::optional<std::uint64_t> batches_for(std::uint64_t samples) const {
    (void)samples;
    return std::nullopt;
  }
};

// Works on whole batches on a thread of its own (one per stage, created by the engine), for
// long-running work that must not occupy a TBB worker and that keeps per-thread state, such as a
// neural network whose OpenMP team belongs to the calling thread. TBB hands batches over through an
// async_node; nothing blocks a worker. Every method below runs on that one thread.
class BatchTransformStage : public Stage {
 public:
  using Stage::Stage;
  // First call on the stage's thread, before any batch.
  virtual void thread_start() {}
  // Transforms a batch and emits it (the same buffer). It may instead keep it (emit nothing) and
  // emit it with a later call, as long as it keeps at most max_held() batches: a calibrating
  // network holds its first batches until it can run them.
  virtual void process(BatchData& batch, BatchEmitter& out) = 0;
  // The end of the stream: emit every batch still held.
  virtual void flush(BatchEmitter& out) { (void)out; }
  virtual int max_held() const { return 0; }
  // Named figures for the run summary (e.g. accuracy); called from any thread.
  virtual std::vector<std::pair<std::string, double>> metrics() const { return {}; }
};

class SinkStage : public Stage {
 public:
  using Stage::Stage;
  // Sees every batch in stream order (ordered mode) and passes it on unchanged.
  virtual void consume(const BatchData& batch) = 0;
};

}  // namespace millrace
