#include "stages/files/files_stage.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <tuple>

#include "engine/deal.hpp"
#include "engine/file_io.hpp"
#include "engine/random.hpp"

namespace millrace {

namespace fs = std::filesystem;

StageInfo FilesSource::info() {
  return {"files",
          "image files from a folder tree (label = sorted class sub-folder) or an im2rec .lst list",
          StageShape::kSource,
          "a folder or an im2rec list",
          "samples: encoded bytes, id, path, labels",
          true,
          true,
          SampleContent::kAny,
          SampleContent::kEncoded};
}

const Schema<FilesSource::Params>& FilesSource::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.string("root", &Params::root, "dataset folder; list entries are relative to it").required();
    s.string("list", &Params::list,
             "im2rec .lst (index, labels, path; tab-separated), relative to root unless absolute; "
             "without it the folder is scanned");
    s.integer("label_width", &Params::label_width, "labels per line of the list", 1, 4096);
    s.boolean("shuffle", &Params::shuffle, "a new reproducible permutation every epoch");
    s.integer64("seed", &Params::seed, "shuffle seed; -1 takes pipeline.seed", -1,
                std::numeric_limits<std::int64_t>::max());
    s.integer("epochs", &Params::epochs, "passes over the dataset", 1, 1 << 20);
    s.integer64("limit", &Params::limit, "use only the first N entries of the dataset (0: all)", 0,
                std::numeric_limits<std::int64_t>::max());
    s.integer("num_parts", &Params::num_parts,
              "split the dataset into this many parts (MXNet semantics: by count); 0: one part "
              "per process of an MPI run",
              0, 1 << 20);
    s.integer("part_index", &Params::part_index,
              "the part this process reads, 0-based; -1: the process's MPI rank", -1, 1 << 20);
    s.choice("split", &Params::contiguous,
             "how the parts share an epoch: global (one order over the whole data set dealt to "
             "the parts in turn, as DistributedSampler; equal counts) or contiguous (MXNet's "
             "slices of the list, shuffled within)",
             {{"global", false}, {"contiguous", true}});
    s.integer64("max_file_bytes", &Params::max_file_bytes,
                "a file larger than this is a per-sample error, refused from its size before "
                "reading",
                1, std::numeric_limits<std::int64_t>::max());
    return s;
  }();
  return schema;
}

void FilesSource::check(const Params& p, const ConfigNode& node, const std::string& where,
                        Diagnostics& d) {
  if (p.num_parts > 0 && p.part_index >= p.num_parts) {
    const ConfigNode* n = node.find("part_index");
    d.error(n != nullptr ? n->where : node.where,
            where + ": 'part_index' " + std::to_string(p.part_index) +
                " is not below 'num_parts' " + std::to_string(p.num_parts));
  }
  const ConfigNode* root = node.find("root");
  std::error_code ec;
  if (!fs::is_directory(p.root, ec)) {
    d.error(root != nullptr ? root->where : node.where,
            where + ": 'root' folder '" + p.root + "' does not exist or is not a folder");
    return;
  }
  if (!p.list.empty()) {
    const std::string list = resolve_under(p.root, p.list);
    if (!fs::is_regular_file(list, ec)) {
      const ConfigNode* n = node.find("list");
      d.error(n != nullptr ? n->where : node.where,
              where + ": 'list' file '" + list + "' does not exist");
    }
  } else if (const ConfigNode* n = node.find("label_width"); n != nullptr && p.label_width != 1) {
    d.error(n->where, where + ": 'label_width' needs a 'list' (a scanned folder has one label)");
  }
}

FilesSource::FilesSource(StageContext context, Params params)
    : SourceStage(std::move(context)), params_(std::move(params)) {
  seed_ = params_.seed >= 0 ? static_cast<std::uint64_t>(params_.seed) : this->context().seed;
  end_epoch_ = params_.epochs;
}

void FilesSource::prepare() {
  try {
    std::vector<UnreadableEntry> unreadable;
    entries_ = params_.list.empty() ? scan_image_folder(params_.root, &unreadable)
                                    : read_image_list(resolve_under(params_.root, params_.list),
                                                      params_.root, params_.label_width);
    for (auto& u : unreadable) unreadable_.emplace(u.id, std::move(u.reason));
  } catch (const fs::filesystem_error& e) {
    throw std::runtime_error("stage '" + name() + "': cannot scan '" + params_.root +
                             "': " + e.code().message());
  }
  if (params_.limit > 0 && entries_.size() > static_cast<std::size_t>(params_.limit)) {
    entries_.keep(0, static_cast<std::size_t>(params_.limit));
  }
  const int parts = params_.num_parts > 0 ? params_.num_parts : context().world;
  const int part = params_.part_index >= 0 ? params_.part_index : context().rank;
  if (part >= parts) {
    throw std::runtime_error("stage '" + name() + "': part_index " + std::to_string(part) +
                             " is not below num_parts " + std::to_string(parts));
  }
  part_index_ = part;
  num_parts_ = parts;
  // The data set's identity, for checking a resumed position: ids, labels and the paths below the
  // root, so that the same files elsewhere are the same data set.
  std::uint64_t digest = stable_hash("files");
  const auto mix = [&digest](const void* bytes, std::size_t size) {
    for (std::size_t k = 0; k < size; ++k) {  // FNV-1a, as stable_hash, over every field
      digest ^= static_cast<const std::uint8_t*>(bytes)[k];
      digest *= 0x100000001B3ull;
    }
  };
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    std::string_view path = entries_.path(i);
    if (path.substr(0, params_.root.size()) == params_.root)
      path.remove_prefix(params_.root.size());
    const std::uint64_t id = entries_.id(i);
    const std::uint64_t length = path.size();
    mix(&id, sizeof id);
    mix(&length, sizeof length);
    mix(path.data(), path.size());
    mix(entries_.labels(i), sizeof(float) * static_cast<std::size_t>(entries_.label_width()));
  }
  digest_ = digest;
  dataset_samples_ = entries_.size();
  if (parts > 1 && params_.contiguous) {
    const auto [begin, end] = part_range(entries_.size(), parts, part);
    entries_.keep(begin, end);
  }
  if (entries_.empty()) {
    throw std::runtime_error(
        "stage '" + name() + "': no images found in '" +
        (params_.list.empty() ? params_.root : params_.list) + "'" +
        (parts > 1 ? " for part " + std::to_string(part) + " of " + std::to_string(parts)
                   : std::string()));
  }
  order_.resize(entries_.size());
}

void FilesSource::begin_epoch() {
  std::iota(order_.begin(), order_.end(), 0U);
  if (params_.shuffle) {
    // Fisher-Yates with our own generator: std::shuffle's draws differ between library versions.
    CounterRng rng(seed_, stable_hash("files.shuffle"), static_cast<std::uint64_t>(epoch_), 0);
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

Deal FilesSource::deal(std::uint64_t start) const {
  if (!global()) return {order_.size(), start, 1, 0};
  return {order_.size(), start, static_cast<std::uint64_t>(num_parts_),
          static_cast<std::uint64_t>(part_index_)};
}

SourceStatus FilesSource::next(Sample& sample) {
  if (epoch_ >= end_epoch_) return SourceStatus::kEnd;
  if (!epoch_open_) begin_epoch();
  if (position_ == epoch_samples_) {
    epoch_open_ = false;
    ++epoch_;
    return SourceStatus::kEpochEnd;
  }
  const Deal::Position at = deal(epoch_start_).at(position_++);
  const std::size_t i = order_[at.index];
  sample.repeat = at.repeat;
  sample.id = entries_.id(i);
  sample.path.assign(entries_.path(i));
  sample.labels.assign(entries_.labels(i), entries_.labels(i) + entries_.label_width());
  sample.epoch = static_cast<std::uint32_t>(epoch_);
  return SourceStatus::kSample;
}

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "of another kind";
}

}  // namespace

void FilesSource::load(Sample& sample) const {
  if (!unreadable_.empty()) {
    if (auto it = unreadable_.find(sample.id); it != unreadable_.end()) {
      throw SampleError(it->second);
    }
  }
  // The list was made before the run; by now a path may name something else. O_NONBLOCK keeps
  // the open of a FIFO (which would wait for a writer forever) from holding a worker; it changes
  // nothing for a regular file.
  const int fd = ::open(sample.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    throw SampleError("cannot open file: " +
                      std::string(std::error_code(errno, std::generic_category()).message()));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string reason = std::error_code(errno, std::generic_category()).message();
    ::close(fd);
    throw SampleError("cannot read file: " + reason);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw SampleError(std::string("not a regular file: ") + file_kind(st.st_mode));
  }
  if (st.st_size > params_.max_file_bytes) {
    ::close(fd);
    throw SampleError("file is " + std::to_string(st.st_size) + " bytes, above max_file_bytes " +
                      std::to_string(params_.max_file_bytes) +
                      " (raise files's max_file_bytes to read it)");
  }
  resize_reusing(sample.bytes, static_cast<std::size_t>(st.st_size));
  std::size_t done = 0;
  while (done < sample.bytes.size()) {
    const ssize_t n = ::read(fd, sample.bytes.data() + done, sample.bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string reason = n < 0 ? std::error_code(errno, std::generic_category()).message()
                                       : "file shrank while reading";
      ::close(fd);
      throw SampleError("cannot read file: " + reason);
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

std::optional<std::uint64_t> FilesSource::samples_per_epoch() const { return deal(0).count(); }

std::optional<std::uint64_t> FilesSource::total_samples() const {
  if (end_epoch_ <= first_epoch_) return 0;
  return deal(global_start_).count() +
         deal(0).count() * static_cast<std::uint64_t>(end_epoch_ - first_epoch_ - 1);
}

FilesSource::Split FilesSource::split() const {
  return {digest_, dataset_samples_, !params_.contiguous};
}

bool FilesSource::set_global_start(std::uint64_t start) {
  if (epoch_open_ || start > order_.size() || (params_.contiguous && start != 0)) return false;
  global_start_ = start;
  return true;
}

bool FilesSource::set_epochs(std::uint32_t first, std::uint32_t count) {
  // Every epoch's order is drawn from (seed, epoch) alone, so an epoch can be entered directly.
  const auto range = epoch_range(first, count, params_.epochs);
  if (epoch_open_ || !range) return false;
  std::tie(epoch_, end_epoch_) = *range;
  first_epoch_ = epoch_;
  return true;
}

}  // namespace millrace
