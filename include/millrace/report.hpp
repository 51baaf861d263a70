// Reports and tooling shared by the CLI and embedders: validation without running, the stage
// reference, run summaries as text or JSON, and a repeatable benchmark loop.
//
// Contract: plain functions; each is safe to call from any thread. None of them starts a pipeline
// except bench(), which runs the given config to completion, `repeats + warmup` times, on the
// calling thread plus the pipeline's own workers.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "millrace/errors.hpp"
#include "millrace/stats.hpp"

namespace millrace {

// Every problem in a config file (errors and warnings), without touching the dataset.
std::vector<Diagnostic> validate_file(const std::string& path,
                                      const std::vector<std::string>& overrides = {});
// The same for a config given as YAML text; `source_name` stands for the file in diagnostics.
// Relative paths resolve as in Pipeline::from_file and Pipeline::from_string.
std::vector<Diagnostic> validate_string(std::string_view yaml, const std::string& source_name,
                                        const std::vector<std::string>& overrides = {});

// Every stage type with its keys, types, defaults and docs; Markdown when `markdown`.
std::string stage_reference(bool markdown);

// The end-of-run summary for a terminal.
std::string format_summary(const std::string& name, const RunStats& stats);

// Which stage limits a run's throughput and what to change, derived from the per-stage figures
// alone: each stage's busy time against its concurrency, the time it waited for input or was
// blocked on output, its queue occupancy, and how busy the pipeline's threads were overall.
struct Bottleneck {
  std::string stage;  // the limiting stage's name; "consumer" when the batches' taker limits it;
                      // empty when no stage is saturated
  std::vector<std::string> changes;  // what to change, most promising first (config keys)
  std::string report;                // one paragraph: the evidence and the changes
};
Bottleneck find_bottleneck(const RunStats& stats);
// The same as JSON: images, batches, seconds, images_per_second, startup_seconds, skipped
// ([{path, id, stage, error}]), stages ([...]) and more.
std::string summary_json(const std::string& name, const RunStats& stats);

struct BenchResult {
  std::vector<double> images_per_second;  // one per measured run
  double median_images_per_second = 0;
  std::vector<double> batch_latency_ms;  // per-batch gaps at the consumer, all measured runs
  RunStats last;                         // statistics of the last measured run
};
// The q-quantile (0..1) of `values` by nearest rank; 0 for no values.
double percentile(std::vector<double> values, double q);
// Runs the pipeline `warmup` times unmeasured, then `repeats` times measured; with `trace`, the
// last measured run writes its Chrome trace there.
BenchResult bench(const std::string& config_path, const std::vector<std::string>& overrides,
                  int repeats, int warmup, const std::string& trace = "");
std::string bench_json(const std::string& name, const BenchResult& result);

}  // namespace millrace
