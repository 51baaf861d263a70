// The built-in dataset generator: writes an ImageNet-like folder of JPEGs plus an im2rec list, so
// that benchmarks, examples and end-to-end tests run on realistic files without a download.
//
// What it writes: DIR/class_XXX/img_XXXXXX.jpg (class folders zero-padded to at least 3 digits,
// so that their sorted order is the label order) and DIR/labels.lst in the format of MXNet's
// im2rec.py run with --no-shuffle: "index\tlabel\trelative/path\n", labels printed with "%f"
// (3 -> "3.000000"), index = line number = the image's number. Images are numbered class by class,
// so a sorted walk of the folders visits them in list order, as im2rec's own listing would.
// Files already in DIR that this run does not write are left alone; labels.lst names exactly the
// files of this run.
//
// Images are crops of real photos installed by Debian packages (scikit-image's and matplotlib's
// sample data) or of any folder given in `photo_dirs`, resized with cv::INTER_AREA, jittered in
// brightness, contrast and colour balance so that no two are alike, and encoded with TurboJPEG at
// 4:2:0. A candidate photo must be 8-bit colour (an alpha channel must be fully opaque), have a
// shorter side of at least 256 pixels, and look like a photograph (some colour and some fine
// detail, which rules out the colour wheels and logos that sit beside the photos). Without any
// such photo the images are drawn procedurally instead, with textures that compress to realistic
// JPEG sizes.
//
// Determinism: image i depends only on (seed, i, the photos found), through generators whose
// sequences this file defines itself; the same spec on the same machine gives byte-identical files.
//
// Concurrency: make_dataset keeps no global state; concurrent calls are safe for distinct `dir`s.
// It blocks on file I/O for its whole run. `progress` is called on the calling thread, after each
// image is written, with (images done, total); the caller keeps it alive for the call.
// Errors: std::invalid_argument for an impossible spec, std::runtime_error naming the path when a
// folder or file cannot be created or written.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace millrace::datasets {

struct DatasetSpec {
  std::string dir;  // output folder, created if missing
  int count = 2000;
  int classes = 10;  // 1 <= classes <= count; class c holds images [c*count/classes, ...)
  std::uint64_t seed = 0;
  // kImageNet: shorter side uniform in 333..500. kLarge: longer side uniform in 1200..2800
  // (0.8 to 7.8 megapixels). Both: long/short ratio in [1, 16/9], a quarter of them portrait.
  enum class Size { kImageNet, kLarge } size = Size::kImageNet;
  std::vector<std::string> photo_dirs;  // searched non-recursively; empty = default_photo_dirs()
};

struct DatasetReport {
  int images = 0;
  std::int64_t bytes = 0;  // JPEG bytes written, the list file not included
  int from_photos = 0;
  int procedural = 0;
  std::string list_path;
};

DatasetReport make_dataset(const DatasetSpec& spec, const std::function<void(int, int)>& progress);

// Folders on this machine that hold Debian-packaged sample photos (scikit-image, matplotlib),
// existing ones only, each once, in a fixed order.
std::vector<std::string> default_photo_dirs();

}  // namespace millrace::datasets
