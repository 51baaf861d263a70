// What the trace observer's numbers stand for: the spans, edges and threads of this graph.
#include "engine/flow_graph.hpp"

namespace millrace {

void FlowGraph::write_trace(const std::string& path, const std::string& name) const {
  if (!trace_) return;
  ChromeTrace::Names names;
  names.pipeline = name;
  // Span names: the source's next(), then every step; counter names: the edge into every step.
  names.spans.push_back(plan_.stages.front().name + " next");
  for (const auto& step : steps_) {
    std::string n = step->stage != nullptr ? step->stage->name : std::string("deliver");
    if (step->kind == StepKind::kLoad) n += " load";
    names.spans.push_back(n);
    names.edges.push_back("queue " + n);
  }
  for (std::size_t r = 0; r < slot_count_; ++r) {
    std::string thread = "worker " + std::to_string(r);
    if (r >= static_cast<std::size_t>(plan_.threads)) {
      thread = "other thread";
      for (const auto& step : steps_) {
        if (step->kind == StepKind::kBatchTransform && step->own_slot == r) {
          thread = step->stage->name + " thread";
        }
      }
    }
    names.threads.push_back(thread);
  }
  trace_->write(path, names);
}

}  // namespace millrace
