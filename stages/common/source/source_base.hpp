// What every source of a data set shares, written once: the keys a user sets on any of them
// (shuffle, seed, epochs, limit, num_parts, part_index, split), their check, the part a process
// reads, the epochs it reads, and each epoch's order (a reproducible shuffle) dealt to the parts
// (engine/deal.hpp). The `files` and `recordio` sources are built on it; a later source that knows
// its samples up front takes the same keys with the same meaning by building on it too.
//
// One meaning of `limit` for every source: the first N samples of the data set in its own order
// (the list's lines, the scanned folder's sorted paths, the records in file order), taken before
// the data set is split into parts, so that the parts of a run together read exactly those N,
// whatever their number. 0 takes all.
//
// Contract: plain values and a cursor owned by one source. The cursor is used from the source's
// serial next() and its prepare() only; it holds no lock. An epoch's order is drawn from
// (seed, salt, epoch) alone, so it is the same on every machine, for every thread count, and an
// epoch can be entered directly on resume.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/deal.hpp"
#include "engine/schema.hpp"
#include "engine/stage.hpp"

namespace millrace {

// The keys every source shares. A source's Params derive from it.
struct SourceParams {
  bool shuffle = false;
  std::int64_t seed = -1;  // -1: pipeline.seed
  int epochs = 1;
  std::int64_t limit = 0;  // the first N of the data set, before the split into parts; 0: all
  int num_parts = 0;       // 0: the number of processes in the run (1 without MPI)
  int part_index = -1;     // -1: this process's rank
  // `split: contiguous` (MXNet's slices) rather than `global` (the deal).
  bool contiguous = false;
};

// How one source describes the keys whose details are its own.
struct SourceKeyDocs {
  std::string shuffle;
  std::string num_parts;
  std::string split;
};

// Adds the shared keys to a source's schema, in one order, at the place the source calls it.
template <class P>
void add_source_keys(Schema<P>& s, const SourceKeyDocs& docs) {
  s.boolean("shuffle", &P::shuffle, docs.shuffle);
  s.integer64("seed", &P::seed, "shuffle seed; -1 takes pipeline.seed", -1,
              std::numeric_limits<std::int64_t>::max());
  s.integer("epochs", &P::epochs, "passes over the dataset", 1, 1 << 20);
  s.integer64("limit", &P::limit,
              "use only the first N samples of the dataset, in its order, before it is split "
              "into parts (0: all)",
              0, std::numeric_limits<std::int64_t>::max());
  s.integer("num_parts", &P::num_parts, docs.num_parts, 0, 1 << 20);
  s.integer("part_index", &P::part_index,
            "the part this process reads, 0-based; -1: the process's MPI rank", -1, 1 << 20);
  s.template choice<bool>("split", &P::contiguous, docs.split,
                          {{"global", false}, {"contiguous", true}});
}

// The shared keys' checks that need more than one key: a part_index that no part has.
void check_source_keys(const SourceParams& p, const ConfigNode& node, const std::string& where,
                       Diagnostics& d);

// The seed a source shuffles with: its own, else the pipeline's.
std::uint64_t source_seed(const SourceParams& p, const StageContext& context);

// The part this process reads, {index, count}: as configured, else this process's rank of the
// run. Throws std::runtime_error naming the stage when the index is not a part.
std::pair<int, int> resolve_part(const SourceParams& p, const StageContext& context,
                                 const std::string& stage);

// The epochs a source reads and where it is in the current one. With an order (the source knows
// its samples up front), each epoch's order is the identity or a Fisher-Yates shuffle drawn from
// (seed, salt, epoch), dealt to the parts when `global`.
class EpochCursor {
 public:
  EpochCursor() = default;
  EpochCursor(int epochs, std::uint64_t seed, std::uint64_t salt)
      : end_epoch_(epochs), seed_(seed), salt_(salt) {}

  // Samples [0, size) in each epoch's order; this process is `part` of `parts`, dealt its share
  // when `global`, else reading every position.
  void set_order(std::size_t size, int part, int parts, bool global);
  std::size_t order_size() const { return order_.size(); }

  bool done() const { return epoch_ >= end_epoch_; }
  bool open() const { return epoch_open_; }
  int epoch() const { return epoch_; }
  // Opens the current epoch: draws its order (when there is one) and sets where it starts.
  void begin_epoch(bool shuffle);
  // Closes the current epoch; the next begin_epoch() opens the following one.
  void end_epoch() {
    epoch_open_ = false;
    ++epoch_;
  }
  // The current epoch's next position (an index into [0, size) and whether it repeats one as
  // padding), or nothing at its end.
  std::optional<Deal::Position> next();

  // SourceStage's questions, for a source with an order.
  std::uint64_t samples_per_epoch() const { return deal(0).count(); }
  std::uint64_t total_samples() const;
  // Starts the first epoch read at `start` of its global order; false once an epoch is open or
  // past the order's end.
  bool set_global_start(std::uint64_t start);
  // Reads the epochs [first, first + count) (count 0: up to `configured`).
  bool set_epochs(std::uint32_t first, std::uint32_t count, int configured);

 private:
  Deal deal(std::uint64_t start) const;

  int epoch_ = 0;
  int first_epoch_ = 0;  // the epochs to read: [0, `epochs`), or as set_epochs says
  int end_epoch_ = 0;
  bool epoch_open_ = false;
  std::uint64_t seed_ = 0;
  std::uint64_t salt_ = 0;
  std::vector<std::uint32_t> order_;
  bool global_ = false;
  int part_ = 0;
  int parts_ = 1;
  std::size_t position_ = 0;
  std::uint64_t global_start_ = 0;   // where the first epoch read begins in its global order
  std::uint64_t epoch_start_ = 0;    // ... and the current epoch
  std::uint64_t epoch_samples_ = 0;  // positions this part takes in the current epoch
};

}  // namespace millrace
