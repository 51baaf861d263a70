// `files`: the source that reads image files from a folder tree or an im2rec .lst list.
//
// The keys, epochs, parts and shuffle every source shares are
// stages/common/source/source_base.hpp's: `limit` takes the data set's first N entries, then
// `num_parts` / `part_index` split them. `split: global` (the default) deals each epoch's order
// over the whole data set to the parts in turn, as PyTorch's DistributedSampler does: part k takes
// positions k, k + num_parts, ..., every part the same count (a part short of one repeats a sample
// from the epoch's start, delivered as padding), so a shuffled epoch mixes the whole data set on
// every part and a resumed epoch may be dealt to another number of parts. `split: contiguous` keeps
// MXNet's semantics: part k is a contiguous slice of the list, and the shuffle permutes within it.
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

#include "engine/registry.hpp"
#include "stages/common/source/image_list.hpp"
#include "stages/common/source/source_base.hpp"

namespace millrace {

class FilesSource final : public SourceStage {
 public:
  struct Params : SourceParams {
    std::string root;
    std::string list;
    int label_width = 1;
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
  Params params_;
  FileIndex entries_;
  // Scanned entries that are listed as skipped with their reason instead of being read.
  std::unordered_map<std::uint64_t, std::string> unreadable_;
  EpochCursor cursor_;
  int part_index_ = 0;
  int num_parts_ = 1;
  std::uint64_t digest_ = 0;
  std::uint64_t dataset_samples_ = 0;
};

}  // namespace millrace
