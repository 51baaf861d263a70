// Statistics of a pipeline run.
//
// Contract: RunStats is a plain value, a snapshot; Pipeline::stats() may be called from any thread
// while the pipeline runs, and again after it ends for the final figures.
//
// Where a stage's time goes: each of its `concurrency` slots is, at every moment of the run, busy
// (running the stage), waiting for input (no item on its input edge), blocked on output (an item,
// but no free token of its output edge: the stage after it is behind) or waiting for a worker (it
// could start, but every TBB worker is busy elsewhere; for the ordered batch stage, also: the next
// item in source order has not arrived). The four add up to concurrency x run_wall_seconds.
// docs/ARCHITECTURE.md has the exact definitions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace millrace {

struct SkippedSample {
  std::string path;
  std::uint64_t id = 0;
  std::string stage;
  std::string error;
};

// A setting a stage does not use that would make each of its items cheaper, for the bottleneck
// report: `change` is the key and value (or, with no one value to name, the key and a direction),
// `effect` what it does.
struct CheaperSetting {
  std::string change;  // e.g. "reduce: auto", "resize (smaller)"
  std::string effect;  // e.g. "decodes only the crop window, at a reduced DCT scale"
};

struct StageStats {
  std::string name;
  std::string type;
  int concurrency = 1;
  std::uint64_t items = 0;   // invocations, markers excluded
  double busy_seconds = 0;   // summed over threads
  double busy_share = 0;     // busy_seconds / (elapsed * pipeline threads)
  int queue = 0;             // its `queue` setting: items that may wait in its input edge
  int queue_capacity = 0;    // of that edge: `queue` plus one per slot of the stage before it
  int queue_peak = 0;        // the most items ever in that edge
  double queue_mean = 0;     // mean items in that edge over the run (time-weighted)
  std::uint64_t errors = 0;  // per-sample errors raised by the stage
  // Idle slot time, in slot-seconds (summed over the stage's slots), by cause (see above).
  double wait_input_seconds = 0;
  double blocked_output_seconds = 0;  // the source: its next item waited for a token
  double wait_worker_seconds = 0;
  bool concurrency_auto = false;        // `concurrency: auto`: `concurrency` is what it chose
  std::vector<CheaperSetting> cheaper;  // what the report may suggest when the stage limits
};

struct TraceInfo {
  std::string path;  // empty: no trace
  int events_per_thread = 0;
  std::uint64_t events = 0;   // events in the file
  std::uint64_t dropped = 0;  // older events that the per-thread bound left out
  bool written = false;       // the file is complete (at the end of the run)
};

struct RunStats {
  std::uint64_t images = 0;  // samples delivered in batches to the consumer, pad rows excluded
  std::uint64_t batches = 0;
  // What the pipeline's last sink consumed (written to disk, for `npy`), pad rows excluded; 0
  // without a sink. A run stopped early (a signal, a failure, a consumer that stops reading)
  // drops the batches between the sink and the consumer, so these can exceed the two above.
  bool has_sink = false;
  std::uint64_t sink_images = 0;
  std::uint64_t sink_batches = 0;
  std::uint64_t samples_read = 0;                 // samples the source produced
  std::optional<std::uint64_t> expected_samples;  // known when the source knows its size
  double seconds = 0;                             // from start to now (or to the end)
  double startup_seconds = 0;          // building, scanning, loading: before the first item flows
  double images_per_second = 0;        // steady state: after the first batch, to the last
  std::vector<SkippedSample> skipped;  // all skipped samples, in the order they were skipped
  std::vector<std::string> warnings;   // decoder warnings and the like, with their samples
  std::vector<StageStats> stages;
  double run_wall_seconds = 0;       // the graph's running time, which the stage figures cover
  double consumer_wait_seconds = 0;  // finished batches waited for the consumer (prefetch full)
  std::string concurrency_note;      // what `concurrency: auto` chose and from which costs
  TraceInfo trace;
  // Named figures that stages report (e.g. "infer.top1_accuracy"), in stage order.
  std::vector<std::pair<std::string, double>> metrics;
  int threads = 0;
  int rank = 0;        // this process's MPI rank (0 without MPI)
  int part_index = 0;  // the dataset part the source read
  int num_parts = 1;
  bool finished = false;
  bool cancelled = false;
  std::string error;  // non-empty when the run failed
};

}  // namespace millrace
