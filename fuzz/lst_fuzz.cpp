// im2rec .lst lines, through both readers: the RecordIO source's labels file and the files
// source's image list. Invariants: every entry has a path without a NUL byte (the system would
// open another file), finite labels, and an id no other entry has.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "fuzz/fuzz_targets.hpp"
#include "stages/files/files_stage.hpp"
#include "stages/recordio/recordio_kernel.hpp"

namespace millrace::fuzz {

int lst(const std::uint8_t* data, std::size_t size) {
  const std::string path = scratch_file("fuzz.lst", data, size);
  int label_width = 1;
  try {
    const std::vector<recordio::ListEntry> entries = recordio::read_list(path);
    if (!entries.empty()) label_width = static_cast<int>(entries.front().labels.size());
    std::vector<std::uint64_t> ids;
    for (const auto& e : entries) {
      if (e.path.empty() || e.path.find('\0') != std::string::npos) __builtin_trap();
      for (const float label : e.labels) {
        if (!std::isfinite(label)) __builtin_trap();
      }
      ids.push_back(e.index);
    }
    std::sort(ids.begin(), ids.end());
    if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) __builtin_trap();
  } catch (const std::runtime_error&) {
  }
  for (int width : {label_width, 1, 2}) {
    if (width < 1) continue;
    try {
      const FileIndex index = read_image_list(path, "/root", width);
      std::vector<std::uint64_t> ids;
      for (std::size_t i = 0; i < index.size(); ++i) {
        if (index.path(i).empty() || index.labels(i) == nullptr) __builtin_trap();
        if (index.path(i).find('\0') != std::string_view::npos) __builtin_trap();
        for (int k = 0; k < width; ++k) {
          if (!std::isfinite(index.labels(i)[k])) __builtin_trap();
        }
        ids.push_back(index.id(i));
      }
      std::sort(ids.begin(), ids.end());
      if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) __builtin_trap();
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(lst)
