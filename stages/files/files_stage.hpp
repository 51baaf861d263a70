// `files`: the source that reads image files from a folder tree or an im2rec .lst list.
//
// `num_parts` / `part_index` split the dataset (after `limit`). `split: global` (the default)
// deals each epoch's order over the whole data set to the parts in turn, as PyTorch's
// DistributedSampler does: part k takes positions k, k + num_parts, ..., every part the same count
// (a part short of one repeats a sample from the epoch's start, delivered as padding), so a
// shuffled epoch mixes the whole data set on every part and a resumed epoch may be dealt to
// another number of parts. `split: contiguous` keeps MXNet's semantics: part k is a contiguous
// slice of the list, and the shuffle permutes within it.
//
// Contract: next() runs serially on one worker (cheap: it only fills a sample's id, path and
// labels); load() reads the file's bytes and runs concurrently on different samples. The file
// list is built once, in prepare(), and never changes during a run. Shuffling draws a new
// permutation every epoch from a counter-based generator keyed on (seed, epoch), so it is the same
// on every machine and for every thread count.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/deal.hpp"
#include "engine/registry.hpp"
#include "stages/common/source/image_list.hpp"

namespace millrace {

class FilesSource final : public SourceStage {
 public:
  struct Params {
    std::string root;
    std::string list;
    int label_width = 1;
    bool shuffle = false;
    std::int64_t seed = -1;
    int epochs = 1;
    std::int64_t limit = 0;
    int num_parts = 0;    // 0: the number of processes in the run (1 without MPI)
    int part_index = -1;  // -1: this process's rank
    // `split: contiguous` (MXNet's slices) rather than `global`.
    bool contiguous = false;
    // A file is read whole into memory: 256 MiB, as recordio's max_record_bytes.
    std::int64_t max_file_bytes = std::int64_t{256} << 20;
  };
  static StageInfo info();
  static const Schema<Params>& schema();
  static void check(const Params& p, const ConfigNode& node, const std::string& where,
                    Diagnostics& d);

  FilesSource(StageContext context, Params params);

  void prepare() override;
  SourceStatus next(Sample& sample) override;
  void load(Sample& sample) const override;
  bool has_load() const override { return true; }
  std::optional<std::uint64_t> total_samples() const override;
  std::pair<int, int> part() const override { return {part_index_, num_parts_}; }
  std::optional<std::uint64_t> samples_per_epoch() const override;
  bool set_epochs(std::uint32_t first, std::uint32_t count) override;
  Split split() const override;
  bool set_global_start(std::uint64_t start) override;

  const FileIndex& entries() const { return entries_; }

 private:
  void begin_epoch();
  // How an epoch whose first `start` positions were taken earlier is dealt to this part.
  Deal deal(std::uint64_t start) const;
  bool global() const { return !params_.contiguous && num_parts_ > 1; }

  Params params_;
  std::uint64_t seed_ = 0;
  FileIndex entries_;
  // Scanned entries that are listed as skipped with their reason instead of being read.
  std::unordered_map<std::uint64_t, std::string> unreadable_;
  std::vector<std::uint32_t> order_;
  std::size_t position_ = 0;
  int epoch_ = 0;
  int first_epoch_ = 0;  // the epochs to read: [0, `epochs`), or as set_epochs says
  int end_epoch_ = 0;
  bool epoch_open_ = false;
  int part_index_ = 0;
  int num_parts_ = 1;
  std::uint64_t digest_ = 0;
  std::uint64_t dataset_samples_ = 0;
  std::uint64_t global_start_ = 0;   // where the first epoch read begins in its global order
  std::uint64_t epoch_start_ = 0;    // ... and the current epoch
  std::uint64_t epoch_samples_ = 0;  // positions this part takes in the current epoch
};

}  // namespace millrace
