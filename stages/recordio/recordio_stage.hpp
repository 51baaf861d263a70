// `recordio`: the source that reads MXNet RecordIO image records (.rec files, with or without
// their .idx), so that datasets packed by im2rec or `millrace pack` feed the same pipeline as
// image files.
//
// Contract:
// - A sample is one record: id = the record header's id, path = "FILE@OFFSET" (the byte offset
//   of the record's first part header), labels = the header's (flag 0: its one label; flag k > 0:
//   the k labels after it) or, with `labels`, the .lst's labels for that id. `bytes` holds the
//   encoded image (the payload after the header), so `decode` follows unchanged. Labels pass
//   through augmentation unchanged: a crop or mirror does not touch them.
// - next() is serial and load() runs concurrently on different samples. With an index, next()
//   only picks the record in the epoch's order and load() reads it with pread on a descriptor
//   shared read-only by all loads. Without one, next() reads the files sequentially through one
//   buffered RecordReader (large reads, never one per record) and load() parses the header.
// - Damaged records are per-sample errors (on_error applies) whose message carries the byte
//   offset; reading continues at the next record head. So is a record whose payload is above
//   `max_record_bytes`: it is skipped whole, and no more than the limit of it is held in memory
//   (an indexed read refuses a one-part record from its header, and reads at most the largest
//   frame a payload under the limit can have). A framing error
//   found by next() travels in the sample's `error` to load(), which raises it: an exception from
//   next() would stop the run.
// - With an index, `split: global` (the default) deals each epoch's order over all the records
//   to the parts in turn (engine/deal.hpp: DistributedSampler's split, equal counts), so a
//   resumed epoch may be dealt to another number of parts. `split: contiguous`, and every run
//   without an index, shard as MXNet does: with an index by record count (part k = records
//   [k*nstep, min(N,(k+1)*nstep)) in offset order, nstep = ceil(N/num_parts)); without one by bytes
//   over the concatenated files (boundaries every ceil(size/num_parts) bytes rounded up to 4, each
//   moved forward to the next record head). Every record lands in exactly one part. By default an
//   MPI run gives each process the part of its rank.
// - The keys, epochs, parts and shuffle every source shares are stages/common/source/
//   source_base.hpp's. `limit` takes the data set's first N records in file order before the
//   split into parts, as for every source: with an index from the index; without one, when there
//   are several parts, prepare() reads the first N records once to find where they end and cuts
//   every part's byte range there.
// - Shuffling draws from a counter-based generator keyed on (seed, epoch): with an index a new
//   full permutation of the part each epoch; without one a buffer of `shuffle_buffer` records
//   (memory: that many encoded images), never the whole file.
// - The file list, indexes and labels are read once in prepare() and never change in a run; the
//   descriptors it opens are owned by the stage and closed by its destructor.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/random.hpp"
#include "engine/registry.hpp"
#include "stages/common/source/source_base.hpp"
#include "stages/recordio/recordio_kernel.hpp"

namespace millrace {

class RecordIoSource final : public SourceStage {
 public:
  struct Params : SourceParams {
    std::vector<std::string> path;
    std::string index;
    std::string labels;
    int label_width = 1;
    int shuffle_buffer = 1024;
    std::int64_t max_record_bytes = static_cast<std::int64_t>(recordio::kDefaultMaxRecordBytes);
  };
  static StageInfo info();
  static const Schema<Params>& schema();
  static void check(const Params& p, const ConfigNode& node, const std::string& where,
                    Diagnostics& d);

  RecordIoSource(StageContext context, Params params);
  ~RecordIoSource() override;

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

  // What prepare() found: the .rec files in reading order and whether they are read by index.
  const std::vector<std::string>& files() const { return file_paths_; }
  bool indexed() const { return indexed_; }

 private:
  struct Indexed {
    std::uint32_t file = 0;
    std::uint64_t key = 0;
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
  };
  struct Range {
    std::uint32_t file = 0;
    std::uint64_t begin = 0;
    std::uint64_t end = recordio::kToEnd;
  };
  struct Pending {
    std::vector<std::uint8_t> payload;
    std::uint64_t offset = 0;
    std::uint32_t file = 0;
    std::string error;
  };

  void prepare_indexed(const std::vector<std::uint64_t>& sizes);
  void prepare_ranges(const std::vector<std::uint64_t>& sizes);
  void begin_epoch();
  bool global() const { return indexed_ && !params_.contiguous; }
  // Without an index: where the record after the data set's first `limit` begins, in the
  // concatenation of the files (the end of all of them when there are no more).
  std::uint64_t limit_end(const std::vector<std::uint64_t>& sizes) const;
  bool pull(Pending& item);
  void emit(Sample& sample, Pending& item);
  void finish_load(Sample& sample, std::uint64_t offset) const;

  Params params_;
  std::uint64_t seed_ = 0;
  EpochCursor cursor_;
  int part_index_ = 0;
  int num_parts_ = 1;
  std::vector<std::string> file_paths_;
  bool indexed_ = false;
  std::unordered_map<std::uint64_t, std::vector<float>> list_labels_;

  // With an index: the part's records in offset order, read with pread in load().
  std::vector<Indexed> records_;
  std::vector<int> fds_;
  std::uint64_t digest_ = 0;
  std::uint64_t dataset_samples_ = 0;

  // Without: the part's byte range in each file, read in order by one reader.
  std::vector<Range> ranges_;
  std::size_t range_ = 0;
  std::unique_ptr<recordio::RecordReader> reader_;
  std::int64_t pulled_ = 0;
  std::vector<Pending> buffer_;  // shuffle buffer: live items first, then spares for reuse
  std::size_t buffered_ = 0;
  Pending direct_;
  CounterRng rng_{0, 0, 0, 0};
};

}  // namespace millrace
