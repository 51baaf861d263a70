// Statistics: the figures the executor's steps keep (engine/flow_graph.hpp), read into RunStats.
#include <algorithm>

#include "engine/flow_graph.hpp"

namespace millrace {

std::vector<FlowGraph::StepFigures> FlowGraph::figures(std::int64_t now) const {
  auto read = [&](const SlotCounters* slots, const StepState& state) {
    StepFigures f;
    for (std::size_t k = 0; k < slot_count_; ++k) {
      f.items += slots[k].items.load(std::memory_order_relaxed);
      f.busy_ns += slots[k].busy_ns.load(std::memory_order_relaxed);
      f.errors += slots[k].errors.load(std::memory_order_relaxed);
      f.out_peak = std::max(f.out_peak, slots[k].out_peak.load(std::memory_order_relaxed));
    }
    f.integrals = state.integrals(now);
    return f;
  };
  std::vector<StepFigures> out;
  out.reserve(steps_.size() + 1);
  out.push_back(read(source_counters_.get(), source_state_));
  for (const auto& step : steps_) {
    StepFigures f = read(step->counters.get(), step->state);
    f.stage = step->stage;
    f.capacity = step->capacity;
    f.concurrency = step->concurrency;
    f.concurrency_auto = step->concurrency_auto;
    f.chosen = step->chosen.load(std::memory_order_relaxed);
    out.push_back(f);
  }
  return out;
}

RunStats Pipeline::Impl::build_stats(bool final) const {
  RunStats s;
  s.threads = plan_.threads;
  s.rank = plan_.stages.front().stage->context().rank;
  std::tie(s.part_index, s.num_parts) =
      static_cast<const SourceStage&>(*plan_.stages.front().stage).part();
  s.images = images_.load();
  s.batches = batches_.load();
  s.has_sink = has_sink_;
  s.sink_images = sunk_images_.load();
  s.sink_batches = sunk_batches_.load();
  s.samples_read = samples_read_.load();
  s.expected_samples = expected_samples_;
  const std::int64_t idle = idle_ns_.load();
  const std::int64_t end =
      (final && stopped_ns_.load() >= 0 ? stopped_ns_.load() : nanos_since(created_)) - idle;
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
  const std::vector<FlowGraph::StepFigures> figures = g.figures(now);
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
      const FlowGraph::StepFigures& next = figures.front();
      st.items = next.items;
      busy += next.busy_ns;
      // next() has no input edge: its own time between items is its busy time, not a wait.
      idle_blocked += static_cast<double>(next.integrals.blocked);
      idle_worker += static_cast<double>(next.integrals.wait_worker);
    }
    bool first_step = true;
    for (std::size_t k = 1; k < figures.size(); ++k) {
      const FlowGraph::StepFigures& step = figures[k];
      if (step.stage != &p) continue;
      if (i != 0) st.items += step.items;
      busy += step.busy_ns;
      st.errors += step.errors;
      idle_input += static_cast<double>(step.integrals.wait_input);
      idle_blocked += static_cast<double>(step.integrals.blocked);
      idle_worker += static_cast<double>(step.integrals.wait_worker);
      if (step.concurrency_auto) st.concurrency = step.chosen > 0 ? step.chosen : step.concurrency;
      if (first_step) {
        // The edge into the step: its producer's output edge.
        const FlowGraph::StepFigures& producer = figures[k - 1];
        st.queue_peak = static_cast<int>(producer.out_peak);
        st.queue_mean = static_cast<double>(producer.integrals.occupancy) * 1e-9 / wall;
        st.queue_capacity = step.capacity;
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
  s.consumer_wait_seconds = static_cast<double>(figures.back().integrals.blocked) * 1e-9;
  return s;
}

std::vector<std::int64_t> Pipeline::Impl::edge_peaks() const {
  // The edge into each step is its producer's output edge.
  const std::vector<FlowGraph::StepFigures> figures = flow_->figures(flow_->end_or_now_ns());
  std::vector<std::int64_t> out;
  for (std::size_t k = 0; k + 1 < figures.size(); ++k) out.push_back(figures[k].out_peak);
  return out;
}

std::vector<int> Pipeline::Impl::edge_capacities() const {
  const std::vector<FlowGraph::StepFigures> figures = flow_->figures(flow_->end_or_now_ns());
  std::vector<int> out;
  for (std::size_t k = 1; k < figures.size(); ++k) out.push_back(figures[k].capacity);
  return out;
}

}  // namespace millrace
