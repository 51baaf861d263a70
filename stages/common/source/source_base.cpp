#include "stages/common/source/source_base.hpp"

#include <numeric>
#include <stdexcept>
#include <tuple>

#include "engine/random.hpp"

namespace millrace {

void check_source_keys(const SourceParams& p, const ConfigNode& node, const std::string& where,
                       Diagnostics& d) {
  if (p.num_parts > 0 && p.part_index >= p.num_parts) {
    const ConfigNode* n = node.find("part_index");
    d.error(n != nullptr ? n->where : node.where,
            where + ": 'part_index' is " + std::to_string(p.part_index) + " but num_parts is " +
                std::to_string(p.num_parts) + " (parts are 0.." + std::to_string(p.num_parts - 1) +
                ")");
  }
}

std::uint64_t source_seed(const SourceParams& p, const StageContext& context) {
  return p.seed >= 0 ? static_cast<std::uint64_t>(p.seed) : context.seed;
}

std::pair<int, int> resolve_part(const SourceParams& p, const StageContext& context,
                                 const std::string& stage) {
  const int parts = p.num_parts > 0 ? p.num_parts : context.world;
  const int part = p.part_index >= 0 ? p.part_index : context.rank;
  if (part >= parts || part < 0) {
    throw std::runtime_error("stage '" + stage + "': part_index " + std::to_string(part) +
                             " is not in 0.." + std::to_string(parts - 1));
  }
  return {part, parts};
}

void EpochCursor::set_order(std::size_t size, int part, int parts, bool global) {
  order_.resize(size);
  part_ = part;
  parts_ = parts;
  global_ = global;
}

void EpochCursor::begin_epoch(bool shuffle) {
  std::iota(order_.begin(), order_.end(), 0U);
  if (shuffle) {
    // Fisher-Yates with our own generator: std::shuffle's draws differ between library versions.
    CounterRng rng(seed_, salt_, static_cast<std::uint64_t>(epoch_), 0);
    for (std::size_t i = order_.size(); i > 1; --i) {
      const auto j = static_cast<std::size_t>(rng.uniform_int(0, static_cast<int>(i - 1)));
      std::swap(order_[i - 1], order_[j]);
    }
  }
  epoch_start_ = epoch_ == first_epoch_ ? global_start_ : 0;
  epoch_samples_ = deal(epoch_start_).count();
  position_ = 0;
  epoch_open_ = true;
}

std::optional<Deal::Position> EpochCursor::next() {
  if (position_ == epoch_samples_) return std::nullopt;
  Deal::Position at = deal(epoch_start_).at(position_++);
  at.index = order_[at.index];
  return at;
}

std::uint64_t EpochCursor::total_samples() const {
  if (end_epoch_ <= first_epoch_) return 0;
  return deal(global_start_).count() +
         deal(0).count() * static_cast<std::uint64_t>(end_epoch_ - first_epoch_ - 1);
}

bool EpochCursor::set_global_start(std::uint64_t start) {
  if (epoch_open_ || start > order_.size()) return false;
  global_start_ = start;
  return true;
}

bool EpochCursor::set_epochs(std::uint32_t first, std::uint32_t count, int configured) {
  // Every epoch's order is drawn from (seed, epoch) alone, so an epoch can be entered directly.
  const auto range = epoch_range(first, count, configured);
  if (epoch_open_ || !range) return false;
  std::tie(epoch_, end_epoch_) = *range;
  first_epoch_ = epoch_;
  return true;
}

Deal EpochCursor::deal(std::uint64_t start) const {
  if (!global_) return {order_.size(), start, 1, 0};
  return {order_.size(), start, static_cast<std::uint64_t>(parts_),
          static_cast<std::uint64_t>(part_)};
}

}  // namespace millrace
