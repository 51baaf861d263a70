// The image lists every source of image files shares: an im2rec .lst read or a folder tree scanned
// into one compact index (ids, paths, labels), and MXNet's partition of a list by count. The
// `files` source reads samples from it and `millrace pack` packs it into RecordIO.
//
// Contract: plain functions and a value type; nothing here reads an image or knows a stage. A
// list is built once and read concurrently afterwards (the const members only).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace millrace {

struct FileEntry {
  std::uint64_t id = 0;
  std::string path;  // as opened: absolute, or relative to the working directory
  std::vector<float> labels;
};

// The data set's file list, stored flat: all paths in one character buffer, all labels in one
// float array (every entry has the same number of labels), ids in one array. About 70 bytes an
// entry for ImageNet-style paths, where a vector of FileEntry costs about 200 (a string and a
// vector, each a heap block, per entry): the one part of millrace's memory that grows with the
// data set, 90 MB instead of 250 MB for ImageNet's 1.28 million training images.
class FileIndex {
 public:
  explicit FileIndex(int label_width = 1) : label_width_(label_width) {}

  // `labels` holds label_width() values.
  void add(std::uint64_t id, std::string_view path, const float* labels);
  // Keeps entries [begin, end) (a limit, a part), releasing the rest's memory.
  void keep(std::size_t begin, std::size_t end);

  std::size_t size() const { return ids_.size(); }
  bool empty() const { return ids_.empty(); }
  int label_width() const { return label_width_; }
  std::uint64_t id(std::size_t i) const { return ids_[i]; }
  std::string_view path(std::size_t i) const {
    const std::size_t begin = i == 0 ? 0 : path_end_[i - 1];
    return std::string_view(chars_).substr(begin, path_end_[i] - begin);
  }
  const float* labels(std::size_t i) const {
    return labels_.data() + i * static_cast<std::size_t>(label_width_);
  }
  // One entry as a value (for tools and tests; the source reads the fields above).
  FileEntry operator[](std::size_t i) const;
  FileEntry at(std::size_t i) const;

 private:
  int label_width_;
  std::string chars_;
  std::vector<std::uint64_t> path_end_;
  std::vector<float> labels_;
  std::vector<std::uint64_t> ids_;
};

// Reads an im2rec list: `index<TAB>label_1<TAB>...<TAB>label_W<TAB>path` per line. Paths are
// resolved against `root` unless absolute. Throws std::runtime_error naming file:line on a
// malformed line.
FileIndex read_image_list(const std::string& list_path, const std::string& root, int label_width);
// An entry of a scanned folder that looks like an image and will not be read, and why.
struct UnreadableEntry {
  std::uint64_t id = 0;
  std::string reason;
};

// Scans `root` recursively for image files (jpg, jpeg, png, webp, bmp, tif, tiff), following
// links to folders except those that lead back to the root, a folder above it or one on the way
// down (a loop, a link to `/`). Label = index of the sorted top-level sub-folder the file is in
// (0 for every file when root has no sub-folders); sample id = position in the list sorted by
// relative path. Entries that look like images but cannot be read (a dangling link, a FIFO, a
// device; a file directly in a root that has class folders, which has no class; a looping link)
// take an id too: with `unreadable`, they are in the index and listed there with the reason;
// without, they are left out.
FileIndex scan_image_folder(const std::string& root,
                            std::vector<UnreadableEntry>* unreadable = nullptr);
// MXNet's partition by record count: part k of n holds entries [k*step, min(N, (k+1)*step)) with
// step = ceil(N / n). Every entry lands in exactly one part.
std::pair<std::size_t, std::size_t> part_range(std::size_t count, int num_parts, int part_index);

// `path` resolved against `root`: unchanged when absolute or when either is empty.
std::string resolve_under(const std::string& root, const std::string& path);

}  // namespace millrace
