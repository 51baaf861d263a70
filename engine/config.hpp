// Loading a pipeline configuration: the `pipeline:` section and the `stages:` list.
//
// Contract: parse_pipeline() validates the whole document in one pass, reporting every problem it
// can find to Diagnostics (with file:line:col), constructs the stages, and never throws for bad
// input. The result is used by one thread (the pipeline being built).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config_node.hpp"
#include "engine/registry.hpp"

namespace millrace {

enum class OnError { kSkip, kFail };

struct StagePlan {
  std::string name;
  std::string type;
  Location where;
  const StageFactory* factory = nullptr;
  int concurrency = 1;
  bool concurrency_auto = false;  // `concurrency: auto`: starts at pipeline.threads, then balanced
  int queue = 8;                  // capacity of the edge into this stage
  bool queue_set = false;  // `queue` was given for this stage (not inherited from the pipeline)
  OnError on_error = OnError::kSkip;
  std::unique_ptr<Stage> stage;
};

struct PipelinePlan {
  std::string name = "pipeline";
  std::string file;
  int threads = 0;  // 0: all cores
  int queue = 8;
  int prefetch = 2;  // batches handed to the consumer ahead of it
  bool ordered = true;
  std::uint64_t seed = 0;
  // pipeline.max_errors: at most this many skipped samples (count), or this fraction of the
  // samples read (fraction >= 0); negative values mean no limit.
  std::int64_t max_error_count = -1;
  double max_error_fraction = -1;
  std::string trace;          // a Chrome trace of the run is written here (empty: no trace)
  int trace_events = 100000;  // events kept per thread in the trace: the latest ones
  // A hash of the configuration after overrides without the keys that leave the delivered
  // stream unchanged (StreamIdentity::config).
  std::uint64_t config_digest = 0;
  std::vector<StagePlan> stages;
};

// Keys of the `pipeline:` section, with their documentation (for `millrace stages`).
std::vector<ParamDoc> pipeline_key_docs();
// Keys every stage has, handled by the engine.
std::vector<ParamDoc> common_stage_key_docs();

// `rank` and `world` place this process in a multi-process run (see millrace/distributed.hpp).
PipelinePlan parse_pipeline(ConfigNode root, const std::vector<std::string>& overrides,
                            const Registry& registry, Diagnostics& diagnostics, int rank = 0,
                            int world = 1);

}  // namespace millrace
