// The pipeline's graph in Graphviz DOT: every TBB node, edge capacity and token buffer.
#include <sstream>

#include "engine/flow_graph.hpp"

namespace millrace {

namespace {

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

}  // namespace

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

}  // namespace millrace
