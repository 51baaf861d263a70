// Statistics of a pipeline run.
//
// Contract: RunStats is a plain value, a snapshot; Pipeline::stats() may be called from any thread
// while the pipeline runs, and again after it ends for the final figures.
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

struct StageStats {
  std::string name;
  std::string type;
  int concurrency = 1;
  std::uint64_t items = 0;   // invocations, markers excluded
  double busy_seconds = 0;   // summed over threads
  double busy_share = 0;     // busy_seconds / (elapsed * pipeline threads)
  int queue_capacity = 0;    // of the stage's input edge
  int queue_peak = 0;        // the most items ever in that edge
  double queue_mean = 0;     // mean occupancy, sampled when an item enters
  std::uint64_t errors = 0;  // per-sample errors raised by the stage
};

struct RunStats {
  std::uint64_t images = 0;  // samples delivered in batches, pad rows excluded
  std::uint64_t batches = 0;
  std::uint64_t samples_read = 0;                 // samples the source produced
  std::optional<std::uint64_t> expected_samples;  // known when the source knows its size
  double seconds = 0;                             // from start to now (or to the end)
  double startup_seconds = 0;          // building, scanning, loading: before the first item flows
  double images_per_second = 0;        // steady state: after the first batch, to the last
  std::vector<SkippedSample> skipped;  // all skipped samples, in the order they were skipped
  std::vector<std::string> warnings;   // decoder warnings and the like, with their samples
  std::vector<StageStats> stages;
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
