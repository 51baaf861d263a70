// The formats decoded through OpenCV (PNG, WebP, BMP, TIFF): our header readers, which size the
// image against max_pixels before OpenCV allocates, and cv::imdecode behind them. JPEG inputs
// are left to jpeg_fuzz, so that this target's time goes to the other formats.
#include "fuzz/fuzz_targets.hpp"

namespace millrace::fuzz {

int image(const std::uint8_t* data, std::size_t size) {
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return 0;
  return decode_three_ways(data, size);
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(image)
