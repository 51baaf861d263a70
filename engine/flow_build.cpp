// Graph building: the steps, their edges' capacities, the pools that bound memory, and the TBB
// nodes that connect them (see engine/flow_graph.hpp).
#include <oneapi/tbb/info.h>

#include "engine/flow_graph.hpp"

namespace millrace {

FlowGraph::FlowGraph(Pipeline::Impl& owner, PipelinePlan& plan, Clock::time_point created)
    : owner_(owner), plan_(plan), owner_created_(created) {}

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
    trace_ =
        std::make_unique<ChromeTrace>(slot_count_, static_cast<std::size_t>(plan_.trace_events));
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

}  // namespace millrace
