// Lossless rewriting of JPEGs with a restart grid, so that the decode stage can decode a window
// from the segments that cover it alone (stages/common/jpeg/jpeg_window.hpp).
//
// Contract:
// - add_restart_grid() goes through libjpeg's coefficient API (jpeg_read_coefficients,
//   jpeg_write_coefficients): the quantized DCT coefficients and quantization tables are kept, so
//   every decoder gives the same pixels as for the original. What changes: Huffman tables are
//   optimized for the image, a progressive or arithmetic-coded file becomes a single-scan baseline
//   Huffman one, and a restart marker follows every `interval` MCUs. APPn and COM segments (EXIF,
//   ICC profiles, XMP) are copied.
// - Pure function of its input; may be called from any number of threads at once. It blocks only
//   on the CPU. The caller owns both buffers.
// - Input that is not a JPEG, or a JPEG that libjpeg cannot read without a warning (truncated,
//   corrupt, 12-bit), is not rewritten: the result says why and `out` is untouched, so the caller
//   keeps the original bytes and never loses data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace millrace::recordio {

// Segments no wider than this many pixels: a window then decodes at most about this much beyond
// each of its sides.
constexpr int kRestartSegmentPixels = 32;

// The restart interval, in MCUs, for a row of `mcus_per_row` MCUs each `mcu_width` pixels wide:
// the largest divisor of the row whose segments stay within kRestartSegmentPixels (the fewest
// markers, so the least size cost, at that granularity); 1 when no larger divisor fits.
int auto_restart_interval(int mcus_per_row, int mcu_width);

enum class RestartOutcome {
  kRewritten,   // `out` holds the rewritten JPEG
  kNotJpeg,     // not a JPEG (no SOI marker): keep it as it is
  kUnreadable,  // a JPEG that libjpeg reads only with an error or warning: keep it as it is
};

struct RestartResult {
  RestartOutcome outcome = RestartOutcome::kNotJpeg;
  int interval = 0;     // MCUs per segment written
  std::string message;  // kUnreadable: libjpeg's message
};

// Rewrites the JPEG in `data` with a restart marker every `interval` MCUs (0: the automatic
// choice above, per image) into `out`.
RestartResult add_restart_grid(const std::uint8_t* data, std::size_t size, int interval,
                               std::vector<std::uint8_t>& out);

}  // namespace millrace::recordio
