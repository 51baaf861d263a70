// FlowGraph: the TBB side of a pipeline, split by job across files with this one header:
// engine/flow_build.cpp builds the graph, engine/flow_step.cpp is the executor's step (the source,
// every step's body, the run), engine/auto_concurrency.cpp balances `concurrency: auto`,
// engine/graph_dot.cpp draws the graph, engine/run_stats.cpp reads its figures; tracing is an
// observer (engine/trace.hpp). Pipeline::Impl (engine/runtime.hpp) owns it and talks to it only
// through the public methods below.
//
// Contract: see engine/runtime.hpp for the bounds and ordering the graph keeps. build() and run()
// are called once each, from the owner's threads; the figures and trace counts may be read from
// any thread while it runs (relaxed atomics), the trace written only after run() returned.
#pragma once

#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/runtime.hpp"
#include "engine/trace.hpp"

namespace millrace {

namespace flow = oneapi::tbb::flow;

struct Token {};

using Clock = std::chrono::steady_clock;

inline std::int64_t nanos_since(Clock::time_point origin) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - origin).count();
}

enum class StepKind { kLoad, kTransform, kBatch, kBatchTransform, kSink, kDeliver };

// Adapts a step's emit function to the BatchEmitter a batch stage sees, without type erasure
// (a std::function here would allocate per sample).
template <class Graph, class Emit>
class StepEmitter final : public BatchEmitter {
 public:
  // `number`: the batch stage numbers the batches it makes; later steps keep their numbers.
  StepEmitter(Graph& graph, Emit& emit, bool number)
      : graph_(graph), emit_(emit), number_(number) {}
  BatchData& acquire() override { return *graph_.acquire_batch(); }
  void emit(BatchData& b) override {
    if (number_) graph_.number_batch(b);
    Msg out;
    out.kind = Msg::Kind::kBatch;
    out.batch = &b;
    out.epoch = b.epoch;
    out.seq = b.index;
    emit_(out);
  }
  void discard(BatchData& b) override { graph_.release_batch(&b); }

 private:
  Graph& graph_;
  Emit& emit_;
  bool number_;
};

// The hand-off to a batch-transform stage's own thread: a queue that TBB's async_node fills
// without blocking (its length is bounded by the step's input tokens) and the thread drains.
class StageThread {
 public:
  template <class Work>
  void start(Work work) {
    thread_ = std::thread([this, work]() mutable {
      for (;;) {
        Msg m;
        {
          std::unique_lock<std::mutex> lock(mutex_);
          ready_.wait(lock, [&] { return closed_ || !items_.empty(); });
          if (items_.empty()) return;
          m = items_.front();
          items_.pop_front();
        }
        work(m);
      }
    });
  }
  void push(const Msg& m) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      items_.push_back(m);
    }
    ready_.notify_one();
  }
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
    }
    ready_.notify_one();
    if (thread_.joinable()) thread_.join();
  }
  ~StageThread() { close(); }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Msg> items_;
  bool closed_ = false;
  std::thread thread_;
};

// The TBB side of a pipeline: one step per node that does work, each fed by a bounded edge.
class FlowGraph {
 public:
  // A step starts an item when it holds the item, a token of its output edge and a slot token:
  // the slot tokens are its concurrency, which `concurrency: auto` changes while the graph runs.
  using In = std::tuple<Msg, Token, Token>;
  using Join = flow::join_node<In, flow::reserving>;
  using Body = flow::function_node<In, flow::continue_msg, flow::rejecting>;

  struct Step {
    StepKind kind = StepKind::kTransform;
    StagePlan* stage = nullptr;  // nullptr for the deliver step
    std::size_t stage_index = 0;
    std::size_t index = 0;  // in steps_
    int concurrency = 1;    // slot tokens at the start (the most it ever has)
    bool concurrency_auto = false;
    std::atomic<int> chosen{0};     // `concurrency: auto`: the balanced concurrency, 0 before
    std::atomic<int> slot_debt{0};  // slot tokens to drop as bodies finish (auto lowering it)
    int capacity = 1;               // tokens of the edge into this step
    std::size_t own_slot = 0;       // the counter slot and trace ring of the stage's own thread
    bool sequenced = false;
    bool window_end = false;            // returns the source's window tokens (the batch step)
    std::atomic<bool> finished{false};  // set by the step's last body, read after the run
    std::unique_ptr<flow::queue_node<Msg>> queue;  // a sequencer_node when sequenced
    std::unique_ptr<flow::buffer_node<Token>> tokens;
    std::unique_ptr<flow::buffer_node<Token>> slots;
    std::unique_ptr<Join> join;
    std::unique_ptr<Body> body;
    // A batch-transform step: an async_node instead of `body`, and the stage's own thread.
    std::unique_ptr<flow::async_node<In, flow::continue_msg>> async_body;
    std::unique_ptr<StageThread> thread;
    StepState state;
    std::unique_ptr<SlotCounters[]> counters;  // one per slot (see slot())
  };

  struct EpochProgress {
    std::uint64_t seen = 0;
    std::uint64_t expected = 0;
    bool marker = false;
    // Where the epoch's stream stands for the batches it makes (see StreamPosition): the
    // samples seen so far by source position, the batches made, and the end of the first one.
    std::uint64_t position = 0;
    std::uint64_t batches = 0;
    std::uint64_t first_batch_position = 0;
  };
  // Where the source starts (Pipeline::start_at): in epoch `epoch`, positions [prefix, skip) are
  // not sent and positions below `prefix` are sent marked pad_only.
  struct SourceRange {
    std::uint32_t epoch = 0;
    std::uint64_t skip = 0;
    std::uint64_t prefix = 0;
  };
  void set_range(const StreamPosition& from, bool resend_first_batch) {
    range_ = {from.epoch, from.samples, resend_first_batch ? from.first_batch_samples : 0};
    epoch_ = from.epoch;
    EpochProgress& p = epochs_[from.epoch];
    p.position = from.samples;
    p.batches = from.batches;
    p.first_batch_position = from.first_batch_samples;
  }
  // Stamps a batch the batch stage made with the stream position after it.
  void stamp_position(BatchData& b) {
    EpochProgress& p = epochs_[b.epoch];
    if (p.batches++ == 0) p.first_batch_position = p.position;
    b.position = {b.epoch, p.position, p.batches, p.first_batch_position};
    b.last_in_epoch = finishing_epoch_ || (epoch_size_ && *epoch_size_ >= p.position &&
                                           *epoch_size_ - p.position < samples_for_batch_);
  }

  // `owner` hears of failures, skips and batches; `plan` outlives the graph; `created` is the
  // clock's origin for the owner's figures.
  FlowGraph(Pipeline::Impl& owner, PipelinePlan& plan, Clock::time_point created);
  ~FlowGraph();
  FlowGraph(const FlowGraph&) = delete;
  FlowGraph& operator=(const FlowGraph&) = delete;

  void build();             // graph building (engine/flow_build.cpp)
  void run();               // runs the graph to its end (engine/flow_step.cpp)
  std::string dot() const;  // engine/graph_dot.cpp

  // Nanoseconds since the run's origin (0 before the run starts).
  std::int64_t now_ns() const {
    const std::int64_t origin = origin_ns_.load(std::memory_order_relaxed);
    return origin < 0 ? 0 : nanos_since(owner_created_) - origin;
  }
  // The end of the run, or now while it goes on (ns since the run's origin).
  std::int64_t end_or_now_ns() const {
    const std::int64_t end = run_end_ns_.load(std::memory_order_acquire);
    return end >= 0 ? end : now_ns();
  }
  // The counter slot (and trace ring) of the calling thread: its slot in the pipeline's arena, or
  // for a stage's own thread, that step's.
  std::size_t slot(const Step* own_thread_step = nullptr) const {
    if (own_thread_step != nullptr) return own_thread_step->own_slot;
    const int index = oneapi::tbb::this_task_arena::current_thread_index();
    if (index >= 0 && index < plan_.threads) return static_cast<std::size_t>(index);
    return slot_count_ - 1;
  }
  // A prefetch token back from the consumer (or for a marker that reached the end).
  void return_prefetch_token();
  // The trace observer's output (engine/trace.hpp); only when the plan asks for a trace.
  void write_trace(const std::string& path, const std::string& name) const;
  std::uint64_t trace_events() const { return trace_ ? trace_->events() : 0; }
  std::uint64_t trace_dropped() const { return trace_ ? trace_->dropped() : 0; }

  // The batch buffers: a batch stage takes them, the consumer gives them back.
  BatchData* acquire_batch() { return batches_->acquire(); }
  void release_batch(BatchData* batch) { batches_->release(batch); }
  // Numbers a batch the batch stage made and stamps its stream position (batch step only).
  void number_batch(BatchData& b) {
    b.index = next_batch_index_++;
    stamp_position(b);
  }
  std::size_t samples_created() const { return samples_->created(); }
  std::size_t samples_limit() const { return samples_->limit(); }
  bool built() const { return graph_ != nullptr; }
  // Stops the graph's tasks (a cancel or a failure); idempotent.
  void cancel() { graph_->cancel(); }
  // Lets the graph finish once nothing runs (the end reached the consumer, or a cancel).
  void release_wait() { graph_->release_wait(); }

  // What statistics read of the steps: index 0 is the source's next(), then every step in
  // order, the deliver step last. Sums over the thread slots, integrals up to `now`.
  struct StepFigures {
    const StagePlan* stage = nullptr;  // nullptr: the deliver step
    std::uint64_t items = 0;
    std::uint64_t busy_ns = 0;
    std::uint64_t errors = 0;
    std::int64_t out_peak = 0;  // the most items seen on its output edge
    StepState::Rates integrals;
    int capacity = 0;  // of its input edge (0 for the source's next)
    int concurrency = 1;
    bool concurrency_auto = false;
    int chosen = 0;  // `concurrency: auto`'s choice, 0 before it is made
  };
  std::vector<StepFigures> figures(std::int64_t now) const;  // engine/run_stats.cpp

 private:
  void trace(std::size_t slot, const TraceEvent& e) {
    if (trace_) trace_->span(slot, e.ts, e.value, e.id);
  }
  void trace_edge(std::size_t slot, std::size_t edge, std::int64_t t, std::int64_t items) {
    if (trace_) trace_->edge(slot, edge, t, items);
  }
  Msg source_next(oneapi::tbb::flow_control& control);
  // `own_thread`: called on the step's own thread (a batch transform), not by a TBB worker.
  void run_step(Step& step, Step* prev, Step* next, const Msg& msg, bool own_thread);
  void balance_concurrency();  // engine/auto_concurrency.cpp

  Pipeline::Impl& owner_;
  PipelinePlan& plan_;
  std::unique_ptr<oneapi::tbb::global_control> parallelism_;
  std::unique_ptr<oneapi::tbb::task_arena> arena_;
  std::unique_ptr<flow::graph> graph_;
  std::unique_ptr<flow::input_node<Msg>> source_;
  std::unique_ptr<flow::join_node<std::tuple<Msg, Token, Token>, flow::reserving>> source_join_;
  std::unique_ptr<
      flow::function_node<std::tuple<Msg, Token, Token>, flow::continue_msg, flow::rejecting>>
      source_forward_;
  std::unique_ptr<flow::buffer_node<Token>> window_;
  std::unique_ptr<flow::buffer_node<Token>> prefetch_tokens_;
  std::vector<std::unique_ptr<Step>> steps_;
  // The source's next() and its forward to the first edge: a step of their own, serial.
  StepState source_state_;
  std::unique_ptr<SlotCounters[]> source_counters_;
  int window_capacity_ = 0;
  std::size_t slot_count_ = 0;  // arena slots, one per stage thread, one for any other thread
  std::chrono::steady_clock::time_point owner_created_;
  std::atomic<std::int64_t> origin_ns_{-1};   // the run's origin, in ns after owner_created_
  std::atomic<std::int64_t> run_end_ns_{-1};  // the run's end, in ns after the origin

  // `concurrency: auto`: measured over the first items, then balanced once.
  std::atomic<bool> auto_pending_{false};
  std::atomic<std::uint64_t> auto_items_{0};
  std::uint64_t auto_target_ = 0;

  std::unique_ptr<ChromeTrace> trace_;  // the trace observer, when tracing

  std::unique_ptr<ObjectPool<Sample>> samples_;
  std::unique_ptr<ObjectPool<BatchData>> batches_;

  // Source state: touched only by the serial input_node body.
  std::uint64_t next_seq_ = 0;
  std::uint32_t epoch_ = 0;
  std::uint64_t epoch_samples_ = 0;   // messages sent for the epoch (its marker's count)
  std::uint64_t epoch_position_ = 0;  // samples the source gave for the epoch, sent or not
  SourceRange range_;
  bool source_ended_ = false;

  // Batch step state: touched only by the serial batch body.
  std::map<std::uint32_t, EpochProgress> epochs_;
  std::uint64_t batch_seen_ = 0;
  std::uint64_t end_total_ = 0;
  bool end_seen_ = false;
  std::uint64_t next_batch_index_ = 0;
  // For Batch::last_in_epoch: the source's epoch size when known, the fewest samples the batch
  // stage makes a batch from, and whether it is finishing an epoch.
  std::optional<std::uint64_t> epoch_size_;
  std::uint64_t samples_for_batch_ = 1;
  bool finishing_epoch_ = false;
};

}  // namespace millrace
