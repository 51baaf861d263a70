// The decode-window request: which part of a sample's two spatial dimensions a stage will read,
// and at what size. One definition, carried by the stream description (engine/stream.hpp, through
// a WindowReader) and answered by the decode kernel (stages/decode/decode_kernel.hpp).
//
// Contract: a header-only value with no dependency at all, so that a kernel may use it without
// depending on the engine.
#pragma once

namespace millrace {

// Output pixel (i, j) is sampled at full-scale coordinates x + (j + 0.5) * width / out_width - 0.5
// (rows alike), as cv::resize maps a window; a window whose size equals the output size is a
// plain crop.
struct WindowRequest {
  double x = 0;
  double y = 0;
  double width = 0;
  double height = 0;
  int out_width = 0;
  int out_height = 0;
  // false: only a full-scale window will do (the reader's resampling cannot take a scaled one,
  // e.g. area interpolation).
  bool allow_scale = true;
};

}  // namespace millrace
