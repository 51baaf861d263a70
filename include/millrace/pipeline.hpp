// Building and running a millrace pipeline from C++.
//
// Contract:
// - A Pipeline is built from a YAML file, a YAML string or a PipelineBuilder. Building validates
//   the whole configuration and throws ConfigError (all problems at once) before any thread runs.
// - A Pipeline runs once. start() launches it on its own worker threads and returns at once;
//   next() starts it if needed and blocks the calling thread until a batch is ready, returning an
//   empty optional at the end of the stream. Call next() from one thread at a time. run() is the
//   callback form of the same loop, on the calling thread.
// - A run that fails (a stage error, too many skipped samples) makes next() throw RunError once
//   the batches before the failure have been delivered.
// - cancel() and stats() may be called from any thread at any time. After cancel(), next()
//   returns an empty optional promptly. The destructor cancels a run still going and waits for
//   its threads.
// - Batches are views on pooled buffers: see batch.hpp. They must not outlive the Pipeline.
// - stats() says where each stage's time goes (see stats.hpp). With the pipeline key `trace`
//   (`PipelineBuilder::set("trace", "\"run.json\"")`, or the override `pipeline.trace=FILE`) the
//   run writes a Chrome trace event file when it ends, before next() returns its end; a file that
//   cannot be written is a ConfigError when the Pipeline is built.
// - start_at() chooses, before the run starts, the epoch it begins with, how many epochs it reads
//   and how far into the first one it resumes; wait_for() lets a consumer that must stay
//   responsive (an interpreter checking for Ctrl-C) wait for the next batch in slices.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "millrace/batch.hpp"
#include "millrace/errors.hpp"
#include "millrace/stats.hpp"

namespace millrace {

// What identifies a pipeline's stream and how its source deals each epoch to the processes of a
// run: what a consumer checks a saved position against before resuming from it.
struct StreamIdentity {
  std::uint64_t seed = 0;     // pipeline.seed
  std::uint64_t config = 0;   // a hash of the configuration after overrides, leaving out the keys
                              // that do not change what is delivered (threads, queues, prefetch,
                              // trace, name, parts)
  int batch_size = 0;         // the batch stage's size (0: none known)
  std::uint64_t dataset = 0;  // a hash of the source's entries (ids, paths below the root, labels)
  std::uint64_t dataset_samples = 0;  // samples in one epoch of the whole data set (0: unknown)
  int part_index = 0;                 // this process's part of each epoch
  int num_parts = 1;
  // The source deals one order over the whole data set to the parts in turn (part k takes the
  // epoch's positions k, k + num_parts, ...; every part the same count), so a run may resume an
  // epoch with another number of parts (start_at's `global_start`). False: each part is a
  // contiguous slice of the data set (MXNet's split), or the source has no global order.
  bool global = false;
};

class Pipeline {
 public:
  // `overrides` are `key=value` strings, as the CLI's --set: `pipeline.threads=1`,
  // `batch.size=32` (a stage is addressed by its name, which defaults to its type, or as
  // `stages.NAME` / `stages.INDEX`), nested keys by their path (`infer.calibration.mode=entropy`),
  // list elements by index or name (`normalize.mean.0=124`). They are checked like the file; a
  // wrong one is a ConfigError located at `--set <override>`.
  // A relative path (a dataset root, a model, an output) written in the file at `path` is
  // relative to that file's folder; one in `yaml` given to from_string, or in an override, is
  // relative to the current directory (`source_name` only names the text in messages).
  static Pipeline from_file(const std::string& path,
                            const std::vector<std::string>& overrides = {});
  static Pipeline from_string(std::string_view yaml, const std::string& source_name = "<string>",
                              const std::vector<std::string>& overrides = {});

  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;
  ~Pipeline();

  // Before the run starts (std::logic_error after): the run reads `epochs` epochs (0: up to the
  // source's configured `epochs`) starting with `from.epoch`, resuming after `from.samples` samples
  // of it, which are not loaded or decoded (with `last: pad`, the first `from.first_batch_samples`
  // are, once, to pad the epoch's last batch). Batches then carry positions within their epoch
  // continuing from `from`. Resuming mid-epoch needs ordered mode; a source that cannot start at
  // another epoch is a ConfigError naming it.
  // `global_start` (a source whose identity() is `global`): the first epoch begins after that many
  // positions of its global order, those every part of a run (of any size) had taken together;
  // this part then takes positions global_start + part_index + k * num_parts, and `from.samples`
  // counts its own positions from there. Another source refuses a non-zero one (ConfigError).
  void start_at(const StreamPosition& from, std::uint32_t epochs = 0,
                std::uint64_t global_start = 0);
  void start();
  std::optional<Batch> next();
  // Starts the run if needed and blocks until next() would return without waiting (a batch, the
  // end or a failure is ready) or `timeout` passes; true when ready.
  bool wait_for(std::chrono::nanoseconds timeout);
  // Calls on_batch for every batch on the calling thread; returns the final statistics.
  RunStats run(const std::function<void(const Batch&)>& on_batch);
  void cancel();
  RunStats stats() const;

  const std::string& name() const;
  // Batches in one epoch when the source knows its size (an indexed or listed dataset) and no
  // sample is skipped; empty otherwise.
  std::optional<std::uint64_t> batches_per_epoch() const;
  // pipeline.prefetch: the batches a consumer may hold at once before the run stalls.
  int prefetch() const;
  StreamIdentity identity() const;
  // The lowered flow graph, as Graphviz DOT.
  std::string graph_dot() const;
  // Non-fatal configuration remarks (e.g. an int8 mean of 0).
  const std::vector<Diagnostic>& warnings() const;

  class Impl;

 private:
  friend struct PipelineAccess;  // engine internals: custom registries, white-box tests
  explicit Pipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Programmatic construction: each value is written as YAML flow text ("224", "[224, 224]",
// "center"), so a built pipeline is validated exactly as a YAML file is.
class PipelineBuilder {
 public:
  explicit PipelineBuilder(std::string name = "pipeline");
  PipelineBuilder& set(const std::string& pipeline_key, const std::string& value);
  PipelineBuilder& stage(const std::string& type,
                         const std::vector<std::pair<std::string, std::string>>& params = {});
  std::string yaml() const;
  Pipeline build() const;

 private:
  std::string name_;
  std::vector<std::pair<std::string, std::string>> pipeline_;
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> stages_;
};

}  // namespace millrace
