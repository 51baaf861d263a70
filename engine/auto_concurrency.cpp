// `concurrency: auto`: after the first items, each auto stage's share of the threads from its
// measured cost per item (see engine/flow_graph.hpp).
#include <cmath>
#include <cstdio>
#include <sstream>

#include "engine/flow_graph.hpp"

namespace millrace {

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

}  // namespace millrace
