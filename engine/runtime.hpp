// Pipeline::Impl: lowers a validated PipelinePlan to a oneTBB flow graph and runs it.
//
// Contract (see include/millrace/pipeline.hpp for the public side):
// - Every edge between two steps is bounded by tokens: a step may start an item only while it
//   holds a token of its output edge, taken through a reserving join_node from a buffer_node that
//   starts with `capacity` tokens; the next step gives the token back when it starts the item.
//   So the items on an edge (queued, or being produced into it) never exceed its capacity, and
//   total memory is bounded by the sum of the capacities whatever the dataset size. No body ever
//   waits for a token: TBB only starts a body when its token is there.
// - Ordered mode puts a sequencer_node in front of the batch stage and bounds the items between
//   the source and it by that edge's capacity (a window), so the sequencer always has room for
//   the item it waits for and cannot deadlock.
// - Markers (end of epoch, end of stream) travel like items, so every stage sees them in order.
// - Finished batches cross to the consumer through a Boost.Lockfree SPSC queue of capacity
//   `prefetch`, guarded by prefetch tokens that the consumer returns when it releases a batch.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/config.hpp"
#include "engine/pool.hpp"
#include "millrace/pipeline.hpp"

namespace millrace {

struct Msg {
  enum class Kind : std::uint8_t { kSample, kBatch, kEpochEnd, kEnd };
  Kind kind = Kind::kSample;
  bool holds_token = true;  // false only for an extra message a step emitted beyond its token
  std::uint64_t seq = 0;
  std::uint32_t epoch = 0;
  std::uint64_t count = 0;  // kEpochEnd: samples in the epoch; kEnd: messages the source sent
  Sample* sample = nullptr;
  BatchData* batch = nullptr;
};

// Counters of one step, padded to a cache line so that workers never share one.
struct alignas(64) StepCounters {
  std::atomic<std::uint64_t> items{0};
  std::atomic<std::uint64_t> busy_ns{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::int64_t> occupancy{0};  // items on the edge into this step
  std::atomic<std::int64_t> occupancy_peak{0};
  std::atomic<std::uint64_t> occupancy_sum{0};
  std::atomic<std::uint64_t> occupancy_samples{0};
};

class FlowGraph;  // the TBB objects, kept out of this header

class Pipeline::Impl final : public detail::BatchOwner, public RunReporter {
 public:
  Impl(PipelinePlan plan, std::vector<Diagnostic> warnings,
       std::chrono::steady_clock::time_point created);
  ~Impl();

  void start();
  std::optional<Batch> next();
  void cancel();
  RunStats stats() const;
  std::string graph_dot() const;
  const PipelinePlan& plan() const { return plan_; }
  const std::vector<Diagnostic>& warnings() const { return warnings_; }

  // BatchOwner: the consumer released a batch.
  void release(BatchData* batch) override;
  // RunReporter.
  void warn(const Sample& sample, const std::string& stage, const std::string& message) override;

  // Used by the graph's bodies (engine/runtime.cpp).
  void record_skip(const Sample& sample, const std::string& stage, const std::string& error);
  void fail(const std::string& message);
  bool stopping() const { return stopping_.load(std::memory_order_relaxed); }
  void deliver(const Msg& msg);
  void note_first_item();

  // Exposed for tests: the high-water marks of the pools.
  std::size_t samples_created() const;
  std::size_t samples_limit() const;
  std::vector<std::int64_t> edge_peaks() const;
  std::vector<int> edge_capacities() const;

 private:
  friend class FlowGraph;
  void run_graph();
  RunStats build_stats(bool final) const;

  PipelinePlan plan_;
  std::vector<Diagnostic> warnings_;
  std::chrono::steady_clock::time_point created_;
  std::unique_ptr<FlowGraph> flow_;
  std::thread runner_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> wait_released_{false};
  std::atomic<bool> done_{false};   // the graph has stopped (end, failure or cancel)
  std::atomic<bool> ended_{false};  // the end of stream reached the consumer's queue
  std::atomic<bool> cancelled_{false};
  std::atomic<std::uint64_t> signal_{0};  // bumped on every hand-off to the consumer

  mutable std::mutex report_mutex_;  // guards the lists below: only errors and warnings take it
  std::string error_;
  std::vector<SkippedSample> skipped_;
  std::vector<std::string> warning_list_;
  std::uint64_t warnings_dropped_ = 0;

  std::atomic<std::uint64_t> samples_read_{0};
  std::atomic<std::uint64_t> skipped_count_{0};
  std::optional<std::uint64_t> expected_samples_;

  // Consumer side (one consumer thread at a time).
  std::atomic<std::uint64_t> images_{0};
  std::atomic<std::uint64_t> batches_{0};
  std::atomic<std::uint64_t> images_after_first_{0};
  std::atomic<std::int64_t> first_item_ns_{-1};
  std::atomic<std::int64_t> first_batch_ns_{-1};
  std::atomic<std::int64_t> last_batch_ns_{-1};
  std::atomic<std::int64_t> end_ns_{-1};
  std::int64_t built_ns_ = 0;  // construction time (scanning, preparing), part of start-up
  std::atomic<std::int64_t> idle_ns_{
      0};  // between construction and start(): not the pipeline's time
};

}  // namespace millrace
