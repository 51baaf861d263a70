// Image decoding kernel: encoded JPEG/PNG/WebP/BMP/TIFF bytes in, interleaved 8-bit RGB out.
//
// Contract:
// - Plain functions with no engine dependency. `decode` and `peek` may be called from any number
//   of threads at once. Each thread lazily creates its own TurboJPEG decompressor on first use
//   (thread_local) and frees it when the thread exits; nothing is shared between threads.
// - The caller owns `data` (read only, must stay valid for the duration of the call) and `out`.
//   `decode` resizes `out` to exactly width*height*3 bytes and reuses its capacity, so once a
//   buffer is large enough decoding into it allocates no pixel memory. On a thrown DecodeError
//   the contents and size of `out` are unspecified; an image refused by `max_pixels` leaves `out`
//   untouched.
// - Per-thread state, all owned by the kernel: the TurboJPEG handle (replaced after a failed
//   header read and for streams that lack their own tables, so no result depends on what the
//   thread decoded before) and a staging buffer for JPEGs whose EXIF orientation transposes
//   them (kept for reuse, released after use when above 64 MiB).
// - The format is detected from the magic bytes, never from a file name. JPEG goes through
//   TurboJPEG directly (bit-identical to cv::imdecode, about twice as fast as imdecode plus its
//   BGR->RGB conversion); PNG, WebP, BMP and TIFF go through cv::imdecode once their dimensions
//   were read from the header.
// - Nothing blocks except on the CPU; no process-wide state is mutated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace millrace::decode {

struct Options {
  // Apply the EXIF orientation (JPEG APP1 "Exif", tag 0x0112, values 1-8) so that the pixels come
  // out the way a viewer shows them. Other formats follow OpenCV's own orientation handling.
  bool exif = true;
  // Any decoder warning (a truncated or corrupt JPEG that libjpeg patches over) makes the sample an
  // error. With strict=false the patched image is returned and the warning is reported in
  // Info::warnings. PNG/WebP/BMP/TIFF either decode or fail: OpenCV surfaces no warnings.
  bool strict = true;
  // Images with more pixels than this are refused from their header, before any pixel buffer is
  // allocated (decompression bombs). The default keeps width*height*12 below 2^31.
  std::int64_t max_pixels = 178956970;
};

struct Info {
  int width = 0;   // after EXIF orientation for `decode`, as stored for `peek`
  int height = 0;  // idem
  std::vector<std::string> warnings;
  std::string format;  // "jpeg", "png", "webp", "bmp" or "tiff"
};

class DecodeError : public std::runtime_error {
 public:
  using runtime_error::runtime_error;
};

// Decodes an encoded image into interleaved 8-bit RGB (3 channels) in `out`, resized to exactly
// width*height*3 bytes. Grayscale becomes RGB by replication; CMYK/YCCK JPEGs (Adobe inverted
// convention) are converted multiplicatively; alpha is dropped; 16-bit samples are reduced to 8.
// Returns the decoded size (after EXIF orientation) and any decoder warnings.
// Throws DecodeError naming the problem: an unrecognised format (with its first bytes), an image
// above `max_pixels`, a truncated or corrupt stream (with the decoder's own message).
Info decode(const std::uint8_t* data, std::size_t size, const Options& options,
            std::vector<std::uint8_t>& out);

// Reads only the header: format, width and height as stored (before EXIF orientation), without
// decoding any pixels. Throws DecodeError for an unrecognised format or an unreadable header.
Info peek(const std::uint8_t* data, std::size_t size);

}  // namespace millrace::decode
