#include "engine/runtime.hpp"

#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/task_arena.h>

#include <boost/lockfree/spsc_queue.hpp>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/json.hpp"

namespace millrace {

namespace flow = oneapi::tbb::flow;

namespace {

struct Token {};

using Clock = std::chrono::steady_clock;

std::int64_t nanos_since(Clock::time_point origin) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - origin).count();
}

// One event of the trace: a span (a stage invocation) or a counter sample (an edge's occupancy).
struct TraceEvent {
  std::int64_t ts = 0;     // ns since the run's origin
  std::int64_t value = 0;  // span: duration in ns; counter: items on the edge
  std::uint32_t id = 0;    // span: the step (0 = the source's next); counter: the edge
  bool counter = false;
};

// The trace events of one thread: preallocated, overwritten oldest first, so a long run keeps
// each thread's latest events. One writer (the thread in that arena slot); read after the run.
class alignas(64) TraceRing {
 public:
  void reserve(std::size_t capacity) {
    events_ = std::make_unique<TraceEvent[]>(capacity);
    capacity_ = capacity;
  }
  void add(const TraceEvent& e) {
    const std::uint64_t n = written_.load(std::memory_order_relaxed);
    events_[n % capacity_] = e;
    written_.store(n + 1, std::memory_order_release);
  }
  std::uint64_t written() const { return written_.load(std::memory_order_acquire); }
  // The kept events, oldest first.
  template <class F>
  void for_each(F f) const {
    const std::uint64_t n = written();
    const std::uint64_t first = n > capacity_ ? n - capacity_ : 0;
    for (std::uint64_t i = first; i < n; ++i) f(events_[i % capacity_]);
  }
  std::uint64_t dropped() const {
    const std::uint64_t n = written();
    return n > capacity_ ? n - capacity_ : 0;
  }

 private:
  std::unique_ptr<TraceEvent[]> events_;
  std::size_t capacity_ = 0;
  std::atomic<std::uint64_t> written_{0};
};

enum class StepKind { kLoad, kTransform, kBatch, kBatchTransform, kSink, kDeliver };

std::string_view step_kind_name(StepKind kind) {
  switch (kind) {
    case StepKind::kLoad:
      return "load";
    case StepKind::kTransform:
      return "transform";
    case StepKind::kBatch:
      return "batch";
    case StepKind::kBatchTransform:
      return "batch transform (own thread)";
    case StepKind::kSink:
      return "sink";
    case StepKind::kDeliver:
      return "deliver";
  }
  return "?";
}

// The consumer queue holds batch pointers; this one address marks the end of the stream.
BatchData end_of_stream_marker;
BatchData* const kEndOfStream = &end_of_stream_marker;

}  // namespace

// Adapts a step's emit function to the BatchEmitter a batch stage sees, without type erasure
// (a std::function here would allocate per sample).
template <class Graph, class Emit>
class StepEmitter final : public BatchEmitter {
 public:
  // `number`: the batch stage numbers the batches it makes; later steps keep their numbers.
  StepEmitter(Graph& graph, Emit& emit, bool number)
      : graph_(graph), emit_(emit), number_(number) {}
  BatchData& acquire() override { return *graph_.batches_->acquire(); }
  void emit(BatchData& b) override {
    if (number_) {
      b.index = graph_.next_batch_index_++;
      graph_.stamp_position(b);
    }
    Msg out;
    out.kind = Msg::Kind::kBatch;
    out.batch = &b;
    out.epoch = b.epoch;
    out.seq = b.index;
    emit_(out);
  }
  void discard(BatchData& b) override { graph_.batches_->release(&b); }

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

  explicit FlowGraph(Pipeline::Impl& owner);
  ~FlowGraph();
  FlowGraph(const FlowGraph&) = delete;
  FlowGraph& operator=(const FlowGraph&) = delete;

  void build();
  void run();
  std::string dot() const;

  // Nanoseconds since the run's origin (0 before the run starts).
  std::int64_t now_ns() const {
    const std::int64_t origin = origin_ns_.load(std::memory_order_relaxed);
    return origin < 0 ? 0 : nanos_since(owner_created_) - origin;
  }
  // The end of the run, or now while it goes on.
  std::int64_t end_or_now_ns() const {
    const std::int64_t end = end_ns_.load(std::memory_order_acquire);
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
  void trace(std::size_t slot, const TraceEvent& e) {
    if (rings_) rings_[slot].add(e);
  }
  void trace_edge(std::size_t slot, std::size_t edge, std::int64_t t, std::int64_t items) {
    if (rings_) rings_[slot].add({t, items, static_cast<std::uint32_t>(edge), true});
  }
  // A prefetch token back from the consumer (or for a marker that reached the end).
  void return_prefetch_token();
  void write_trace(const std::string& path, const std::string& name) const;
  std::uint64_t trace_events() const;
  std::uint64_t trace_dropped() const;

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
  std::atomic<std::int64_t> origin_ns_{-1};  // the run's origin, in ns after owner_created_
  std::atomic<std::int64_t> end_ns_{-1};     // the run's end, in ns after the origin

  // `concurrency: auto`: measured over the first items, then balanced once.
  std::atomic<bool> auto_pending_{false};
  std::atomic<std::uint64_t> auto_items_{0};
  std::uint64_t auto_target_ = 0;

  std::unique_ptr<TraceRing[]> rings_;  // one per slot when tracing, else none

  std::unique_ptr<ObjectPool<Sample>> samples_;
  std::unique_ptr<ObjectPool<BatchData>> batches_;
  boost::lockfree::spsc_queue<BatchData*> ready_;

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

 private:
  Msg source_next(oneapi::tbb::flow_control& control);
  // `own_thread`: called on the step's own thread (a batch transform), not by a TBB worker.
  void run_step(Step& step, Step* prev, Step* next, const Msg& msg, bool own_thread);
  void balance_concurrency();
};

FlowGraph::FlowGraph(Pipeline::Impl& owner)
    : owner_(owner),
      plan_(owner.plan_),
      owner_created_(owner.created_),
      ready_(static_cast<std::size_t>(owner.plan_.prefetch) + 1) {}

FlowGraph::~FlowGraph() {
  // The nodes are members declared after the graph, so they would be destroyed before the
  // graph's own destructor waits. A cancelled graph's wait_for_all() may return while tasks it
  // spawned are still finishing; wait again (the cancellation is reset by then) so that no task
  // touches a node being destroyed.
  if (graph_) arena_->execute([&] { graph_->wait_for_all(); });
}

void FlowGraph::build() {
  // One step per node that does work. The source's concurrent load step comes first when the
  // source has one; the deliver step hands batches to the consumer.
  std::size_t batch_step = 0;
  for (std::size_t i = 0; i < plan_.stages.size(); ++i) {
    StagePlan& s = plan_.stages[i];
    auto add = [&](StepKind kind, int concurrency) {
      auto step = std::make_unique<Step>();
      step->kind = kind;
      step->stage = &s;
      step->stage_index = i;
      step->concurrency = concurrency;
      step->concurrency_auto = s.concurrency_auto && concurrency > 1;
      step->capacity = s.queue;
      steps_.push_back(std::move(step));
    };
    switch (s.factory->info().shape) {
      case StageShape::kSource:
        if (static_cast<const SourceStage&>(*s.stage).has_load())
          add(StepKind::kLoad, s.concurrency);
        break;
      case StageShape::kTransform:
        add(StepKind::kTransform, s.concurrency);
        break;
      case StageShape::kBatch:
        batch_step = steps_.size();
        add(StepKind::kBatch, 1);
        samples_for_batch_ = static_cast<const BatchStage&>(*s.stage).samples_for_another_batch();
        break;
      case StageShape::kBatchTransform:
        add(StepKind::kBatchTransform, 1);
        break;
      case StageShape::kSink:
        add(StepKind::kSink, 1);
        break;
    }
  }
  for (std::size_t i = 0; i < steps_.size(); ++i) steps_[i]->index = i;
  {
    auto deliver = std::make_unique<Step>();
    deliver->kind = StepKind::kDeliver;
    deliver->capacity = plan_.queue;
    deliver->index = steps_.size();
    steps_.push_back(std::move(deliver));
  }

  // A step's body holds a token of its output edge while it works, so an edge of `queue` tokens
  // would cap its producer at `queue` items at once whatever its concurrency (16 decode slots
  // behind an edge of 8 ran 8 at a time). Each edge gets one more token per slot of its producer:
  // `queue` is what may wait in it beyond the items being made for it.
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    steps_[i]->capacity += i == 0 ? 1 : steps_[i - 1]->concurrency;  // the source: one at a time
  }

  // Bounds: a sample exists only while it holds a token of a sample edge (or waits in the input
  // node's one-item buffer); a batch only while it holds a token of a batch edge, is held by the
  // consumer (prefetch tokens) or is kept by the batch stage (a partial batch and the epoch's
  // first batch for padding, per open epoch; at most window + 2 epochs can be open).
  if (plan_.ordered && !steps_[batch_step]->stage->queue_set) {
    // The ordering window is the capacity of the sequencer's edge. By default it is as wide as the
    // edges before it together, so that reordering never throttles the stages in front of it.
    int upstream = 0;
    for (std::size_t i = 0; i < batch_step; ++i) upstream += steps_[i]->capacity;
    steps_[batch_step]->capacity = std::max(steps_[batch_step]->capacity, upstream);
  }
  std::size_t sample_tokens = 0;
  std::size_t batch_tokens = 0;
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    (i <= batch_step ? sample_tokens : batch_tokens) +=
        static_cast<std::size_t>(steps_[i]->capacity);
  }
  steps_[batch_step]->window_end = true;
  if (plan_.ordered) {
    steps_[batch_step]->sequenced = true;
    window_capacity_ = steps_[batch_step]->capacity;
  } else {
    window_capacity_ = static_cast<int>(sample_tokens) + 1;
  }
  samples_ = std::make_unique<ObjectPool<Sample>>("sample", sample_tokens + 2);
  epoch_size_ = static_cast<const SourceStage&>(*plan_.stages.front().stage).samples_per_epoch();
  std::size_t held = 0;  // batches that batch-transform stages may keep beyond their tokens
  for (const auto& step : steps_) {
    if (step->kind == StepKind::kBatchTransform) {
      held += static_cast<std::size_t>(
          static_cast<const BatchTransformStage&>(*step->stage->stage).max_held());
    }
  }
  batches_ = std::make_unique<ObjectPool<BatchData>>(
      "batch", batch_tokens + held + static_cast<std::size_t>(plan_.prefetch) +
                   2 * (static_cast<std::size_t>(window_capacity_) + 3));

  // TBB caps its workers at the core count unless told otherwise; a pipeline asking for more
  // threads gets them (for I/O-bound sources, or to measure oversubscription) for its lifetime.
  // TBB's default respects the process's CPU affinity (an MPI launcher may bind a rank to one
  // core).
  if (plan_.threads > oneapi::tbb::info::default_concurrency()) {
    parallelism_ = std::make_unique<oneapi::tbb::global_control>(
        oneapi::tbb::global_control::max_allowed_parallelism,
        static_cast<std::size_t>(plan_.threads));
  }
  // Counter slots: one per arena slot, one per stage thread, one for any other thread.
  slot_count_ = static_cast<std::size_t>(plan_.threads) + 1;
  std::size_t auto_steps = 0;
  for (auto& step : steps_) {
    if (step->kind == StepKind::kBatchTransform) step->own_slot = slot_count_++ - 1;
    auto_steps += step->concurrency_auto ? 1 : 0;
  }
  for (auto& step : steps_) {
    if (step->kind != StepKind::kBatchTransform) step->own_slot = slot_count_ - 1;
    step->counters = std::make_unique<SlotCounters[]>(slot_count_);
  }
  source_counters_ = std::make_unique<SlotCounters[]>(slot_count_);
  if (!plan_.trace.empty()) {
    rings_ = std::make_unique<TraceRing[]>(slot_count_);
    for (std::size_t i = 0; i < slot_count_; ++i) {
      rings_[i].reserve(static_cast<std::size_t>(plan_.trace_events));
    }
  }
  // Enough items for every auto stage's cost per item to settle past its first, cold ones.
  constexpr std::uint64_t kAutoItemsPerStage = 128;
  auto_target_ = kAutoItemsPerStage * auto_steps;
  auto_pending_.store(auto_steps > 0, std::memory_order_relaxed);
  source_state_.init(steps_.front()->capacity, 1);
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    Step& step = *steps_[i];
    step.state.init(i + 1 < steps_.size() ? steps_[i + 1]->capacity : plan_.prefetch,
                    step.concurrency);
  }

  arena_ = std::make_unique<oneapi::tbb::task_arena>(plan_.threads);
  arena_->execute([&] {
    graph_ = std::make_unique<flow::graph>();
    flow::graph& g = *graph_;
    for (auto& step : steps_) {
      if (step->sequenced) {
        step->queue = std::make_unique<flow::sequencer_node<Msg>>(
            g, [](const Msg& m) { return static_cast<std::size_t>(m.seq); });
      } else {
        step->queue = std::make_unique<flow::queue_node<Msg>>(g);
      }
      step->tokens = std::make_unique<flow::buffer_node<Token>>(g);
      step->slots = std::make_unique<flow::buffer_node<Token>>(g);
      step->join = std::make_unique<Join>(g);
    }
    prefetch_tokens_ = std::make_unique<flow::buffer_node<Token>>(g);
    window_ = std::make_unique<flow::buffer_node<Token>>(g);

    for (std::size_t i = 0; i < steps_.size(); ++i) {
      Step* step = steps_[i].get();
      Step* prev = i > 0 ? steps_[i - 1].get() : nullptr;
      Step* next = i + 1 < steps_.size() ? steps_[i + 1].get() : nullptr;
      flow::make_edge(*step->queue, flow::input_port<0>(*step->join));
      flow::buffer_node<Token>& out_tokens = next != nullptr ? *next->tokens : *prefetch_tokens_;
      flow::make_edge(out_tokens, flow::input_port<1>(*step->join));
      flow::make_edge(*step->slots, flow::input_port<2>(*step->join));
      if (step->kind == StepKind::kBatchTransform) {
        // The async_node only hands the batch over; the graph stays alive (reserve_wait) until
        // the stage's thread has finished with it.
        step->thread = std::make_unique<StageThread>();
        using Async = flow::async_node<In, flow::continue_msg>;
        step->async_body = std::make_unique<Async>(
            g, flow::serial, [step](const In& in, Async::gateway_type& gateway) {
              gateway.reserve_wait();
              step->thread->push(std::get<0>(in));
            });
        flow::make_edge(*step->join, *step->async_body);
      } else {
        step->body = std::make_unique<Body>(g, static_cast<std::size_t>(step->concurrency),
                                            [this, step, prev, next](const In& in) {
                                              run_step(*step, prev, next, std::get<0>(in), false);
                                              return flow::continue_msg();
                                            });
        flow::make_edge(*step->join, *step->body);
      }
    }

    source_ = std::make_unique<flow::input_node<Msg>>(
        g, [this](oneapi::tbb::flow_control& control) { return source_next(control); });
    source_join_ =
        std::make_unique<flow::join_node<std::tuple<Msg, Token, Token>, flow::reserving>>(g);
    Step* first = steps_.front().get();
    source_forward_ = std::make_unique<
        flow::function_node<std::tuple<Msg, Token, Token>, flow::continue_msg, flow::rejecting>>(
        g, flow::serial, [this, first](const std::tuple<Msg, Token, Token>& in) {
          const Msg& m = std::get<0>(in);
          const std::size_t at = slot(nullptr);
          std::int64_t t = -1;
          auto now = [&] { return t < 0 ? (t = now_ns()) : t; };
          SlotCounters& c = source_counters_[at];
          const auto after = source_state_.change(-1, -1, 0, now);
          const std::int64_t occupied = source_state_.out_capacity - after.tokens;
          c.raise_peak(occupied);
          trace_edge(at, 0, now(), occupied);
          first->state.change(+1, 0, 0, now);
          first->queue->try_put(m);
          return flow::continue_msg();
        });
    flow::make_edge(*source_, flow::input_port<0>(*source_join_));
    flow::make_edge(*first->tokens, flow::input_port<1>(*source_join_));
    flow::make_edge(*window_, flow::input_port<2>(*source_join_));
    flow::make_edge(*source_join_, *source_forward_);

    for (auto& step : steps_) {
      for (int t = 0; t < step->capacity; ++t) step->tokens->try_put(Token{});
      for (int t = 0; t < step->concurrency; ++t) step->slots->try_put(Token{});
    }
    for (int t = 0; t < plan_.prefetch; ++t) prefetch_tokens_->try_put(Token{});
    for (int t = 0; t < window_capacity_; ++t) window_->try_put(Token{});
    g.wait_for_all();
    // Held until the end of stream reaches the consumer (or the run is cancelled): the graph has
    // work outstanding while the consumer holds batches, even when no task is running.
    g.reserve_wait();
  });
}

Msg FlowGraph::source_next(oneapi::tbb::flow_control& control) {
  Msg m;
  if (source_ended_ || owner_.stopping()) {
    control.stop();
    return m;
  }
  auto& source = static_cast<SourceStage&>(*plan_.stages.front().stage);
  Sample* sample = samples_->acquire();
  const std::int64_t t0 = now_ns();
  SlotCounters& counters = source_counters_[slot(nullptr)];
  try {
    SourceStatus status = source.next(*sample);
    // A resumed epoch: the samples before the resume point are passed over here, unloaded (the
    // source's next() only names them), except the ones a padding batch stage needs again.
    while (status == SourceStatus::kSample && epoch_ == range_.epoch &&
           epoch_position_ >= range_.prefix && epoch_position_ < range_.skip) {
      ++epoch_position_;
      sample->reset();
      status = source.next(*sample);
    }
    switch (status) {
      case SourceStatus::kSample:
        m.kind = Msg::Kind::kSample;
        m.sample = sample;
        sample->seq = next_seq_;
        sample->position = epoch_position_;
        sample->pad_only = epoch_ == range_.epoch && epoch_position_ < range_.prefix;
        ++epoch_position_;
        m.epoch = sample->epoch;
        ++epoch_samples_;
        owner_.samples_read_.fetch_add(1, std::memory_order_relaxed);
        SlotCounters::add(counters.items, 1);
        break;
      case SourceStatus::kEpochEnd:
        samples_->release(sample);
        m.kind = Msg::Kind::kEpochEnd;
        m.epoch = epoch_++;
        m.count = epoch_samples_;
        epoch_samples_ = 0;
        epoch_position_ = 0;
        break;
      case SourceStatus::kEnd:
        samples_->release(sample);
        m.kind = Msg::Kind::kEnd;
        m.count = next_seq_ + 1;  // every message the source sent, this one included
        source_ended_ = true;
        break;
    }
  } catch (const std::exception& e) {
    samples_->release(sample);
    const StagePlan& s = plan_.stages.front();
    owner_.fail("stage '" + s.name + "' (" + s.where.file + ":" + std::to_string(s.where.line) +
                ") failed: " + e.what());
    control.stop();
    return m;
  }
  const std::int64_t t1 = now_ns();
  SlotCounters::add(counters.busy_ns, static_cast<std::uint64_t>(t1 - t0));
  trace(slot(nullptr), {t0, t1 - t0, 0, false});
  // The message waits in the input node until the first edge has a token (and the window one).
  source_state_.change(+1, 0, 0, [t1] { return t1; });
  m.seq = next_seq_++;
  if (m.seq == 0) owner_.note_first_item();
  return m;
}

void FlowGraph::run_step(Step& step, Step* prev, Step* next, const Msg& msg, bool own_thread) {
  const std::size_t at = slot(own_thread ? &step : nullptr);
  SlotCounters& counters = step.counters[at];
  const std::size_t index = step.index;
  std::int64_t t = -1;  // read the clock once per moment, and only when it is needed
  auto now = [&] { return t < 0 ? (t = now_ns()) : t; };
  const std::int64_t t0 = now_ns();
  t = t0;
  // The item, an output token and a slot token have left their buffers.
  {
    const auto after = step.state.change(-1, -1, -1, now);
    const std::int64_t occupied = step.state.out_capacity - after.tokens;
    counters.raise_peak(occupied);
    if (next != nullptr) trace_edge(at, index + 1, t0, occupied);
  }
  // The item has left our input edge: give its token back to the producer.
  if (msg.holds_token) {
    StepState& producer = prev != nullptr ? prev->state : source_state_;
    const auto after = producer.change(0, +1, 0, now);
    trace_edge(at, index, t0, producer.out_capacity - after.tokens);
    step.tokens->try_put(Token{});
  }
  if (step.window_end) window_->try_put(Token{});

  bool emitted = false;
  auto emit = [&](Msg out) {
    out.holds_token = !emitted;
    emitted = true;
    if (next != nullptr) {
      t = -1;
      next->state.change(+1, 0, 0, now);
      next->queue->try_put(out);
    } else {
      owner_.deliver(out);
    }
  };

  Msg m = msg;
  const bool is_data = m.kind == Msg::Kind::kSample || m.kind == Msg::Kind::kBatch;
  if (owner_.stopping()) {
    // Cancelled or failed: drain without work so that nothing waits on this item.
    if (m.sample != nullptr) samples_->release(m.sample);
    if (m.batch != nullptr) batches_->release(m.batch);
  } else {
    auto sample_failure = [&](const std::exception& e, bool data_error) {
      const StagePlan& s = *step.stage;
      std::string what =
          "stage '" + s.name + "' (" + s.where.file + ":" + std::to_string(s.where.line) + ")";
      if (m.sample != nullptr) {
        what += " failed on sample " + std::to_string(m.sample->id) + " '" + m.sample->path + "'";
      } else if (m.batch != nullptr) {
        what += " failed on batch " + std::to_string(m.batch->index);
      } else {
        what += " failed";
      }
      SlotCounters::add(counters.errors, 1);
      if (data_error && s.on_error == OnError::kSkip && m.sample != nullptr) {
        m.sample->skipped = true;
        m.sample->error = e.what();
        owner_.record_skip(*m.sample, s.name, e.what());
        return;
      }
      owner_.fail(what + ": " + e.what());
    };
    try {
      switch (step.kind) {
        case StepKind::kLoad:
        case StepKind::kTransform:
          if (m.kind == Msg::Kind::kSample && !m.sample->skipped) {
            try {
              if (step.kind == StepKind::kLoad) {
                static_cast<const SourceStage&>(*step.stage->stage).load(*m.sample);
              } else {
                static_cast<const TransformStage&>(*step.stage->stage).process(*m.sample, owner_);
              }
            } catch (const SampleError& e) {
              sample_failure(e, true);
            }
          }
          emit(m);
          break;
        case StepKind::kBatch: {
          auto& stage = static_cast<BatchStage&>(*step.stage->stage);
          StepEmitter<FlowGraph, decltype(emit)> emitter(*this, emit, true);
          ++batch_seen_;
          if (m.kind == Msg::Kind::kSample) {
            EpochProgress& progress = epochs_[m.sample->epoch];
            progress.position = std::max(progress.position, m.sample->position + 1);
            if (!m.sample->skipped) {
              try {
                stage.push(*m.sample, emitter);
              } catch (const SampleError& e) {
                sample_failure(e, true);
              }
            }
            ++progress.seen;
            samples_->release(m.sample);
          } else if (m.kind == Msg::Kind::kEpochEnd) {
            EpochProgress& p = epochs_[m.epoch];
            p.expected = m.count;
            p.marker = true;
          } else if (m.kind == Msg::Kind::kEnd) {
            end_seen_ = true;
            end_total_ = m.count;
          }
          for (auto it = epochs_.begin(); it != epochs_.end();) {
            if (it->second.marker && it->second.seen == it->second.expected) {
              finishing_epoch_ = true;
              stage.finish_epoch(it->first, emitter);
              finishing_epoch_ = false;
              it = epochs_.erase(it);
            } else {
              ++it;
            }
          }
          if (end_seen_ && batch_seen_ == end_total_) {
            stage.finish();
            step.finished = true;
            Msg end;
            end.kind = Msg::Kind::kEnd;
            emit(end);
          }
          break;
        }
        case StepKind::kBatchTransform: {
          auto& stage = static_cast<BatchTransformStage&>(*step.stage->stage);
          StepEmitter<FlowGraph, decltype(emit)> emitter(*this, emit, false);
          if (m.kind == Msg::Kind::kBatch) {
            stage.process(*m.batch, emitter);
          } else if (m.kind == Msg::Kind::kEnd) {
            stage.flush(emitter);
            stage.finish();
            step.finished = true;
            emit(m);
          } else {
            emit(m);
          }
          break;
        }
        case StepKind::kSink:
          if (m.kind == Msg::Kind::kBatch) {
            static_cast<SinkStage&>(*step.stage->stage).consume(*m.batch);
          } else if (m.kind == Msg::Kind::kEnd) {
            step.stage->stage->finish();
            step.finished = true;
          }
          emit(m);
          break;
        case StepKind::kDeliver:
          emit(m);
          break;
      }
    } catch (const std::exception& e) {
      sample_failure(e, false);
      if (!emitted && m.sample != nullptr) samples_->release(m.sample);
      if (!emitted && m.batch != nullptr) batches_->release(m.batch);
    }
  }
  const std::int64_t t1 = now_ns();
  t = t1;
  if (is_data) SlotCounters::add(counters.items, 1);
  SlotCounters::add(counters.busy_ns, static_cast<std::uint64_t>(t1 - t0));
  trace(at, {t0, t1 - t0, static_cast<std::uint32_t>(index + 1), false});

  // Give back the output token when nothing used it, and the slot unless `concurrency: auto`
  // has lowered the step's concurrency and this slot is one to drop.
  int debt = step.slot_debt.load(std::memory_order_relaxed);
  while (debt > 0 &&
         !step.slot_debt.compare_exchange_weak(debt, debt - 1, std::memory_order_relaxed)) {
  }
  const bool keep_slot = debt <= 0;
  const auto after = step.state.change(0, emitted ? 0 : 1, keep_slot ? 1 : 0, now);
  if (!emitted) {
    if (next != nullptr) trace_edge(at, index + 1, t1, step.state.out_capacity - after.tokens);
    (next != nullptr ? *next->tokens : *prefetch_tokens_).try_put(Token{});
  }
  if (keep_slot) step.slots->try_put(Token{});
  if (is_data && step.concurrency_auto && auto_pending_.load(std::memory_order_relaxed) &&
      auto_items_.fetch_add(1, std::memory_order_relaxed) + 1 == auto_target_) {
    balance_concurrency();
  }
}

void FlowGraph::run() {
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    Step* step = steps_[i].get();
    if (step->kind != StepKind::kBatchTransform) continue;
    Step* prev = i > 0 ? steps_[i - 1].get() : nullptr;
    Step* next = steps_[i + 1].get();  // a deliver step always follows
    step->thread->start([this, step, prev, next, first = true](const Msg& m) mutable {
      if (first) {
        first = false;
        try {
          static_cast<BatchTransformStage&>(*step->stage->stage).thread_start();
        } catch (const std::exception& e) {
          owner_.fail("stage '" + step->stage->name + "' failed to start: " + e.what());
        }
      }
      run_step(*step, prev, next, m, true);
      graph_->release_wait();
    });
  }
  origin_ns_.store(nanos_since(owner_created_), std::memory_order_relaxed);
  arena_->execute([&] {
    source_->activate();
    graph_->wait_for_all();
  });
  end_ns_.store(now_ns(), std::memory_order_release);
  for (auto& step : steps_) {
    if (step->thread) step->thread->close();
  }
  // Stages not finished by the end-of-stream marker (a cancelled or failed run) finish here, so
  // that sinks still close what they wrote.
  for (auto& step : steps_) {
    if (step->stage == nullptr || step->finished) continue;
    if (step->kind == StepKind::kBatch || step->kind == StepKind::kBatchTransform ||
        step->kind == StepKind::kSink) {
      try {
        step->stage->stage->finish();
      } catch (const std::exception& e) {
        owner_.fail("stage '" + step->stage->name + "' failed to finish: " + e.what());
      }
      step->finished = true;
    }
  }
  try {
    plan_.stages.front().stage->finish();
  } catch (const std::exception& e) {
    owner_.fail("stage '" + plan_.stages.front().name + "' failed to finish: " + e.what());
  }
}

void FlowGraph::balance_concurrency() {
  auto_pending_.store(false, std::memory_order_relaxed);
  // Each auto step's cost per item so far; every stage gets twice its proportional share of the
  // threads, and never fewer than two slots. Work arrives in bursts (a large image, a batch
  // boundary), and a stage held to its average share serialises each burst while other threads
  // idle: on configs/default.yaml, holding augment (21 % of the cost) to one of two threads cost
  // 10 % of the throughput. The cap is what keeps a cheap stage from taking every thread.
  std::vector<std::pair<Step*, double>> costs;
  double total = 0;
  for (auto& step : steps_) {
    if (!step->concurrency_auto) continue;
    std::uint64_t items = 0;
    std::uint64_t busy = 0;
    for (std::size_t k = 0; k < slot_count_; ++k) {
      items += step->counters[k].items.load(std::memory_order_relaxed);
      busy += step->counters[k].busy_ns.load(std::memory_order_relaxed);
    }
    const double cost = items > 0 ? static_cast<double>(busy) / static_cast<double>(items) : 0.0;
    costs.emplace_back(step.get(), cost);
    total += cost;
  }
  std::ostringstream note;
  note << "concurrency auto, after " << auto_target_ << " items (" << plan_.threads << " threads):";
  for (auto& [step, cost] : costs) {
    const double share = total > 0 ? cost / total : 1.0 / static_cast<double>(costs.size());
    const int floor = std::min(2, step->concurrency);
    const int chosen = std::clamp(
        static_cast<int>(std::ceil(2.0 * share * static_cast<double>(plan_.threads) - 1e-9)), floor,
        step->concurrency);
    step->slot_debt.fetch_add(step->concurrency - chosen, std::memory_order_relaxed);
    step->chosen.store(chosen, std::memory_order_relaxed);
    char line[160];
    std::snprintf(line, sizeof line, " %s %d (%.0f us/item, %.0f%%)", step->stage->name.c_str(),
                  chosen, cost * 1e-3, 100.0 * share);
    note << line;
  }
  owner_.note_concurrency(note.str());
}

void FlowGraph::return_prefetch_token() {
  steps_.back()->state.change(0, +1, 0, [this] { return now_ns(); });
  prefetch_tokens_->try_put(Token{});
}

std::uint64_t FlowGraph::trace_events() const {
  std::uint64_t n = 0;
  for (std::size_t i = 0; rings_ && i < slot_count_; ++i) n += rings_[i].written();
  return n - trace_dropped();
}

std::uint64_t FlowGraph::trace_dropped() const {
  std::uint64_t n = 0;
  for (std::size_t i = 0; rings_ && i < slot_count_; ++i) n += rings_[i].dropped();
  return n;
}

void FlowGraph::write_trace(const std::string& path, const std::string& name) const {
  // Span names: the source's next(), then every step; counter names: the edge into every step.
  std::vector<std::string> spans{plan_.stages.front().name + " next"};
  std::vector<std::string> edges;
  for (const auto& step : steps_) {
    std::string n = step->stage != nullptr ? step->stage->name : std::string("deliver");
    if (step->kind == StepKind::kLoad) n += " load";
    spans.push_back(n);
    edges.push_back("queue " + n);
  }
  struct Kept {
    TraceEvent e;
    std::size_t ring;
  };
  std::vector<Kept> events;
  std::int64_t complete_from = 0;  // every thread's events are kept from here on
  for (std::size_t r = 0; r < slot_count_; ++r) {
    bool first = true;
    rings_[r].for_each([&](const TraceEvent& e) {
      if (first && rings_[r].dropped() > 0) complete_from = std::max(complete_from, e.ts);
      first = false;
      events.push_back({e, r});
    });
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const Kept& a, const Kept& b) { return a.e.ts < b.e.ts; });
  auto us = [](std::int64_t ns) { return static_cast<double>(ns) * 1e-3; };
  const std::uint64_t dropped = trace_dropped();

  JsonWriter j;
  j.begin_object();
  j.key("displayTimeUnit").value("ms");
  j.key("otherData").begin_object();
  j.key("pipeline").value(name);
  j.key("events_per_thread").value(plan_.trace_events);
  j.key("events").value(static_cast<std::uint64_t>(events.size()));
  j.key("dropped_events").value(dropped);
  j.key("complete_from_us").value(us(complete_from));
  j.key("window").value(dropped == 0
                            ? std::string("the whole run")
                            : "each thread's latest " + std::to_string(plan_.trace_events) +
                                  " events; older ones dropped");
  j.end_object();
  j.key("traceEvents").begin_array();
  j.begin_object().key("name").value("process_name").key("ph").value("M").key("pid").value(1);
  j.key("tid").value(0).key("args").begin_object().key("name").value("millrace " + name);
  j.end_object().end_object();
  for (std::size_t r = 0; r < slot_count_; ++r) {
    if (rings_[r].written() == 0) continue;
    std::string thread = "worker " + std::to_string(r);
    if (r >= static_cast<std::size_t>(plan_.threads)) {
      thread = "other thread";
      for (const auto& step : steps_) {
        if (step->kind == StepKind::kBatchTransform && step->own_slot == r) {
          thread = step->stage->name + " thread";
        }
      }
    }
    j.begin_object().key("name").value("thread_name").key("ph").value("M").key("pid").value(1);
    j.key("tid").value(static_cast<std::uint64_t>(r + 1));
    j.key("args").begin_object().key("name").value(thread).end_object().end_object();
    j.begin_object().key("name").value("thread_sort_index").key("ph").value("M");
    j.key("pid").value(1).key("tid").value(static_cast<std::uint64_t>(r + 1));
    j.key("args").begin_object().key("sort_index").value(static_cast<std::uint64_t>(r));
    j.end_object().end_object();
  }
  j.end_array();
  j.end_object();
  // The events themselves are written by hand, one per line, in microseconds with nanosecond
  // digits: the metadata above goes through JsonWriter, which prints doubles at full precision.
  auto quoted = [](const std::string& text) {
    JsonWriter q;
    q.value(text);
    return q.str();
  };
  for (auto& n : spans) n = quoted(n);
  for (auto& n : edges) n = quoted(n);
  std::string head = j.str();
  head.resize(head.size() - 2);  // reopen the event array: drop "]}"
  std::string body;
  body.reserve(events.size() * 96);
  char line[512];
  for (const Kept& k : events) {
    const TraceEvent& e = k.e;
    if (e.counter) {
      std::snprintf(line, sizeof line,
                    ",\n{\"name\":%s,\"ph\":\"C\",\"ts\":%.3f,\"pid\":1,\"args\":{\"items\":%lld}}",
                    edges[e.id].c_str(), us(e.ts), static_cast<long long>(e.value));
    } else {
      std::snprintf(line, sizeof line,
                    ",\n{\"name\":%s,\"cat\":\"stage\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,"
                    "\"pid\":1,\"tid\":%zu}",
                    spans[e.id].c_str(), us(e.ts), us(e.value), k.ring + 1);
    }
    body += line;
  }
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  std::ofstream out(path, std::ios::binary);
  out << head << body << "\n]}\n";
  if (!out) throw std::runtime_error("cannot write the trace file '" + path + "'");
}

std::string FlowGraph::dot() const {
  std::ostringstream out;
  out << "digraph \"" << plan_.name << "\" {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n";
  const StagePlan& src = plan_.stages.front();
  out << "  source [shape=box, style=bold, label=\"" << src.name << "\\ninput_node (" << src.type
      << ": next, serial)\"];\n";
  out << "  window [shape=note, label=\"window tokens\\n"
      << window_capacity_ << (plan_.ordered ? " (ordered)" : "") << "\"];\n";
  out << "  source_join [shape=diamond, label=\"join (reserving)\"];\n";
  out << "  source -> source_join;\n  window -> source_join;\n";
  std::string previous = "source_join";
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    const Step& s = *steps_[i];
    const std::string id = "s" + std::to_string(i);
    const std::string name = s.stage != nullptr ? s.stage->name : std::string("consumer");
    const std::string type = s.stage != nullptr ? s.stage->type : std::string("prefetch");
    out << "  " << id << "_queue [shape=record, label=\""
        << (s.sequenced ? "sequencer_node" : "queue_node") << "|capacity " << s.capacity
        << "\"];\n";
    out << "  " << id << "_tokens [shape=note, label=\"" << s.capacity << " tokens\"];\n";
    out << "  " << id << "_join [shape=diamond, label=\"join (reserving)\"];\n";
    out << "  " << id << " [shape=box, style=bold, label=\"" << name << "\\n"
        << step_kind_name(s.kind) << " (" << type << "), concurrency "
        << (s.concurrency == 1 ? std::string("serial") : std::to_string(s.concurrency)) << "\"];\n";
    out << "  " << previous << " -> " << id << "_queue;\n";
    out << "  " << id << "_tokens -> "
        << (i == 0 ? "source_join" : "s" + std::to_string(i - 1) + "_join") << " [style=dashed];\n";
    out << "  " << id << "_queue -> " << id << "_join;\n  " << id << "_join -> " << id << ";\n";
    previous = id;
  }
  out << "  prefetch [shape=note, label=\"" << plan_.prefetch << " prefetch tokens\"];\n";
  out << "  prefetch -> s" << steps_.size() - 1 << "_join [style=dashed];\n";
  out << "  consumer [shape=box, label=\"consumer thread\\nspsc_queue (" << plan_.prefetch
      << ")\"];\n  " << previous << " -> consumer;\n}\n";
  return out.str();
}

// ---------------------------------------------------------------------------------------------

Pipeline::Impl::Impl(PipelinePlan plan, std::vector<Diagnostic> warnings, Clock::time_point created)
    : plan_(std::move(plan)), warnings_(std::move(warnings)), created_(created) {
  for (auto& s : plan_.stages) s.stage->prepare();
  const auto& source = static_cast<const SourceStage&>(*plan_.stages.front().stage);
  expected_samples_ = source.total_samples();
  if (!plan_.trace.empty()) {
    // A trace that cannot be written is found now, not after the run.
    std::error_code ec;
    const auto parent = std::filesystem::path(plan_.trace).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    std::ofstream probe(plan_.trace, std::ios::binary | std::ios::app);
    if (!probe) {
      throw ConfigError({{plan_.file, 0, 0,
                          "pipeline: 'trace': cannot write the trace file '" + plan_.trace + "'" +
                              (ec ? " (" + ec.message() + ")" : std::string())}});
    }
    trace_.path = plan_.trace;
    trace_.events_per_thread = plan_.trace_events;
  }
  flow_ = std::make_unique<FlowGraph>(*this);
  flow_->build();
  for (const StagePlan& p : plan_.stages) cheaper_.push_back(p.stage->cheaper_settings());
  built_ns_ = nanos_since(created_);
}

Pipeline::Impl::~Impl() {
  cancel();
  if (runner_.joinable()) runner_.join();
}

void Pipeline::Impl::start() {
  if (started_.exchange(true)) return;
  // Time between building and starting is the caller's, not start-up: leave it out of the clock.
  idle_ns_.store(nanos_since(created_) - built_ns_);
  runner_ = std::thread([this] { run_graph(); });
}

void Pipeline::Impl::run_graph() {
  try {
    for (auto& s : plan_.stages) s.stage->open();
    flow_->run();
  } catch (const std::exception& e) {
    fail(std::string("pipeline failed: ") + e.what());
  }
  end_ns_.store(nanos_since(created_), std::memory_order_relaxed);
  if (!plan_.trace.empty()) {
    try {
      flow_->write_trace(plan_.trace, plan_.name);
      std::lock_guard<std::mutex> lock(report_mutex_);
      trace_.events = flow_->trace_events();
      trace_.dropped = flow_->trace_dropped();
      trace_.written = true;
    } catch (const std::exception& e) {
      fail(std::string("trace: ") + e.what());
    }
  }
  if (!cancelled_.load() && !ended_.load()) {
    std::lock_guard<std::mutex> lock(report_mutex_);
    if (error_.empty()) error_ = "pipeline stopped before its end of stream";
  }
  done_.store(true, std::memory_order_release);
  wake_consumer();
}

void Pipeline::Impl::wake_consumer() {
  signal_.fetch_add(1, std::memory_order_release);
  signal_.notify_all();
  // A consumer in wait_for() sleeps on the condition variable instead (a timed wait that the
  // atomic cannot do); it announced itself before checking for work, so one of the two sees the
  // other (both sides order their announcement and their check with a full fence).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (timed_waiters_.load(std::memory_order_relaxed) > 0) {
    { std::lock_guard<std::mutex> lock(wait_mutex_); }
    wait_cv_.notify_all();
  }
}

bool Pipeline::Impl::ready_for_consumer() const {
  return flow_->ready_.read_available() > 0 || done_.load(std::memory_order_acquire);
}

bool Pipeline::Impl::wait_for(std::chrono::nanoseconds timeout) {
  start();
  if (ready_for_consumer()) return true;
  timed_waiters_.fetch_add(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool ready = false;
  {
    std::unique_lock<std::mutex> lock(wait_mutex_);
    ready = wait_cv_.wait_for(lock, timeout, [this] { return ready_for_consumer(); });
  }
  timed_waiters_.fetch_sub(1, std::memory_order_relaxed);
  return ready;
}

void Pipeline::Impl::start_at(const StreamPosition& from, std::uint32_t epochs) {
  if (started_.load()) throw std::logic_error("millrace: start_at() after the run started");
  if (from.first_batch_samples > from.samples) {
    throw std::invalid_argument("millrace: start_at(): first_batch_samples " +
                                std::to_string(from.first_batch_samples) + " is past samples " +
                                std::to_string(from.samples));
  }
  const StagePlan& s = plan_.stages.front();
  if (from.samples > 0 && !plan_.ordered) {
    throw ConfigError({{plan_.file, 0, 0,
                        "pipeline: resuming mid-epoch needs 'ordered: true' (batches are made in "
                        "source order only then)"}});
  }
  auto& source = static_cast<SourceStage&>(*s.stage);
  if ((from.epoch != 0 || epochs != 0) && !source.set_epochs(from.epoch, epochs)) {
    throw ConfigError({{s.where.file, s.where.line, s.where.column,
                        "stage '" + s.name + "' (" + s.type +
                            ") cannot start at another epoch or read a chosen number of epochs"}});
  }
  const BatchStage* batch = batch_stage();
  flow_->set_range(from, batch != nullptr && batch->pads_from_epoch_start());
  expected_samples_ = source.total_samples();
}

const BatchStage* Pipeline::Impl::batch_stage() const {
  for (const StagePlan& p : plan_.stages) {
    if (p.factory->info().shape == StageShape::kBatch) {
      return static_cast<const BatchStage*>(p.stage.get());
    }
  }
  return nullptr;
}

std::optional<std::uint64_t> Pipeline::Impl::batches_per_epoch() const {
  const auto& source = static_cast<const SourceStage&>(*plan_.stages.front().stage);
  const std::optional<std::uint64_t> samples = source.samples_per_epoch();
  const BatchStage* batch = batch_stage();
  if (!samples || batch == nullptr) return std::nullopt;
  return batch->batches_for(*samples);
}

void Pipeline::Impl::note_concurrency(const std::string& note) {
  std::lock_guard<std::mutex> lock(report_mutex_);
  concurrency_note_ = note;
}

void Pipeline::Impl::note_first_item() {
  first_item_ns_.store(nanos_since(created_), std::memory_order_relaxed);
}

void Pipeline::Impl::deliver(const Msg& msg) {
  if (msg.kind == Msg::Kind::kBatch) {
    if (!flow_->ready_.push(msg.batch)) throw std::logic_error("millrace: prefetch queue overflow");
  } else if (msg.kind == Msg::Kind::kEnd) {
    // Checked here, once every sample has been counted: a fraction needs the final total.
    const auto read = samples_read_.load();
    const auto skipped = skipped_count_.load();
    if (plan_.max_error_fraction >= 0 && read > 0 &&
        static_cast<double>(skipped) > plan_.max_error_fraction * static_cast<double>(read)) {
      fail(std::to_string(skipped) + " of " + std::to_string(read) +
           " samples skipped, above pipeline.max_errors " +
           format_number(plan_.max_error_fraction));
    }
    flow_->ready_.push(kEndOfStream);
    ended_.store(true, std::memory_order_release);
    if (!wait_released_.exchange(true)) flow_->graph_->release_wait();
  } else {
    // Markers that reach the end are not the consumer's business; their token goes back now.
    flow_->return_prefetch_token();
    return;
  }
  wake_consumer();
}

std::optional<Batch> Pipeline::Impl::next() {
  start();
  for (;;) {
    BatchData* b = nullptr;
    if (flow_->ready_.pop(b)) {
      if (b == kEndOfStream) {
        // The end of stream arrives just before the graph winds down: wait for that, so that
        // stats() taken after the last next() are final (and the sinks have finished).
        for (;;) {
          const std::uint64_t seen = signal_.load(std::memory_order_acquire);
          if (done_.load(std::memory_order_acquire)) break;
          signal_.wait(seen, std::memory_order_acquire);
        }
        std::lock_guard<std::mutex> lock(report_mutex_);
        if (!error_.empty()) throw RunError(error_);
        return std::nullopt;
      }
      const std::int64_t now = nanos_since(created_);
      const auto rows = static_cast<std::uint64_t>(b->rows) - static_cast<std::uint64_t>(b->pad);
      images_.fetch_add(rows, std::memory_order_relaxed);
      if (batches_.fetch_add(1, std::memory_order_relaxed) == 0) {
        first_batch_ns_.store(now, std::memory_order_relaxed);
      } else {
        images_after_first_.fetch_add(rows, std::memory_order_relaxed);
      }
      last_batch_ns_.store(now, std::memory_order_relaxed);
      return Batch(b, this);
    }
    const std::uint64_t seen = signal_.load(std::memory_order_acquire);
    if (flow_->ready_.read_available() > 0) continue;
    if (done_.load(std::memory_order_acquire)) {
      if (flow_->ready_.read_available() > 0) continue;
      std::lock_guard<std::mutex> lock(report_mutex_);
      if (!error_.empty() && !cancelled_.load()) throw RunError(error_);
      return std::nullopt;
    }
    signal_.wait(seen, std::memory_order_acquire);
  }
}

void Pipeline::Impl::release(BatchData* batch) {
  flow_->batches_->release(batch);
  if (!ended_.load(std::memory_order_acquire)) flow_->return_prefetch_token();
}

void Pipeline::Impl::cancel() {
  cancelled_.store(true);
  stopping_.store(true);
  if (flow_ && flow_->graph_) {
    flow_->graph_->cancel();
    if (!wait_released_.exchange(true)) flow_->graph_->release_wait();
  }
  wake_consumer();
}

void Pipeline::Impl::fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(report_mutex_);
    if (!error_.empty()) return;  // the first failure is the cause; later ones are its echoes
    error_ = message;
  }
  stopping_.store(true);
  if (flow_ && flow_->graph_) {
    flow_->graph_->cancel();
    if (!wait_released_.exchange(true)) flow_->graph_->release_wait();
  }
}

void Pipeline::Impl::record_skip(const Sample& sample, const std::string& stage,
                                 const std::string& error) {
  const auto skipped = skipped_count_.fetch_add(1, std::memory_order_relaxed) + 1;
  {
    std::lock_guard<std::mutex> lock(report_mutex_);
    skipped_.push_back({sample.path, sample.id, stage, error});
  }
  if (plan_.max_error_count >= 0 && skipped > static_cast<std::uint64_t>(plan_.max_error_count)) {
    fail(std::to_string(skipped) + " samples skipped, above pipeline.max_errors " +
         std::to_string(plan_.max_error_count) + " (last: '" + sample.path + "': " + error + ")");
  } else if (plan_.max_error_fraction >= 0 && expected_samples_ &&
             static_cast<double>(skipped) >
                 plan_.max_error_fraction * static_cast<double>(*expected_samples_)) {
    fail(std::to_string(skipped) + " of " + std::to_string(*expected_samples_) +
         " samples skipped, above pipeline.max_errors " + format_number(plan_.max_error_fraction) +
         " (last: '" + sample.path + "': " + error + ")");
  }
}

void Pipeline::Impl::warn(const Sample& sample, const std::string& stage,
                          const std::string& message) {
  std::lock_guard<std::mutex> lock(report_mutex_);
  constexpr std::size_t kMaxWarnings = 1000;  // a bounded list: counts keep the rest
  if (warning_list_.size() >= kMaxWarnings) {
    ++warnings_dropped_;
    return;
  }
  warning_list_.push_back("stage '" + stage + "': sample " + std::to_string(sample.id) + " '" +
                          sample.path + "': " + message);
}

RunStats Pipeline::Impl::stats() const { return build_stats(done_.load()); }

RunStats Pipeline::Impl::build_stats(bool final) const {
  RunStats s;
  s.threads = plan_.threads;
  s.rank = plan_.stages.front().stage->context().rank;
  std::tie(s.part_index, s.num_parts) =
      static_cast<const SourceStage&>(*plan_.stages.front().stage).part();
  s.images = images_.load();
  s.batches = batches_.load();
  s.samples_read = samples_read_.load();
  s.expected_samples = expected_samples_;
  const std::int64_t idle = idle_ns_.load();
  const std::int64_t end =
      (final && end_ns_.load() >= 0 ? end_ns_.load() : nanos_since(created_)) - idle;
  s.seconds = static_cast<double>(end) * 1e-9;
  const std::int64_t first_item = first_item_ns_.load();
  s.startup_seconds = static_cast<double>(first_item >= 0 ? first_item - idle : end) * 1e-9;
  const std::int64_t first = first_batch_ns_.load();
  const std::int64_t last = last_batch_ns_.load();
  if (first >= 0 && last > first) {
    s.images_per_second = static_cast<double>(images_after_first_.load()) /
                          (static_cast<double>(last - first) * 1e-9);
  }
  s.finished = final;
  s.cancelled = cancelled_.load();
  {
    std::lock_guard<std::mutex> lock(report_mutex_);
    s.error = error_;
    s.skipped = skipped_;
    s.warnings = warning_list_;
    s.concurrency_note = concurrency_note_;
    s.trace = trace_;
    if (warnings_dropped_ > 0) {
      s.warnings.push_back("... and " + std::to_string(warnings_dropped_) + " more warnings");
    }
  }
  const double run_seconds =
      std::max(1e-9, s.seconds - s.startup_seconds) * static_cast<double>(plan_.threads);
  const FlowGraph& g = *flow_;
  const std::int64_t now = g.end_or_now_ns();
  const double wall = std::max(1e-9, static_cast<double>(now) * 1e-9);
  auto sum = [&](const SlotCounters* slots, auto member) {
    std::uint64_t total = 0;
    for (std::size_t k = 0; k < g.slot_count_; ++k) {
      total += (slots[k].*member).load(std::memory_order_relaxed);
    }
    return total;
  };
  auto peak = [&](const SlotCounters* slots) {
    std::int64_t most = 0;
    for (std::size_t k = 0; k < g.slot_count_; ++k) {
      most = std::max(most, slots[k].out_peak.load(std::memory_order_relaxed));
    }
    return most;
  };
  for (std::size_t i = 0; i < plan_.stages.size(); ++i) {
    const StagePlan& p = plan_.stages[i];
    StageStats st;
    st.name = p.name;
    st.type = p.type;
    st.concurrency = p.concurrency;
    st.concurrency_auto = p.concurrency_auto;
    st.queue = p.queue;
    st.cheaper = cheaper_[i];
    st.queue_capacity = p.queue;
    std::uint64_t busy = 0;
    double idle_input = 0;
    double idle_blocked = 0;
    double idle_worker = 0;
    if (i == 0) {
      st.items = sum(g.source_counters_.get(), &SlotCounters::items);
      busy += sum(g.source_counters_.get(), &SlotCounters::busy_ns);
      // next() has no input edge: its own time between items is its busy time, not a wait.
      const StepState::Rates idle = g.source_state_.integrals(now);
      idle_blocked += static_cast<double>(idle.blocked);
      idle_worker += static_cast<double>(idle.wait_worker);
    }
    bool first_step = true;
    for (std::size_t k = 0; k < g.steps_.size(); ++k) {
      const auto& step = g.steps_[k];
      if (step->stage != &p) continue;
      if (i != 0) st.items += sum(step->counters.get(), &SlotCounters::items);
      busy += sum(step->counters.get(), &SlotCounters::busy_ns);
      st.errors += sum(step->counters.get(), &SlotCounters::errors);
      const StepState::Rates idle = step->state.integrals(now);
      idle_input += static_cast<double>(idle.wait_input);
      idle_blocked += static_cast<double>(idle.blocked);
      idle_worker += static_cast<double>(idle.wait_worker);
      if (step->concurrency_auto) {
        const int chosen = step->chosen.load(std::memory_order_relaxed);
        st.concurrency = chosen > 0 ? chosen : step->concurrency;
      }
      if (first_step) {
        // The edge into the step: its producer's output edge.
        const SlotCounters* producer =
            k == 0 ? g.source_counters_.get() : g.steps_[k - 1]->counters.get();
        const StepState& producer_state = k == 0 ? g.source_state_ : g.steps_[k - 1]->state;
        st.queue_peak = static_cast<int>(peak(producer));
        st.queue_mean = static_cast<double>(producer_state.integrals(now).occupancy) * 1e-9 / wall;
        st.queue_capacity = step->capacity;
        first_step = false;
      }
    }
    if (p.factory->info().shape == StageShape::kBatchTransform) {
      for (auto& [key, value] : static_cast<const BatchTransformStage&>(*p.stage).metrics()) {
        s.metrics.emplace_back(p.name + "." + key, value);
      }
    }
    st.busy_seconds = static_cast<double>(busy) * 1e-9;
    st.busy_share = st.busy_seconds / run_seconds;
    st.wait_input_seconds = idle_input * 1e-9;
    st.blocked_output_seconds = idle_blocked * 1e-9;
    st.wait_worker_seconds = idle_worker * 1e-9;
    s.stages.push_back(st);
  }
  s.run_wall_seconds = static_cast<double>(now) * 1e-9;
  s.consumer_wait_seconds =
      static_cast<double>(g.steps_.back()->state.integrals(now).blocked) * 1e-9;
  return s;
}

std::string Pipeline::Impl::graph_dot() const { return flow_->dot(); }

std::size_t Pipeline::Impl::samples_created() const { return flow_->samples_->created(); }
std::size_t Pipeline::Impl::samples_limit() const { return flow_->samples_->limit(); }

std::vector<std::int64_t> Pipeline::Impl::edge_peaks() const {
  std::vector<std::int64_t> out;
  const SlotCounters* producer = flow_->source_counters_.get();
  for (const auto& step : flow_->steps_) {
    std::int64_t most = 0;
    for (std::size_t k = 0; k < flow_->slot_count_; ++k) {
      most = std::max(most, producer[k].out_peak.load(std::memory_order_relaxed));
    }
    out.push_back(most);
    producer = step->counters.get();
  }
  return out;
}

std::vector<int> Pipeline::Impl::edge_capacities() const {
  std::vector<int> out;
  for (const auto& step : flow_->steps_) out.push_back(step->capacity);
  return out;
}

}  // namespace millrace
