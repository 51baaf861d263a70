// Pipeline::Impl: lowers a validated PipelinePlan to a oneTBB flow graph (FlowGraph,
// engine/flow_graph.hpp) and runs it, handing batches to the consumer and keeping the run's
// report (failures, skipped samples, warnings, statistics).
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

#include <algorithm>
#include <atomic>
#include <boost/lockfree/spsc_queue.hpp>
#include <chrono>
#include <condition_variable>
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

// Figures of one step written by one thread: a step has one slot per arena slot of the pipeline's
// task_arena (plus one per stage thread), each on its own cache line, so that workers never write
// a shared line per item. Each slot has a single writer, which adds with a relaxed load and store
// (no read-modify-write); stats() sums the slots.
struct alignas(64) SlotCounters {
  std::atomic<std::uint64_t> items{0};
  std::atomic<std::uint64_t> busy_ns{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::int64_t> out_peak{0};  // the most items this thread saw on the output edge

  static void add(std::atomic<std::uint64_t>& counter, std::uint64_t value) {
    counter.store(counter.load(std::memory_order_relaxed) + value, std::memory_order_relaxed);
  }
  void raise_peak(std::int64_t value) {
    if (value > out_peak.load(std::memory_order_relaxed)) {
      out_peak.store(value, std::memory_order_relaxed);
    }
  }
};

// The scheduling state of one step, as three counts packed in one word so that a transition is
// one compare-and-swap: items queued on its input edge (not started), free tokens of its output
// edge, and free concurrency slots. Every transition that changes how the free slots divide
// between the causes below adds (rate before - rate after) * now to that cause's integral, so
// that integral + rate now * now is the time integral of the rate: no lock, and no shared write
// when nothing changes. With f free slots, q queued items and t free output tokens:
//   waiting for input  max(0, f - q)            slots that have no item to start
//   blocked on output  min(q, f) - min(q, f, t) slots that have an item but no output token
//   waiting for worker min(q, f, t)             startable, but no TBB worker has taken it yet
// The integral of (output capacity - t) is the occupancy of the output edge over time.
// Counts move before the TBB operation that makes them true when they grow and after it when
// they shrink, so they never fall below the real ones.
struct alignas(64) StepState {
  static constexpr int kBits = 21;
  static constexpr std::uint64_t kMask = (std::uint64_t{1} << kBits) - 1;
  struct Counts {
    std::int64_t queued = 0;
    std::int64_t tokens = 0;
    std::int64_t slots = 0;
  };
  struct Rates {
    std::int64_t wait_input = 0;
    std::int64_t blocked = 0;
    std::int64_t wait_worker = 0;
    std::int64_t occupancy = 0;
  };

  static std::uint64_t pack(const Counts& c) {
    return static_cast<std::uint64_t>(c.queued) | static_cast<std::uint64_t>(c.tokens) << kBits |
           static_cast<std::uint64_t>(c.slots) << (2 * kBits);
  }
  static Counts unpack(std::uint64_t w) {
    return {static_cast<std::int64_t>(w & kMask), static_cast<std::int64_t>(w >> kBits & kMask),
            static_cast<std::int64_t>(w >> (2 * kBits) & kMask)};
  }
  Rates rates(const Counts& c) const {
    const std::int64_t with_input = std::min(c.queued, c.slots);
    const std::int64_t startable = std::min(with_input, c.tokens);
    return {c.slots - with_input, with_input - startable, startable, out_capacity - c.tokens};
  }

  void init(int capacity_out, int slots) {
    out_capacity = capacity_out;
    word.store(pack({0, capacity_out, slots}), std::memory_order_relaxed);
  }
  // Applies the deltas at time `now_ns()`; returns the counts after the change.
  template <class Now>
  Counts change(std::int64_t d_queued, std::int64_t d_tokens, std::int64_t d_slots, Now now_ns) {
    std::uint64_t before = word.load(std::memory_order_relaxed);
    Counts a;
    Counts b;
    do {
      a = unpack(before);
      b = {std::max<std::int64_t>(0, a.queued + d_queued),
           std::clamp<std::int64_t>(a.tokens + d_tokens, 0, static_cast<std::int64_t>(kMask)),
           std::max<std::int64_t>(0, a.slots + d_slots)};
    } while (!word.compare_exchange_weak(before, pack(b), std::memory_order_relaxed));
    const Rates ra = rates(a);
    const Rates rb = rates(b);
    if (ra.wait_input != rb.wait_input || ra.blocked != rb.blocked ||
        ra.wait_worker != rb.wait_worker || ra.occupancy != rb.occupancy) {
      const std::int64_t t = now_ns();
      auto move = [t](std::atomic<std::int64_t>& integral, std::int64_t from, std::int64_t to) {
        if (from != to) integral.fetch_add((from - to) * t, std::memory_order_relaxed);
      };
      move(wait_input_ns, ra.wait_input, rb.wait_input);
      move(blocked_ns, ra.blocked, rb.blocked);
      move(wait_worker_ns, ra.wait_worker, rb.wait_worker);
      move(occupancy_ns, ra.occupancy, rb.occupancy);
    }
    return b;
  }
  // The integrals up to `now` (time since the run's origin), in item-nanoseconds.
  Rates integrals(std::int64_t now) const {
    const Rates r = rates(unpack(word.load(std::memory_order_relaxed)));
    return {wait_input_ns.load(std::memory_order_relaxed) + r.wait_input * now,
            blocked_ns.load(std::memory_order_relaxed) + r.blocked * now,
            wait_worker_ns.load(std::memory_order_relaxed) + r.wait_worker * now,
            occupancy_ns.load(std::memory_order_relaxed) + r.occupancy * now};
  }

  std::atomic<std::uint64_t> word{0};
  std::atomic<std::int64_t> wait_input_ns{0};
  std::atomic<std::int64_t> blocked_ns{0};
  std::atomic<std::int64_t> wait_worker_ns{0};
  std::atomic<std::int64_t> occupancy_ns{0};
  std::int64_t out_capacity = 0;
};

class FlowGraph;  // the TBB objects, kept out of this header

class Pipeline::Impl final : public detail::BatchOwner, public RunReporter {
 public:
  Impl(PipelinePlan plan, std::vector<Diagnostic> warnings,
       std::chrono::steady_clock::time_point created);
  ~Impl();

  void start_at(const StreamPosition& from, std::uint32_t epochs, std::uint64_t global_start);
  StreamIdentity identity() const;
  void start();
  std::optional<Batch> next();
  bool wait_for(std::chrono::nanoseconds timeout);
  void cancel();
  RunStats stats() const;
  std::optional<std::uint64_t> batches_per_epoch() const;
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
  void note_sunk(std::uint64_t rows);
  void note_sample_read() { samples_read_.fetch_add(1, std::memory_order_relaxed); }
  // What `concurrency: auto` chose, for the summary.
  void note_concurrency(const std::string& note);

  // Exposed for tests: the high-water marks of the pools.
  std::size_t samples_created() const;
  std::size_t samples_limit() const;
  std::vector<std::int64_t> edge_peaks() const;
  std::vector<int> edge_capacities() const;

 private:
  void run_graph();
  RunStats build_stats(bool final) const;
  // Tells the consumer that a batch, the end or a failure is ready for it.
  void wake_consumer();
  bool ready_for_consumer() const;
  const BatchStage* batch_stage() const;  // the pipeline's batch stage (a valid plan has one)

  PipelinePlan plan_;
  std::vector<Diagnostic> warnings_;
  std::chrono::steady_clock::time_point created_;
  // Finished batches on their way to the consumer (the end of stream is a marker address).
  // Declared before the graph, so that it outlives any task the graph is still finishing.
  boost::lockfree::spsc_queue<BatchData*> ready_;
  std::unique_ptr<FlowGraph> flow_;
  // Per stage, what it could change to cost less (Stage::cheaper_settings), read once when the
  // graph is built: a stage's settings do not change while it runs.
  std::vector<std::vector<CheaperSetting>> cheaper_;
  std::thread runner_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> wait_released_{false};
  std::atomic<bool> done_{false};   // the graph has stopped (end, failure or cancel)
  std::atomic<bool> ended_{false};  // the end of stream reached the consumer's queue
  std::atomic<bool> cancelled_{false};
  std::atomic<std::uint64_t> signal_{0};  // bumped on every hand-off to the consumer
  // For wait_for(): a consumer waiting with a timeout, and what it sleeps on.
  std::atomic<int> timed_waiters_{0};
  std::mutex wait_mutex_;
  std::condition_variable wait_cv_;

  mutable std::mutex report_mutex_;  // guards the lists below: only errors and warnings take it
  std::string error_;
  std::vector<SkippedSample> skipped_;
  std::vector<std::string> warning_list_;
  std::uint64_t warnings_dropped_ = 0;
  std::string concurrency_note_;
  TraceInfo trace_;

  std::atomic<std::uint64_t> samples_read_{0};
  std::atomic<std::uint64_t> skipped_count_{0};
  std::optional<std::uint64_t> expected_samples_;

  // Consumer side (one consumer thread at a time).
  std::atomic<std::uint64_t> images_{0};
  std::atomic<std::uint64_t> batches_{0};
  // What the last sink has consumed (RunStats::sink_images, sink_batches).
  std::atomic<std::uint64_t> sunk_images_{0};
  std::atomic<std::uint64_t> sunk_batches_{0};
  bool has_sink_ = false;
  std::atomic<std::uint64_t> images_after_first_{0};
  std::atomic<std::int64_t> first_item_ns_{-1};
  std::atomic<std::int64_t> first_batch_ns_{-1};
  std::atomic<std::int64_t> last_batch_ns_{-1};
  std::atomic<std::int64_t> stopped_ns_{-1};  // when the graph stopped, ns after construction
  std::int64_t built_ns_ = 0;  // construction time (scanning, preparing), part of start-up
  std::atomic<std::int64_t> idle_ns_{
      0};  // between construction and start(): not the pipeline's time
};

}  // namespace millrace
