// `millrace prepare SRC DST`: copies a folder tree of images, rewriting every JPEG losslessly
// with a restart grid (jpeg_restart.hpp) so that windowed decoding (`decode.reduce: auto`) reads
// only the segments under each window. The layout is kept: class folders, lists (.lst), every
// other file, copied as they are, so that DST replaces SRC in any config.
//
// Contract:
// - prepare_tree() blocks until the tree is written. It uses `threads` plain worker threads of
//   its own (no TBB), each taking the next file; each file's result depends on that file alone,
//   so the output is the same for any thread count. `progress` is called under a lock, from any
//   worker, after every file.
// - Every file is written under a temporary name beside its destination and renamed into place,
//   so DST never holds a half-written file under a real name.
// - Errors: std::invalid_argument for a SRC that is not a folder or a DST inside SRC (or SRC
//   itself); std::runtime_error naming the file for one that cannot be read or written (the
//   first such error stops the run). A JPEG that libjpeg cannot read cleanly (truncated,
//   corrupt, 12-bit) is copied unchanged and listed in the report, never dropped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace millrace::recordio {

struct PrepareOptions {
  std::string source;
  std::string destination;
  int interval = 0;  // restart interval in MCUs; 0: chosen per image (auto_restart_interval)
  int threads = 0;   // 0: one per hardware thread
};

struct PrepareReport {
  std::uint64_t files = 0;
  std::uint64_t rewritten = 0;       // JPEGs rewritten with a restart grid
  std::uint64_t copied = 0;          // other files, copied as they are
  std::uint64_t unreadable = 0;      // JPEGs copied as they are because libjpeg could not read them
  std::uint64_t jpeg_bytes_in = 0;   // the rewritten JPEGs' size before
  std::uint64_t jpeg_bytes_out = 0;  // and after
  std::vector<std::string> problems;  // "PATH: libjpeg's message" for each unreadable JPEG
};

using PrepareProgress = std::function<void(std::size_t done, std::size_t total)>;

PrepareReport prepare_tree(const PrepareOptions& options, const PrepareProgress& progress = {});

}  // namespace millrace::recordio
