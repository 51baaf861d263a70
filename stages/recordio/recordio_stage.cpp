#include "stages/recordio/recordio_stage.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <system_error>
#include <tuple>

namespace millrace {

namespace fs = std::filesystem;

namespace {

bool has_rec_extension(const fs::path& p) { return p.extension() == ".rec"; }

// The .rec files a `path` entry names: the file itself, or a folder's .rec files sorted by name.
// Throws std::runtime_error when a folder cannot be listed.
std::vector<std::string> rec_files_of(const std::string& entry) {
  std::error_code ec;
  if (!fs::is_directory(entry, ec)) return {entry};
  std::vector<std::string> out;
  for (fs::directory_iterator it(entry, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (it->is_regular_file(type_ec) && has_rec_extension(it->path())) {
      out.push_back(it->path().string());
    }
  }
  if (ec) throw std::runtime_error("cannot list '" + entry + "': " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

std::string sibling_index(const std::string& rec) {
  return fs::path(rec).replace_extension(".idx").string();
}

std::string errno_text() { return std::error_code(errno, std::generic_category()).message(); }

// Writes "FILE@OFFSET" into a sample's reused path string (no allocation once it is long enough).
void locate(std::string& path, const std::string& file, std::uint64_t offset) {
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, offset).ptr;
  path.assign(file);
  path += '@';
  path.append(digits, end);
}

// The offset that next() wrote after the last '@' of a sample's path.
std::uint64_t offset_of(const std::string& path) {
  const std::size_t at = path.rfind('@');
  std::uint64_t offset = 0;
  if (at != std::string::npos) {
    std::from_chars(path.data() + at + 1, path.data() + path.size(), offset);
  }
  return offset;
}

}  // namespace

StageInfo RecordIoSource::info() {
  return {"recordio",
          "MXNet RecordIO image records (.rec, read by .idx when there is one, else sequentially)",
          StageShape::kSource,
          "one or more .rec files (im2rec, millrace pack), with or without their .idx",
          "samples: encoded image bytes, id (record header), path FILE@OFFSET, labels (header or "
          ".lst; augmentation passes them through unchanged)",
          true,
          true,
          {SampleContent::kAny, SampleContent::kEncoded}};
}

const Schema<RecordIoSource::Params>& RecordIoSource::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.custom("path", "path | list of paths",
             "a .rec file, a folder of .rec files (read in name order) or a list of .rec files",
             "(required)",
             [](Params& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
               std::vector<std::string> paths;
               if (n.is_sequence()) {
                 if (n.items.empty()) {
                   d.error(n.where, c + " expects at least one path");
                   return;
                 }
                 bool ok = true;
                 for (const auto& item : n.items) {
                   std::string v;
                   ok = read_path(item, v, c, d) && ok;
                   paths.push_back(std::move(v));
                 }
                 if (!ok) return;
               } else {
                 std::string v;
                 if (!read_path(n, v, c, d)) return;
                 paths.push_back(std::move(v));
               }
               p.path = std::move(paths);
             })
        .required();
    s.path("index", &Params::index,
           ".idx of a single .rec file; default: the .idx beside each .rec (same name), used "
           "when every file has one; without an index the files are read sequentially");
    s.path("labels", &Params::labels,
           "im2rec .lst whose labels, keyed by record id, replace the records' own");
    s.integer("label_width", &Params::label_width,
              "labels per sample; a record carrying another number (flag) is an error", 1, 4096);
    add_source_keys(
        s, {"with an index a new permutation of the part every epoch; without, a shuffle buffer",
            "split the dataset into this many parts (MXNet semantics: by record count with an "
            "index, by bytes without) and read one; 0: one part per process of an MPI run",
            "how the parts share an epoch with an index: global (one order over all the records "
            "dealt to the parts in turn, as DistributedSampler; equal counts) or contiguous "
            "(MXNet's slices, shuffled within); without an index always MXNet's byte ranges"});
    s.integer("shuffle_buffer", &Params::shuffle_buffer,
              "records held for shuffling when there is no index", 1, 1 << 24);
    s.integer64("max_record_bytes", &Params::max_record_bytes,
                "a record whose payload is larger than this is a per-sample error, skipped without "
                "holding more than this in memory",
                1, std::numeric_limits<std::int64_t>::max());
    return s;
  }();
  return schema;
}

void RecordIoSource::check(const Params& p, const ConfigNode& node, const std::string& where,
                           Diagnostics& d) {
  auto at = [&](const char* key) {
    const ConfigNode* n = node.find(key);
    return n != nullptr ? n->where : node.where;
  };
  const ConfigNode* path_node = node.find("path");
  bool single_file = p.path.size() == 1;
  for (std::size_t i = 0; i < p.path.size(); ++i) {
    const Location& loc =
        path_node != nullptr && path_node->is_sequence() && i < path_node->items.size()
            ? path_node->items[i].where
            : at("path");
    std::error_code ec;
    const std::string& entry = p.path[i];
    if (fs::is_directory(entry, ec)) {
      single_file = false;
      try {
        if (rec_files_of(entry).empty()) {
          d.error(loc, where + ": 'path' folder '" + entry + "' holds no .rec files");
        }
      } catch (const std::runtime_error& e) {
        d.error(loc, where + ": 'path': " + e.what());
      }
    } else if (!fs::is_regular_file(entry, ec)) {
      d.error(loc, where + ": 'path' '" + entry + "' does not exist");
    }
  }
  if (!p.index.empty()) {
    std::error_code ec;
    if (!single_file) {
      d.error(at("index"), where +
                               ": 'index' goes with a single .rec file; with several, the .idx "
                               "beside each one is used");
    } else if (!fs::is_regular_file(p.index, ec)) {
      d.error(at("index"), where + ": 'index' file '" + p.index + "' does not exist");
    }
  }
  if (!p.labels.empty()) {
    std::error_code ec;
    if (!fs::is_regular_file(p.labels, ec)) {
      d.error(at("labels"), where + ": 'labels' file '" + p.labels + "' does not exist");
    }
  }
  check_source_keys(p, node, where, d);
}

RecordIoSource::RecordIoSource(StageContext context, Params params)
    : SourceStage(std::move(context)),
      params_(std::move(params)),
      seed_(source_seed(params_, this->context())),
      cursor_(params_.epochs, seed_, stable_hash("recordio.shuffle")) {}

RecordIoSource::~RecordIoSource() {
  for (const int fd : fds_) ::close(fd);
}

void RecordIoSource::prepare() {
  const std::string stage = "stage '" + name() + "': ";
  file_paths_.clear();
  try {
    for (const auto& entry : params_.path) {
      const auto files = rec_files_of(entry);
      file_paths_.insert(file_paths_.end(), files.begin(), files.end());
    }
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(stage + e.what());
  }
  if (file_paths_.empty()) throw std::runtime_error(stage + "no .rec files found");
  std::tie(part_index_, num_parts_) = resolve_part(params_, context(), name());
  if (file_paths_.size() > std::numeric_limits<std::uint32_t>::max()) {
    throw std::runtime_error(stage + "too many .rec files");
  }
  std::vector<std::uint64_t> sizes;
  for (const auto& f : file_paths_) {
    std::error_code ec;
    const auto size = fs::file_size(f, ec);
    if (ec) throw std::runtime_error(stage + f + ": " + ec.message());
    // An empty file is an output that was never written (a pack stopped before its first
    // record), not a data set of no images.
    if (size == 0)
      throw std::runtime_error(stage + f + ": the file is empty (0 bytes), no records");
    sizes.push_back(size);
  }

  if (!params_.labels.empty()) {
    const auto entries = recordio::read_list(params_.labels);
    list_labels_.clear();
    for (const auto& e : entries) {
      if (e.labels.size() != static_cast<std::size_t>(params_.label_width)) {
        throw std::runtime_error(
            stage + params_.labels + " has " + std::to_string(e.labels.size()) +
            " label(s) per line but label_width is " + std::to_string(params_.label_width));
      }
      list_labels_[e.index] = e.labels;
    }
  }

  indexed_ = !params_.index.empty();
  if (!indexed_) {
    indexed_ = std::all_of(file_paths_.begin(), file_paths_.end(), [](const std::string& f) {
      std::error_code ec;
      return fs::is_regular_file(sibling_index(f), ec);
    });
  }
  if (indexed_) {
    prepare_indexed(sizes);
  } else {
    prepare_ranges(sizes);
  }
}

void RecordIoSource::prepare_indexed(const std::vector<std::uint64_t>& sizes) {
  std::vector<Indexed> all;
  for (std::size_t f = 0; f < file_paths_.size(); ++f) {
    const std::string idx = params_.index.empty() ? sibling_index(file_paths_[f]) : params_.index;
    for (const auto& e : recordio::read_index(idx, sizes[f])) {
      all.push_back({static_cast<std::uint32_t>(f), e.key, e.offset, e.size});
    }
  }
  if (all.empty()) throw std::runtime_error("stage '" + name() + "': the index lists no records");
  // The data set is its first `limit` records, in file order, whatever the parts.
  if (params_.limit > 0 && all.size() > static_cast<std::uint64_t>(params_.limit)) {
    all.resize(static_cast<std::size_t>(params_.limit));
  }
  const std::uint64_t n = all.size();
  const auto parts = static_cast<std::uint64_t>(params_.contiguous ? num_parts_ : 1);
  const std::uint64_t step = (n + parts - 1) / parts;
  const std::uint64_t first =
      params_.contiguous ? std::min(n, step * static_cast<std::uint64_t>(part_index_)) : 0;
  const std::uint64_t last = std::min(n, first + step);
  if (last - first > std::numeric_limits<std::int32_t>::max()) {
    throw std::runtime_error("stage '" + name() + "': a part of more than 2^31 records");
  }
  records_.assign(all.begin() + static_cast<std::ptrdiff_t>(first),
                  all.begin() + static_cast<std::ptrdiff_t>(last));
  // The data set's identity, for checking a resumed position: the records' keys and sizes.
  std::uint64_t digest = stable_hash("recordio");
  for (const Indexed& r : records_) {
    for (const std::uint64_t v : {r.key, r.size}) {
      for (unsigned k = 0; k < sizeof v; ++k) {  // FNV-1a, as stable_hash
        digest ^= (v >> (8 * k)) & 0xFFU;
        digest *= 0x100000001B3ull;
      }
    }
  }
  digest_ = digest;
  dataset_samples_ = params_.contiguous ? n : records_.size();
  for (const int fd : fds_) ::close(fd);
  fds_.clear();
  for (const auto& f : file_paths_) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(f + ": cannot open: " + errno_text());
    fds_.push_back(fd);
  }
  cursor_.set_order(records_.size(), part_index_, num_parts_, global());
}

void RecordIoSource::prepare_ranges(const std::vector<std::uint64_t>& sizes) {
  const std::uint64_t total = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
  const auto parts = static_cast<std::uint64_t>(num_parts_);
  const std::uint64_t step = recordio::align4((total + parts - 1) / parts);
  const auto k = static_cast<std::uint64_t>(part_index_);
  const std::uint64_t begin = std::min(total, step * k);
  std::uint64_t end = k + 1 == parts ? recordio::kToEnd : std::min(total, step * (k + 1));
  // With one part the reader stops after `limit` records itself; with several, each part must
  // not read past the data set's first `limit`, which only a read from the start can find.
  if (params_.limit > 0 && parts > 1) end = std::min(end, limit_end(sizes));
  ranges_.clear();
  std::uint64_t start = 0;  // of the file in the concatenation
  for (std::size_t f = 0; f < sizes.size(); ++f) {
    const std::uint64_t file_end = start + sizes[f];
    // The part reads this file when its range holds a record head in it: from `begin` if that is
    // in the file (else from the file's start), up to the first head at or after `end`.
    if (begin < end && begin < file_end && end > start) {
      Range r;
      r.file = static_cast<std::uint32_t>(f);
      r.begin = begin > start ? begin - start : 0;
      r.end = end >= file_end ? recordio::kToEnd : end - start;
      ranges_.push_back(r);
    }
    start = file_end;
  }
}

std::uint64_t RecordIoSource::limit_end(const std::vector<std::uint64_t>& sizes) const {
  const auto limit = static_cast<std::uint64_t>(params_.limit);
  std::uint64_t counted = 0;
  std::uint64_t start = 0;  // of the file in the concatenation
  std::vector<std::uint8_t> payload;
  for (std::size_t f = 0; f < sizes.size(); ++f) {
    recordio::RecordReader reader(file_paths_[f], 0, recordio::kToEnd, recordio::kDefaultChunkBytes,
                                  static_cast<std::uint64_t>(params_.max_record_bytes));
    // Counted as pull() counts: a damaged record is a sample (a per-sample error) too.
    for (recordio::ReadResult r = reader.next(payload); r.status != recordio::ReadStatus::kEnd;
         r = reader.next(payload)) {
      if (counted == limit) return start + r.offset;
      ++counted;
    }
    start += sizes[f];
  }
  return recordio::kToEnd;
}

void RecordIoSource::begin_epoch() {
  cursor_.begin_epoch(indexed_ && params_.shuffle);
  if (!indexed_) {
    range_ = 0;
    reader_.reset();
    pulled_ = 0;
    buffered_ = 0;
    rng_ = CounterRng(seed_, stable_hash("recordio.shuffle"),
                      static_cast<std::uint64_t>(cursor_.epoch()), 0);
  }
}

bool RecordIoSource::pull(Pending& item) {
  if (params_.limit > 0 && pulled_ >= params_.limit) return false;
  while (range_ < ranges_.size()) {
    const Range& r = ranges_[range_];
    if (!reader_) {
      reader_ = std::make_unique<recordio::RecordReader>(
          file_paths_[r.file], r.begin, r.end, recordio::kDefaultChunkBytes,
          static_cast<std::uint64_t>(params_.max_record_bytes));
    }
    recordio::ReadResult result = reader_->next(item.payload);
    if (result.status == recordio::ReadStatus::kEnd) {
      reader_.reset();
      ++range_;
      continue;
    }
    item.offset = result.offset;
    item.file = r.file;
    item.error = std::move(result.error);
    ++pulled_;
    return true;
  }
  return false;
}

void RecordIoSource::emit(Sample& sample, Pending& item) {
  sample.id = 0;  // the header's id, set by load()
  sample.epoch = static_cast<std::uint32_t>(cursor_.epoch());
  locate(sample.path, file_paths_[item.file], item.offset);
  sample.labels.clear();
  // The sample's old buffer stays behind for the next record: no allocation in steady state.
  sample.bytes.swap(item.payload);
  sample.error = std::move(item.error);
  item.error.clear();
}

SourceStatus RecordIoSource::next(Sample& sample) {
  if (cursor_.done()) return SourceStatus::kEnd;
  if (!cursor_.open()) begin_epoch();
  auto end_epoch = [&] {
    cursor_.end_epoch();
    return SourceStatus::kEpochEnd;
  };
  if (indexed_) {
    const std::optional<Deal::Position> at = cursor_.next();
    if (!at) return end_epoch();
    const auto i = static_cast<std::uint32_t>(at->index);
    sample.repeat = at->repeat;
    const Indexed& r = records_[i];
    sample.id = r.key;  // im2rec writes the header id as the key; load() reads the header's
    sample.epoch = static_cast<std::uint32_t>(cursor_.epoch());
    locate(sample.path, file_paths_[r.file], r.offset);
    sample.labels.clear();
    // Tells load() which record to read; it replaces these bytes with the image.
    sample.bytes.resize(sizeof i);
    std::memcpy(sample.bytes.data(), &i, sizeof i);
    return SourceStatus::kSample;
  }
  if (!params_.shuffle) {
    if (!pull(direct_)) return end_epoch();
    emit(sample, direct_);
    return SourceStatus::kSample;
  }
  const auto capacity = static_cast<std::size_t>(params_.shuffle_buffer);
  while (buffered_ < capacity) {
    if (buffer_.size() == buffered_) buffer_.emplace_back();
    if (!pull(buffer_[buffered_])) break;
    ++buffered_;
  }
  if (buffered_ == 0) return end_epoch();
  const auto j = static_cast<std::size_t>(rng_.uniform_int(0, static_cast<int>(buffered_ - 1)));
  std::swap(buffer_[j], buffer_[buffered_ - 1]);
  --buffered_;
  emit(sample, buffer_[buffered_]);
  return SourceStatus::kSample;
}

void RecordIoSource::finish_load(Sample& sample, std::uint64_t offset) const {
  recordio::ImageHeader header;
  std::size_t image = 0;
  try {
    image =
        recordio::parse_image_payload(sample.bytes, list_labels_.empty() ? params_.label_width : 0,
                                      offset, header, sample.labels);
  } catch (const recordio::FormatError& e) {
    throw SampleError(e.what());
  }
  sample.id = header.id;
  if (!list_labels_.empty()) {
    const auto it = list_labels_.find(header.id);
    if (it == list_labels_.end()) {
      throw SampleError("record at offset " + std::to_string(offset) + ": id " +
                        std::to_string(header.id) + " has no line in " + params_.labels);
    }
    sample.labels.assign(it->second.begin(), it->second.end());
  }
  sample.bytes.erase(sample.bytes.begin(),
                     sample.bytes.begin() + static_cast<std::ptrdiff_t>(image));
}

void RecordIoSource::load(Sample& sample) const {
  if (!indexed_) {
    if (!sample.error.empty()) {
      std::string error;
      error.swap(sample.error);
      throw SampleError(error);
    }
    finish_load(sample, offset_of(sample.path));
    return;
  }
  std::uint32_t i = 0;
  if (sample.bytes.size() != sizeof i) {
    throw std::logic_error("recordio: load() without a record chosen by next()");
  }
  std::memcpy(&i, sample.bytes.data(), sizeof i);
  const Indexed& r = records_.at(i);
  // A record's frame is its payload plus 8 bytes of header per part, where each part but the last
  // ends at a magic dropped from the payload (one per 4 payload bytes at most), plus padding: at
  // most 3 * payload + 16 bytes. The index may give a record more room (a sparse index); reading
  // no further than that bound keeps a record above the limit from being read whole.
  const std::uint64_t limit = static_cast<std::uint64_t>(params_.max_record_bytes);
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  const std::uint64_t most_frame = limit > (kMax - 16) / 3 ? kMax : 3 * limit + 16;
  const bool capped = r.size > most_frame;
  const auto above_limit = [&](const std::string& size) {
    return SampleError("record at offset " + std::to_string(r.offset) + " holds " + size +
                       " bytes, above max_record_bytes " + std::to_string(limit) +
                       " (raise recordio's max_record_bytes to read it)");
  };
  if (r.size > limit) {
    // Room for more than the limit: a record of one part says its size in its header, so it is
    // refused from those 8 bytes rather than from its frame read in full.
    std::uint8_t header[8];
    if (::pread(fds_[r.file], header, sizeof header, static_cast<off_t>(r.offset)) ==
        static_cast<ssize_t>(sizeof header)) {
      const auto le32 = [&header](int at) {
        return static_cast<std::uint32_t>(header[at]) |
               static_cast<std::uint32_t>(header[at + 1]) << 8U |
               static_cast<std::uint32_t>(header[at + 2]) << 16U |
               static_cast<std::uint32_t>(header[at + 3]) << 24U;
      };
      const std::uint32_t magic = le32(0);
      const std::uint32_t lrec = le32(4);
      if (magic == recordio::kMagic && recordio::cflag_of(lrec) == 0 &&
          recordio::length_of(lrec) > limit) {
        throw above_limit(std::to_string(recordio::length_of(lrec)));
      }
    }
  }
  resize_reusing(sample.bytes, static_cast<std::size_t>(capped ? most_frame : r.size));
  std::size_t done = 0;
  while (done < sample.bytes.size()) {
    const ssize_t n = ::pread(fds_[r.file], sample.bytes.data() + done, sample.bytes.size() - done,
                              static_cast<off_t>(r.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw SampleError("record at offset " + std::to_string(r.offset) + ": cannot read: " +
                        (n < 0 ? errno_text() : std::string("the file ended early")));
    }
    done += static_cast<std::size_t>(n);
  }
  try {
    recordio::unframe_in_place(sample.bytes, r.offset);
  } catch (const recordio::FormatError& e) {
    // Its frame did not end within the bytes read: longer than any payload under the limit.
    if (capped) throw above_limit("more than " + std::to_string(most_frame));
    throw SampleError(e.what());
  }
  if (sample.bytes.size() > limit) throw above_limit(std::to_string(sample.bytes.size()));
  finish_load(sample, r.offset);
}

std::optional<std::uint64_t> RecordIoSource::samples_per_epoch() const {
  if (!indexed_) return std::nullopt;
  return cursor_.samples_per_epoch();
}

std::optional<std::uint64_t> RecordIoSource::total_samples() const {
  if (!indexed_) return std::nullopt;
  return cursor_.total_samples();
}

RecordIoSource::Split RecordIoSource::split() const {
  return {indexed_ ? digest_ : 0, indexed_ ? dataset_samples_ : 0, global()};
}

bool RecordIoSource::set_global_start(std::uint64_t start) {
  if (start == 0) return true;
  if (!global()) return false;
  return cursor_.set_global_start(start);
}

bool RecordIoSource::set_epochs(std::uint32_t first, std::uint32_t count) {
  return cursor_.set_epochs(first, count, params_.epochs);
}

}  // namespace millrace
