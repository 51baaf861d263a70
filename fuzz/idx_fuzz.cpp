// The .idx beside a .rec (`key<TAB>offset` lines), read for a .rec of a few sizes.
#include <limits>
#include <stdexcept>

#include "fuzz/fuzz_targets.hpp"
#include "stages/recordio/recordio_kernel.hpp"

namespace millrace::fuzz {

int idx(const std::uint8_t* data, std::size_t size) {
  const std::string path = scratch_file("fuzz.idx", data, size);
  for (std::uint64_t rec_size : {std::uint64_t{0}, std::uint64_t{4096}, std::uint64_t{1} << 40,
                                 std::numeric_limits<std::uint64_t>::max()}) {
    try {
      const std::vector<recordio::IndexEntry> entries = recordio::read_index(path, rec_size);
      // The entries tile the .rec from the first indexed offset to its end.
      std::uint64_t covered = 0;
      for (const recordio::IndexEntry& e : entries) covered += e.size;
      if (!entries.empty() && covered != rec_size - entries.front().offset) __builtin_trap();
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(idx)
