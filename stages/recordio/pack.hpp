// `millrace pack`: writes a .rec and its .idx from image files, as MXNet's im2rec does, so that a
// dataset can be read by the `recordio` source (or by MXNet itself).
//
// Contract:
// - pack() runs on the calling thread, reads the images one after another and writes OUT.rec and
//   OUT.idx (the .rec path with its extension replaced). It blocks on file I/O and, when
//   re-encoding, on the CPU. It owns nothing after it returns. `progress` is called on the same
//   thread after every record.
// - Records: header id = the .lst index (folder mode: the position in the sorted file list, as
//   the `files` source numbers them); one label gives flag 0 with the label in the header; several
//   give flag = their number and header label 0 (MXNet's recordio.pack). The .idx lists
//   `id<TAB>offset` in the order written.
// - By default the original file bytes are stored unchanged; with `resize` or `quality` the image
//   is decoded (OpenCV, BGR as MXNet stores it) and re-encoded as JPEG.
// - Errors: std::invalid_argument for contradictory options; std::runtime_error naming the file
//   for a missing or unreadable image, an image that does not decode when re-encoding, or an
//   output that cannot be written. Both files are written under hidden temporary names
//   (.OUT.rec.tmp, .OUT.idx.tmp) and renamed into place once whole, the .rec first: an
//   interrupted pack leaves the previous output or none, never a partial .rec; on an error the
//   temporary files are removed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace millrace::recordio {

struct PackOptions {
  std::string list;    // an im2rec .lst (index, labels, relative path); or
  std::string folder;  // a folder scanned like the `files` source (label = sorted class folder)
  std::string root;    // list mode: the folder the list's paths are relative to (default: the
                       // list's own folder)
  std::string output;  // OUT.rec
  int resize = 0;      // > 0: re-encode with the shorter side scaled to this (cv::INTER_AREA)
  int quality = 0;     // JPEG quality 1..100 when re-encoding (0: 95); alone it re-encodes too
  // >= 0: each JPEG is rewritten losslessly with a restart grid (jpeg_restart.hpp), a marker
  // every `restart` MCUs (0: chosen per image); other images, and JPEGs libjpeg cannot read, are
  // stored as they are. -1: off.
  int restart = -1;
};

struct PackReport {
  std::string rec_path;
  std::string idx_path;
  std::uint64_t records = 0;
  std::uint64_t image_bytes = 0;  // encoded image bytes stored
  std::uint64_t file_bytes = 0;   // size of OUT.rec
  // Folder mode: entries named like images that were not packed, as "PATH: reason".
  std::vector<std::string> skipped;
  std::uint64_t restart_rewritten = 0;   // JPEGs rewritten with a restart grid
  std::uint64_t restart_unreadable = 0;  // JPEGs stored as they were: libjpeg could not read them
};

using PackProgress = std::function<void(std::size_t done, std::size_t total)>;

PackReport pack(const PackOptions& options, const PackProgress& progress = {});

// OUT.idx for OUT.rec (the extension replaced, as im2rec names them).
std::string index_path_for(const std::string& rec_path);
// The hidden name a file is written under before its rename: DIR/.NAME.tmp.
std::string temporary_name_for(const std::string& path);

}  // namespace millrace::recordio
