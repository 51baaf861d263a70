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
          {SampleContent::kAny, SampleContent::kEncoded}};
}

const Schema<FilesSource::Params>& FilesSource::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.path("root", &Params::root, "dataset folder; list entries are relative to it").required();
    s.string("list", &Params::list,
             "im2rec .lst (index, labels, path; tab-separated), relative to root unless absolute; "
             "without it the folder is scanned");
    s.integer("label_width", &Params::label_width, "labels per line of the list", 1, 4096);
    add_source_keys(
        s, {"a new reproducible permutation every epoch",
            "split the dataset into this many parts (MXNet semantics: by count); 0: one part "
            "per process of an MPI run",
            "how the parts share an epoch: global (one order over the whole data set dealt to "
            "the parts in turn, as DistributedSampler; equal counts) or contiguous (MXNet's "
            "slices of the list, shuffled within)"});
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
  check_source_keys(p, node, where, d);
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
    : SourceStage(std::move(context)),
      params_(std::move(params)),
      cursor_(params_.epochs, source_seed(params_, this->context()), stable_hash("files.shuffle")) {
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
  const auto [part, parts] = resolve_part(params_, context(), name());
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
  cursor_.set_order(entries_.size(), part, parts, !params_.contiguous && parts > 1);
}

SourceStatus FilesSource::next(Sample& sample) {
  if (cursor_.done()) return SourceStatus::kEnd;
  if (!cursor_.open()) cursor_.begin_epoch(params_.shuffle);
  const std::optional<Deal::Position> at = cursor_.next();
  if (!at) {
    cursor_.end_epoch();
    return SourceStatus::kEpochEnd;
  }
  const std::size_t i = at->index;
  sample.repeat = at->repeat;
  sample.id = entries_.id(i);
  sample.path.assign(entries_.path(i));
  sample.labels.assign(entries_.labels(i), entries_.labels(i) + entries_.label_width());
  sample.epoch = static_cast<std::uint32_t>(cursor_.epoch());
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

std::optional<std::uint64_t> FilesSource::samples_per_epoch() const {
  return cursor_.samples_per_epoch();
}

std::optional<std::uint64_t> FilesSource::total_samples() const { return cursor_.total_samples(); }

FilesSource::Split FilesSource::split() const {
  return {digest_, dataset_samples_, !params_.contiguous};
}

bool FilesSource::set_global_start(std::uint64_t start) {
  if (params_.contiguous && start != 0) return false;
  return cursor_.set_global_start(start);
}

bool FilesSource::set_epochs(std::uint32_t first, std::uint32_t count) {
  return cursor_.set_epochs(first, count, params_.epochs);
}

}  // namespace millrace
