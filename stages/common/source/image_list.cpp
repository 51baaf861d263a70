#include "stages/common/source/image_list.hpp"

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
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <tuple>

#include "engine/file_io.hpp"

namespace millrace {

namespace fs = std::filesystem;

namespace {

bool is_image_name(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp" || ext == ".bmp" ||
         ext == ".tif" || ext == ".tiff";
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> fields;
  std::size_t start = 0;
  for (;;) {
    const std::size_t tab = line.find('\t', start);
    fields.push_back(
        line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) break;
    start = tab + 1;
  }
  return fields;
}

}  // namespace

void FileIndex::add(std::uint64_t id, std::string_view path, const float* labels) {
  ids_.push_back(id);
  chars_.append(path);
  path_end_.push_back(chars_.size());
  labels_.insert(labels_.end(), labels, labels + label_width_);
}

void FileIndex::keep(std::size_t begin, std::size_t end) {
  end = std::min(end, size());
  begin = std::min(begin, end);
  const std::size_t first_char = begin == 0 ? 0 : path_end_[begin - 1];
  const std::size_t last_char = end == 0 ? 0 : path_end_[end - 1];
  chars_ = chars_.substr(first_char, last_char - first_char);
  std::vector<std::uint64_t> path_end(path_end_.begin() + static_cast<std::ptrdiff_t>(begin),
                                      path_end_.begin() + static_cast<std::ptrdiff_t>(end));
  for (auto& e : path_end) e -= first_char;
  path_end_ = std::move(path_end);
  const auto w = static_cast<std::ptrdiff_t>(label_width_);
  labels_ = std::vector<float>(labels_.begin() + static_cast<std::ptrdiff_t>(begin) * w,
                               labels_.begin() + static_cast<std::ptrdiff_t>(end) * w);
  ids_ = std::vector<std::uint64_t>(ids_.begin() + static_cast<std::ptrdiff_t>(begin),
                                    ids_.begin() + static_cast<std::ptrdiff_t>(end));
}

FileEntry FileIndex::operator[](std::size_t i) const {
  return {id(i), std::string(path(i)), std::vector<float>(labels(i), labels(i) + label_width_)};
}

FileEntry FileIndex::at(std::size_t i) const {
  if (i >= size()) {
    throw std::out_of_range("FileIndex::at: entry " + std::to_string(i) + " of " +
                            std::to_string(size()));
  }
  return (*this)[i];
}

FileIndex read_image_list(const std::string& list_path, const std::string& root, int label_width) {
  std::string text;
  try {
    text = read_regular_file(list_path, kMaxListFileBytes, "image list");
  } catch (const FileError& e) {
    throw std::runtime_error(e.what());
  }
  FileIndex entries(label_width);
  std::vector<float> labels(static_cast<std::size_t>(label_width));
  std::vector<std::pair<std::uint64_t, int>> id_lines;  // to find an id used twice
  for_each_line(text, [&](std::string_view view, int line_number) {
    if (view.empty()) return;
    const std::string line(view);
    const std::string where = list_path + ":" + std::to_string(line_number) + ": ";
    auto fields = split_tabs(line);
    if (fields.size() != static_cast<std::size_t>(label_width) + 2) {
      throw std::runtime_error(where + "expected index, " + std::to_string(label_width) +
                               " label(s) and a path separated by tabs, found " +
                               std::to_string(fields.size()) + " fields");
    }
    const std::string& index = fields.front();
    // im2rec writes the index as an integer; some tools write it as a float ("12.0"): accept a
    // fraction of zeros, parsed exactly (a double would lose ids above 2^53).
    const std::size_t dot = index.find('.');
    const std::string digits = index.substr(0, dot);
    const bool zero_fraction =
        dot == std::string::npos ||
        (dot + 1 < index.size() && index.find_first_not_of('0', dot + 1) == std::string::npos);
    std::uint64_t id = 0;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
    if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size() ||
        !zero_fraction) {
      throw std::runtime_error(where + "index '" + printable(index) +
                               "' is not a non-negative integer");
    }
    for (int k = 0; k < label_width; ++k) {
      const std::string& label = fields[static_cast<std::size_t>(k) + 1];
      float value = 0;
      auto [lp, lec] = std::from_chars(label.data(), label.data() + label.size(), value);
      if (lec != std::errc() || lp != label.data() + label.size()) {
        throw std::runtime_error(where + "label '" + printable(label) + "' is not a number");
      }
      if (!std::isfinite(value)) {
        throw std::runtime_error(where + "label '" + printable(label) + "' is not a finite number");
      }
      labels[static_cast<std::size_t>(k)] = value;
    }
    // An empty path would resolve to the root folder itself; the RecordIO reader of the same
    // format refuses it too.
    if (fields.back().empty()) throw std::runtime_error(where + "empty path");
    // The system would open the path up to the NUL: another file than the line names.
    if (fields.back().find('\0') != std::string::npos) {
      throw std::runtime_error(where + "path '" + printable(fields.back()) + "' holds a NUL byte");
    }
    entries.add(id, resolve_under(root, fields.back()), labels.data());
    id_lines.emplace_back(id, line_number);
  });
  // An id names a sample (its random draws, its place in reports and resumes): two lines with one
  // id would be one sample twice.
  std::sort(id_lines.begin(), id_lines.end());
  for (std::size_t i = 1; i < id_lines.size(); ++i) {
    if (id_lines[i].first == id_lines[i - 1].first) {
      throw std::runtime_error(list_path + ":" + std::to_string(id_lines[i].second) + ": index " +
                               std::to_string(id_lines[i].first) + " is used twice (also line " +
                               std::to_string(id_lines[i - 1].second) + ")");
    }
  }
  return entries;
}

namespace {

struct FolderId {
  dev_t dev;
  ino_t ino;
  bool operator==(const FolderId& o) const { return dev == o.dev && ino == o.ino; }
};

const char* kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "a file of another kind";
}

// The walk of scan_image_folder: every entry whose name looks like an image becomes an entry of
// the list, readable or not (the unreadable ones with their reason), so that none is lost
// without a word. Links to folders are followed unless they lead back to a folder on the way
// down from the root or above it (a loop, a link to `/`); those are listed by their own path.
class FolderWalk {
 public:
  FolderWalk(const std::string& root, std::vector<std::string>& files,
             std::vector<std::pair<std::string, std::string>>& unreadable)
      : files_(files), unreadable_(unreadable) {
    // The root and every folder above it: a link to any of them would scan the root again.
    std::error_code ec;
    for (fs::path p = fs::absolute(root, ec); !p.empty(); p = p.parent_path()) {
      struct stat st {};
      if (::stat(p.c_str(), &st) == 0) above_.push_back({st.st_dev, st.st_ino});
      if (p == p.parent_path()) break;
    }
  }

  void walk(const fs::path& dir, const std::string& relative) {
    std::vector<fs::directory_entry> entries;
    for (const auto& entry : fs::directory_iterator(dir)) entries.push_back(entry);
    for (const auto& entry : entries) {
      const std::string name = entry.path().filename().string();
      const std::string rel = relative.empty() ? name : relative + "/" + name;
      struct stat target {};
      const bool reachable = ::stat(entry.path().c_str(), &target) == 0;
      const int stat_error = reachable ? 0 : errno;
      if (reachable && S_ISDIR(target.st_mode)) {
        const FolderId id{target.st_dev, target.st_ino};
        const bool loop = std::find(above_.begin(), above_.end(), id) != above_.end() ||
                          std::find(path_.begin(), path_.end(), id) != path_.end();
        if (loop) {
          unreadable_.emplace_back(rel,
                                   "a symbolic link to a folder that holds it (a loop), "
                                   "not followed");
          continue;
        }
        path_.push_back(id);
        walk(entry.path(), rel);
        path_.pop_back();
        continue;
      }
      if (!is_image_name(entry.path())) continue;
      if (!reachable) {
        struct stat link {};
        if (::lstat(entry.path().c_str(), &link) != 0) continue;  // gone since it was listed
        unreadable_.emplace_back(
            rel,
            S_ISLNK(link.st_mode)
                ? (stat_error == ELOOP ? "a symbolic link that loops" : "a dangling symbolic link")
                : "cannot read: " + std::error_code(stat_error, std::generic_category()).message());
      } else if (!S_ISREG(target.st_mode)) {
        unreadable_.emplace_back(rel,
                                 std::string("not a regular file: ") + kind_of(target.st_mode));
      } else {
        files_.push_back(rel);
      }
    }
  }

 private:
  std::vector<std::string>& files_;
  std::vector<std::pair<std::string, std::string>>& unreadable_;
  std::vector<FolderId> above_;
  std::vector<FolderId> path_;
};

}  // namespace

FileIndex scan_image_folder(const std::string& root, std::vector<UnreadableEntry>* unreadable) {
  std::vector<std::string> readable;
  std::vector<std::pair<std::string, std::string>> refused;
  FolderWalk(root, readable, refused).walk(root, "");
  std::vector<std::string> classes;
  for (const auto& entry : fs::directory_iterator(root)) {
    std::error_code ec;
    if (entry.is_directory(ec)) classes.push_back(entry.path().filename().string());
  }
  std::sort(classes.begin(), classes.end());
  // With class folders, a file directly in the root has no class: giving it 0 would make it one
  // of the first class's. Without any, the folder is one unlabelled set, every file labelled 0.
  if (!classes.empty()) {
    const auto in_root = std::stable_partition(readable.begin(), readable.end(), [](const auto& r) {
      return r.find('/') != std::string::npos;
    });
    for (auto it = in_root; it != readable.end(); ++it) {
      refused.emplace_back(*it,
                           "directly in the scanned folder, which has class folders: no class");
    }
    readable.erase(in_root, readable.end());
  }
  // Ids are positions in the sorted list of every entry, read or refused.
  std::vector<std::pair<std::string, const std::string*>> all;
  all.reserve(readable.size() + refused.size());
  for (const auto& r : readable) all.emplace_back(r, nullptr);
  for (const auto& [path, reason] : refused) all.emplace_back(path, &reason);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  FileIndex entries(1);
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::string& relative = all[i].first;
    const auto slash = relative.find('/');
    float label = 0;
    if (slash != std::string::npos) {
      auto pos = std::lower_bound(classes.begin(), classes.end(), relative.substr(0, slash));
      label = static_cast<float>(pos - classes.begin());
    }
    const bool listed = all[i].second != nullptr;
    if (listed && unreadable == nullptr) continue;
    entries.add(i, resolve_under(root, relative), &label);
    if (listed) unreadable->push_back({i, *all[i].second});
  }
  return entries;
}

std::pair<std::size_t, std::size_t> part_range(std::size_t count, int num_parts, int part_index) {
  const auto parts = static_cast<std::size_t>(num_parts);
  const auto k = static_cast<std::size_t>(part_index);
  const std::size_t step = (count + parts - 1) / parts;
  return {std::min(count, k * step), std::min(count, (k + 1) * step)};
}

std::string resolve_under(const std::string& root, const std::string& path) {
  if (path.empty() || path.front() == '/' || root.empty()) return path;
  return (fs::path(root) / path).string();
}

}  // namespace millrace
