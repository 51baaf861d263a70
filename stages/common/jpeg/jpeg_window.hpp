// Cutting a window's own JPEG out of a JPEG that carries a restart grid.
//
// A baseline JPEG whose restart interval divides the number of MCUs in a row is a grid of
// independent entropy-coded segments: each starts byte-aligned after its RST marker with the DC
// predictions reset. The segments that cover a rectangle, concatenated with their RST markers
// renumbered, under the original tables and a frame header whose size is that of the rectangle,
// form a valid, smaller JPEG whose pixels are the rectangle's pixels of the whole image. Decoding
// it costs the rectangle alone: libjpeg can start nowhere but at the beginning of a segment, and
// without restart markers that is the beginning of the image.
// `millrace pack --restart auto` and `millrace prepare` write such grids (jpeg_restart.hpp).
//
// Contract:
// - Plain functions over bytes, no decoder involved: the segment boundaries are found by looking
//   for RST markers in the entropy-coded data (a marker's 0xFF can never appear there otherwise),
//   not by decoding anything. They may be called from any number of threads at once; each thread
//   keeps its own scratch list of marker offsets (released after a huge image).
// - The caller owns the input (read only) and the output buffer (reused: its capacity is kept).
// - A stream whose markers do not match its declared grid (a missing or misnumbered RST, data
//   after the scan) gives no window: its decoder takes the ordinary path and reports the damage
//   there as for any JPEG. Damage inside a segment is not seen here; the decoder of the window's
//   JPEG reports it like any corrupt JPEG.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace millrace::decode {

// The restart grid of a single-scan baseline (or extended sequential) Huffman JPEG, 8-bit, one
// component or three with Y sampled 1x1, 2x1, 1x2 or 2x2 and chroma 1x1; absent for any other.
struct RestartGrid {
  int width = 0;  // the frame's size in pixels
  int height = 0;
  int mcu_width = 8;  // pixels per MCU
  int mcu_height = 8;
  int mcus_per_row = 0;
  int mcu_rows = 0;
  int interval = 0;  // MCUs per segment; divides mcus_per_row
  int segments_per_row = 0;
  // Whether a component is stored at less than full resolution, so that the decoder's smooth
  // ("fancy") upsampling reads a chroma sample beyond each pixel's own.
  bool subsampled = false;
  std::size_t frame_size_at = 0;  // offset of the frame header's height (then width) field
  std::size_t scan_at = 0;        // offset of the first entropy-coded byte
};

// The grid of `data`, or nullopt where the stream has none that windows can use: no restart
// interval, one that does not divide the MCU row (segments that wrap rows), a progressive,
// arithmetic-coded, lossless, hierarchical or 12-bit frame, several scans, another sampling.
std::optional<RestartGrid> find_restart_grid(const std::uint8_t* data, std::size_t size);

// A rectangle in pixels of the whole image: [x0, x1) x [y0, y1).
struct PixelRect {
  int x0 = 0;
  int y0 = 0;
  int x1 = 0;
  int y1 = 0;
};

// Builds in `jpeg` the JPEG of the smallest run of whole segments covering `need` (full-scale
// pixels, inside the image). The neighbouring segment column or MCU row is included wherever a
// needed pixel lies within `guard_pixels` of a cut (0: none): smooth chroma upsampling treats a
// cut like an image edge, which changes the pixels next to it. Returns the rectangle the built
// JPEG covers (its x0 and y0 multiples of the MCU size), or nullopt when the stream's markers do
// not match its grid. Where the segments needed are all of them, `jpeg` is
// left empty and the whole image returned: the stream itself is the window's JPEG. APPn (other
// than JFIF's APP0 and Adobe's APP14) and COM segments are left out of the window's JPEG.
std::optional<PixelRect> build_window_jpeg(const std::uint8_t* data, std::size_t size,
                                           const RestartGrid& grid, const PixelRect& need,
                                           int guard_pixels, std::vector<std::uint8_t>& jpeg);

}  // namespace millrace::decode
