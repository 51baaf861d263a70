// im2rec .lst lines, through both readers: the RecordIO source's labels file and the files
// source's image list.
#include <stdexcept>

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
  } catch (const std::runtime_error&) {
  }
  for (int width : {label_width, 1, 2}) {
    if (width < 1) continue;
    try {
      const FileIndex index = read_image_list(path, "/root", width);
      for (std::size_t i = 0; i < index.size(); ++i) {
        if (index.path(i).empty() || index.labels(i) == nullptr) __builtin_trap();
      }
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(lst)
