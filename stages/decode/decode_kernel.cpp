#include "stages/decode/decode_kernel.hpp"

// jpeglib.h needs FILE and size_t declared before it.
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on
#include <png.h>
#include <turbojpeg.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <csetjmp>
#include <cstring>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>
#include <string>
#include <utility>

#include "stages/common/jpeg/jpeg_window.hpp"

namespace millrace::decode {
namespace {

enum class Format { kUnknown, kJpeg, kPng, kWebp, kBmp, kTiff };

const char* format_name(Format format) {
  switch (format) {
    case Format::kJpeg:
      return "jpeg";
    case Format::kPng:
      return "png";
    case Format::kWebp:
      return "webp";
    case Format::kBmp:
      return "bmp";
    case Format::kTiff:
      return "tiff";
    case Format::kUnknown:
      break;
  }
  return "unknown";
}

// The spelling used in messages, where users expect the usual capitalisation.
const char* format_title(Format format) {
  switch (format) {
    case Format::kJpeg:
      return "JPEG";
    case Format::kPng:
      return "PNG";
    case Format::kWebp:
      return "WebP";
    case Format::kBmp:
      return "BMP";
    case Format::kTiff:
      return "TIFF";
    case Format::kUnknown:
      break;
  }
  return "image";
}

std::uint16_t load_be16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] << 8 | p[1]);
}
std::uint16_t load_le16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[1] << 8 | p[0]);
}
std::uint32_t load_be32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | p[3];
}
std::uint32_t load_le32(const std::uint8_t* p) {
  return std::uint32_t{p[3]} << 24 | std::uint32_t{p[2]} << 16 | std::uint32_t{p[1]} << 8 | p[0];
}
std::uint32_t load_le24(const std::uint8_t* p) {
  return std::uint32_t{p[2]} << 16 | std::uint32_t{p[1]} << 8 | p[0];
}

// TIFF (and EXIF, which is TIFF inside a JPEG segment) declares its byte order in the header.
struct TiffReader {
  bool little_endian = true;
  std::uint16_t u16(const std::uint8_t* p) const {
    return little_endian ? load_le16(p) : load_be16(p);
  }
  std::uint32_t u32(const std::uint8_t* p) const {
    return little_endian ? load_le32(p) : load_be32(p);
  }
  std::uint64_t u64(const std::uint8_t* p) const {
    const std::uint64_t a = u32(p);
    const std::uint64_t b = u32(p + 4);
    return little_endian ? (b << 32 | a) : (a << 32 | b);
  }
};

bool is_bmp_info_header_size(std::uint32_t size) {
  // Core (12), OS/2 v2 (16 and 64), BITMAPINFOHEADER (40) and its v2..v5 extensions.
  constexpr std::array<std::uint32_t, 8> kSizes = {12, 16, 40, 52, 56, 64, 108, 124};
  for (const std::uint32_t s : kSizes) {
    if (s == size) return true;
  }
  return false;
}

Format detect(const std::uint8_t* d, std::size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return Format::kJpeg;
  if (n >= 8 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return Format::kPng;
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) {
    return Format::kWebp;
  }
  // Two letters alone match one random input in 65536; a plausible info header size makes a
  // random file read as "not an image" rather than as a corrupt bitmap.
  if (n >= 2 && d[0] == 'B' && d[1] == 'M' &&
      (n < 18 || is_bmp_info_header_size(load_le32(d + 14)))) {
    return Format::kBmp;
  }
  if (n >= 4 && (std::memcmp(d, "II*\0", 4) == 0 || std::memcmp(d, "MM\0*", 4) == 0 ||
                 std::memcmp(d, "II+\0", 4) == 0 || std::memcmp(d, "MM\0+", 4) == 0)) {
    return Format::kTiff;
  }
  return Format::kUnknown;
}

[[noreturn]] void throw_unrecognised(const std::uint8_t* d, std::size_t n) {
  std::string message = "not a JPEG/PNG/WebP/BMP/TIFF image (";
  if (n == 0) {
    message += "empty input)";
    throw DecodeError(message);
  }
  message += "first bytes";
  const std::size_t shown = n < 8 ? n : 8;
  for (std::size_t i = 0; i < shown; ++i) {
    char hex[4];
    std::snprintf(hex, sizeof hex, " %02x", d[i]);
    message += hex;
  }
  message += n > shown ? " ...)" : ")";
  throw DecodeError(message);
}

// Sizes a reused output buffer. When it must grow it reserves twice what this image needs (at most
// 32 MiB more), so a buffer that meets images of varying sizes reallocates a few times at first and
// then not at all: a pipeline's steady state allocates nothing per image.
void size_output(std::vector<std::uint8_t>& buffer, std::size_t bytes) {
  constexpr std::size_t kMaxHeadroom = std::size_t{32} << 20;
  if (bytes > buffer.capacity()) buffer.reserve(bytes + std::min(bytes, kMaxHeadroom));
  buffer.resize(bytes);
}

[[noreturn]] void throw_truncated(Format format, std::size_t n, const std::string& what) {
  throw DecodeError(std::string("truncated ") + format_title(format) + ": " + what + " (input is " +
                    std::to_string(n) + " bytes)");
}

[[noreturn]] void throw_corrupt(Format format, const std::string& what) {
  throw DecodeError(std::string("corrupt ") + format_title(format) + ": " + what);
}

void check_pixels(int width, int height, std::int64_t max_pixels) {
  const std::int64_t pixels = static_cast<std::int64_t>(width) * height;
  if (pixels > max_pixels) {
    throw DecodeError("image is " + std::to_string(width) + "x" + std::to_string(height) + " = " +
                      std::to_string(pixels) + " pixels, above max_pixels " +
                      std::to_string(max_pixels) + " (raise decode's max_pixels to decode it)");
  }
}

struct Size {
  int width = 0;
  int height = 0;
};

// Dimensions must fit an int and be positive; anything else is a corrupt header, not a bomb.
Size checked_size(Format format, std::uint64_t width, std::uint64_t height) {
  if (width == 0 || height == 0 || width > INT_MAX || height > INT_MAX) {
    throw_corrupt(format, "header declares an impossible size " + std::to_string(width) + "x" +
                              std::to_string(height));
  }
  return {static_cast<int>(width), static_cast<int>(height)};
}

Size png_size(const std::uint8_t* d, std::size_t n) {
  // Signature (8), then the IHDR chunk: length (4), type (4), width (4), height (4).
  if (n < 24) throw_truncated(Format::kPng, n, "the IHDR header needs 24 bytes");
  if (std::memcmp(d + 12, "IHDR", 4) != 0) throw_corrupt(Format::kPng, "first chunk is not IHDR");
  return checked_size(Format::kPng, load_be32(d + 16), load_be32(d + 20));
}

Size bmp_size(const std::uint8_t* d, std::size_t n) {
  // File header (14), then the info header whose first field is its own size.
  if (n < 18) throw_truncated(Format::kBmp, n, "the file header needs 18 bytes");
  const std::uint32_t info_size = load_le32(d + 14);
  if (info_size == 12) {
    if (n < 26) throw_truncated(Format::kBmp, n, "the core header needs 26 bytes");
    return checked_size(Format::kBmp, load_le16(d + 18), load_le16(d + 20));
  }
  if (n < 26) throw_truncated(Format::kBmp, n, "the info header needs 26 bytes");
  const auto width = static_cast<std::int32_t>(load_le32(d + 18));
  // A negative height marks a top-down bitmap.
  const std::int64_t height = static_cast<std::int32_t>(load_le32(d + 22));
  if (width <= 0) throw_corrupt(Format::kBmp, "header declares width " + std::to_string(width));
  return checked_size(Format::kBmp, static_cast<std::uint64_t>(width),
                      static_cast<std::uint64_t>(height < 0 ? -height : height));
}

Size webp_size(const std::uint8_t* d, std::size_t n) {
  // RIFF header (12), then the first chunk: fourcc (4), size (4), payload from byte 20.
  if (n < 30) throw_truncated(Format::kWebp, n, "the first chunk header needs 30 bytes");
  const std::uint8_t* payload = d + 20;
  if (std::memcmp(d + 12, "VP8 ", 4) == 0) {
    // Lossy: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
    if (payload[3] != 0x9d || payload[4] != 0x01 || payload[5] != 0x2a) {
      throw_corrupt(Format::kWebp, "VP8 frame has no start code");
    }
    return checked_size(Format::kWebp, load_le16(payload + 6) & 0x3fffu,
                        load_le16(payload + 8) & 0x3fffu);
  }
  if (std::memcmp(d + 12, "VP8L", 4) == 0) {
    // Lossless: signature 0x2f, then 14 bits width-1 and 14 bits height-1.
    if (payload[0] != 0x2f) throw_corrupt(Format::kWebp, "VP8L chunk has no signature");
    const std::uint32_t bits = load_le32(payload + 1);
    return checked_size(Format::kWebp, (bits & 0x3fffu) + 1, ((bits >> 14) & 0x3fffu) + 1);
  }
  if (std::memcmp(d + 12, "VP8X", 4) == 0) {
    // Extended: flags (4), then 24-bit canvas width-1 and height-1.
    return checked_size(Format::kWebp, std::uint64_t{load_le24(payload + 4)} + 1,
                        std::uint64_t{load_le24(payload + 7)} + 1);
  }
  throw_corrupt(Format::kWebp, "first chunk is not VP8, VP8L or VP8X");
}

Size tiff_size(const std::uint8_t* d, std::size_t n) {
  constexpr std::uint16_t kImageWidth = 256;
  constexpr std::uint16_t kImageLength = 257;
  const TiffReader r{d[0] == 'I'};
  const bool big = r.u16(d + 2) == 43;
  // Classic TIFF: 32-bit offsets, 12-byte entries. BigTIFF: 64-bit offsets, 20-byte entries.
  const std::size_t header_size = big ? 16 : 8;
  const std::size_t count_size = big ? 8 : 2;
  const std::size_t entry_size = big ? 20 : 12;
  if (n < header_size) throw_truncated(Format::kTiff, n, "the header is incomplete");
  const std::uint64_t ifd = big ? r.u64(d + 8) : r.u32(d + 4);
  if (ifd > n || n - ifd < count_size) {
    throw_truncated(Format::kTiff, n, "the first IFD at " + std::to_string(ifd) + " is missing");
  }
  const std::uint64_t count = big ? r.u64(d + ifd) : r.u16(d + ifd);
  std::uint64_t width = 0;
  std::uint64_t height = 0;
  for (std::uint64_t i = 0; i < count && (width == 0 || height == 0); ++i) {
    const std::uint64_t at = ifd + count_size + i * entry_size;
    if (at > n || n - at < entry_size) {
      throw_truncated(Format::kTiff, n, "the first IFD is incomplete");
    }
    const std::uint8_t* entry = d + at;
    const std::uint16_t tag = r.u16(entry);
    if (tag != kImageWidth && tag != kImageLength) continue;
    const std::uint16_t type = r.u16(entry + 2);
    const std::uint8_t* value = entry + (big ? 12 : 8);
    std::uint64_t v = 0;
    if (type == 3) {
      v = r.u16(value);
    } else if (type == 4) {
      v = r.u32(value);
    } else if (type == 16 && big) {
      v = r.u64(value);
    } else {
      throw_corrupt(Format::kTiff,
                    "size tag " + std::to_string(tag) + " has type " + std::to_string(type));
    }
    (tag == kImageWidth ? width : height) = v;
  }
  if (width == 0 || height == 0) {
    throw_corrupt(Format::kTiff, "the first IFD has no ImageWidth/ImageLength");
  }
  return checked_size(Format::kTiff, width, height);
}

Size header_size(Format format, const std::uint8_t* d, std::size_t n) {
  switch (format) {
    case Format::kPng:
      return png_size(d, n);
    case Format::kBmp:
      return bmp_size(d, n);
    case Format::kWebp:
      return webp_size(d, n);
    case Format::kTiff:
      return tiff_size(d, n);
    case Format::kJpeg:
    case Format::kUnknown:
      break;
  }
  throw std::logic_error("header_size: not a format read through OpenCV");
}

// ---------------------------------------------------------------------------------------------
// JPEG

// One decompressor per thread: TurboJPEG handles are not thread-safe, and creating one per call
// would cost an allocation and libjpeg setup for every image. A handle carries state from one
// image to the next (tables, and after a failed header read a half-parsed stream), so it is
// replaced whenever that state could leak into the next result.
class TjDecompressor {
 public:
  TjDecompressor() = default;
  TjDecompressor(const TjDecompressor&) = delete;
  TjDecompressor& operator=(const TjDecompressor&) = delete;
  ~TjDecompressor() { reset(); }
  void reset() {
    if (handle_ != nullptr) tjDestroy(handle_);
    handle_ = nullptr;
  }
  tjhandle get() {
    if (handle_ == nullptr) {
      handle_ = tjInitDecompress();
      if (handle_ == nullptr) {
        throw DecodeError(std::string("cannot create a TurboJPEG decompressor: ") +
                          tjGetErrorStr2(nullptr));
      }
    }
    return handle_;
  }

 private:
  tjhandle handle_ = nullptr;
};

TjDecompressor& thread_decompressor() {
  thread_local TjDecompressor decompressor;
  return decompressor;
}

struct JpegMarkers {
  int orientation = 1;
  bool truncated = false;  // the data ends inside the markers, before the scan data
  // Whether the stream defines quantization and Huffman tables before its first scan. libjpeg
  // keeps the tables of earlier images in a handle, so a stream without its own would otherwise
  // decode with whatever this thread decoded last.
  bool has_dqt = false;
  bool has_dht = false;
  bool arithmetic = false;  // arithmetic-coded frames need no Huffman tables
};

// Reads the orientation from an APP1 payload; nullopt when the segment is not EXIF (XMP also
// lives in APP1). A malformed EXIF block means "as stored": the pixels are still good.
std::optional<int> exif_orientation(const std::uint8_t* p, std::size_t n) {
  constexpr std::uint16_t kOrientation = 0x0112;
  if (n < 6 || std::memcmp(p, "Exif\0\0", 6) != 0) return std::nullopt;
  const std::uint8_t* tiff = p + 6;
  const std::size_t size = n - 6;
  if (size < 8) return 1;
  TiffReader r;
  if (tiff[0] == 'I' && tiff[1] == 'I') {
    r.little_endian = true;
  } else if (tiff[0] == 'M' && tiff[1] == 'M') {
    r.little_endian = false;
  } else {
    return 1;
  }
  if (r.u16(tiff + 2) != 42) return 1;
  const std::uint64_t ifd = r.u32(tiff + 4);
  if (ifd > size || size - ifd < 2) return 1;
  const std::uint16_t count = r.u16(tiff + ifd);
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t at = ifd + 2 + i * 12;
    if (at > size || size - at < 12) return 1;
    const std::uint8_t* entry = tiff + at;
    if (r.u16(entry) != kOrientation) continue;
    const std::uint16_t type = r.u16(entry + 2);
    std::uint32_t value = 0;
    if (type == 3) {
      value = r.u16(entry + 8);
    } else if (type == 4) {
      value = r.u32(entry + 8);
    }
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

// Walks the marker segments from SOI to SOS. libjpeg would skip APP1 for us, so the EXIF
// orientation is ours to find; the walk also tells a stream cut inside its headers from a corrupt
// one. Unexpected bytes end the walk quietly: libjpeg is the judge of validity.
JpegMarkers walk_jpeg_markers(const std::uint8_t* d, std::size_t n) {
  constexpr std::uint8_t kSos = 0xDA;
  constexpr std::uint8_t kEoi = 0xD9;
  constexpr std::uint8_t kApp1 = 0xE1;
  constexpr std::uint8_t kDqt = 0xDB;
  constexpr std::uint8_t kDht = 0xC4;
  JpegMarkers result;
  bool orientation_found = false;
  std::size_t pos = 2;
  while (true) {
    if (pos >= n) {
      result.truncated = true;
      return result;
    }
    if (d[pos] != 0xFF) return result;
    while (pos < n && d[pos] == 0xFF) ++pos;  // fill bytes may precede a marker
    if (pos >= n) {
      result.truncated = true;
      return result;
    }
    const std::uint8_t marker = d[pos++];
    // Markers without a length: TEM, RST0-7, a repeated SOI.
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;
    if (marker == kEoi || marker == 0x00) return result;
    if (n - pos < 2) {
      result.truncated = true;
      return result;
    }
    const std::size_t length = load_be16(d + pos);
    if (length < 2) return result;
    if (n - pos < length) {
      result.truncated = true;
      return result;
    }
    if (marker == kSos) return result;
    result.has_dqt = result.has_dqt || marker == kDqt;
    result.has_dht = result.has_dht || marker == kDht;
    // SOF9-11 and SOF13-15: arithmetic-coded frames.
    result.arithmetic = result.arithmetic || (marker >= 0xC9 && marker <= 0xCB) ||
                        (marker >= 0xCD && marker <= 0xCF);
    if (marker == kApp1 && !orientation_found) {
      if (const auto orientation = exif_orientation(d + pos + 2, length - 2)) {
        result.orientation = *orientation;
        orientation_found = true;
      }
    }
    pos += length;
  }
}

struct JpegHeader {
  int width = 0;
  int height = 0;
  int colorspace = -1;
  std::string warning;  // a libjpeg warning raised while reading the header
};

JpegHeader read_jpeg_header(TjDecompressor& decompressor, const std::uint8_t* d, std::size_t n) {
  tjhandle tj = decompressor.get();
  JpegHeader header;
  int subsampling = -1;
  const int rc = tjDecompressHeader3(tj, d, static_cast<unsigned long>(n), &header.width,
                                     &header.height, &subsampling, &header.colorspace);
  // TurboJPEG 2.1 fills the outputs only once libjpeg has parsed the frame header, then refuses
  // sampling factors it has no name for although tjDecompress2 decodes them. So valid outputs
  // mean a usable header whatever rc says.
  if (header.width <= 0 || header.height <= 0 || header.colorspace < 0) {
    // libjpeg reads a stream that ends before its frame header as a tables-only stream: rc 0 and
    // no message.
    std::string message =
        rc == 0 ? "the stream holds no image (no frame header before its end)" : tjGetErrorStr2(tj);
    // TurboJPEG 2.1 returns from a failed header read without aborting libjpeg, which would then
    // resume the half-parsed stream on the next call; a tables-only stream leaves its tables.
    decompressor.reset();
    if (walk_jpeg_markers(d, n).truncated) {
      throw_truncated(Format::kJpeg, n,
                      "the data ends inside the headers, before the image data" +
                          (rc == 0 ? std::string() : " (" + message + ")"));
    }
    throw_corrupt(Format::kJpeg, message);
  }
  if (rc != 0 && tjGetErrorCode(tj) == TJERR_WARNING) header.warning = tjGetErrorStr2(tj);
  return header;
}

// How each EXIF orientation is reached from the stored image S (W x H) with at most one copy.
// TurboJPEG writes rows bottom-up for free (B(x, y) = S(x, H-1-y)); a transpose is the one copy;
// a flip afterwards runs in place. Orientation semantics from the EXIF 2.3 specification, tag
// 0x0112: the displayed image D is
//   1: D(x,y)=S(x,y)          2: D(x,y)=S(W-1-x,y)      3: D(x,y)=S(W-1-x,H-1-y)
//   4: D(x,y)=S(x,H-1-y)      5: D(x,y)=S(y,x)          6: D(x,y)=S(y,H-1-x)
//   7: D(x,y)=S(W-1-y,H-1-x)  8: D(x,y)=S(W-1-y,x)
enum class Flip { kNone, kHorizontal, kVertical };
struct OrientationPlan {
  bool bottom_up = false;
  bool transpose = false;
  Flip flip = Flip::kNone;
};
constexpr std::array<OrientationPlan, 9> kOrientationPlans = {{
    {false, false, Flip::kNone},        // 0: unused
    {false, false, Flip::kNone},        // 1: D = S
    {false, false, Flip::kHorizontal},  // 2: D = hflip(S)
    {true, false, Flip::kHorizontal},   // 3: D = hflip(B)
    {true, false, Flip::kNone},         // 4: D = B
    {false, true, Flip::kNone},         // 5: D = transpose(S)
    {true, true, Flip::kNone},          // 6: D = transpose(B)
    {true, true, Flip::kVertical},      // 7: D = vflip(transpose(B))
    {false, true, Flip::kVertical},     // 8: D = vflip(transpose(S))
}};

// Decodes into `dst`. STOPONWARNING makes the common clean path a single pass and a strict failure
// stop early. A non-strict caller wants the patched image, which needs a second, full pass.
// TJFLAG_LIMITSCANS: a progressive stream of more than kMaxJpegScans scans is a fatal error, not
// minutes of decoding (each scan is a pass over the whole image's coefficients).
void decompress(tjhandle tj, const std::uint8_t* d, std::size_t n, std::uint8_t* dst, int width,
                int height, int pixel_format, int flags, bool strict,
                std::vector<std::string>& warnings) {
  flags |= TJFLAG_LIMITSCANS;
  const int pitch = width * tjPixelSize[pixel_format];
  const auto size = static_cast<unsigned long>(n);
  if (tjDecompress2(tj, d, size, dst, width, pitch, height, pixel_format,
                    flags | TJFLAG_STOPONWARNING) == 0) {
    return;
  }
  std::string first = tjGetErrorStr2(tj);
  if (tjGetErrorCode(tj) == TJERR_FATAL) throw_corrupt(Format::kJpeg, first);
  if (strict) throw DecodeError("truncated or corrupt JPEG (decoder warning: " + first + ")");
  if (tjDecompress2(tj, d, size, dst, width, pitch, height, pixel_format, flags) == 0) return;
  // TurboJPEG reports a fatal error that follows a warning as TJERR_WARNING as well, and then the
  // rows after the failure were never written. libjpeg formats only the first warning of an image
  // into the message, while a fatal error always overwrites it: a changed message means fatal.
  std::string last = tjGetErrorStr2(tj);
  if (last != first) {
    throw_corrupt(Format::kJpeg, last + " (after decoder warning: " + first + ")");
  }
  warnings.push_back(std::move(first));
}

// TurboJPEG hands CMYK/YCCK back as stored, which for Adobe files (the only ones in practice)
// means inverted ink: c = 255 - C. The multiplicative model R = (255-C)(255-K)/255 then reads
// R = c*k/255, rounded. In place: each 4-byte pixel is read before its 3 bytes are written at
// or below its own position.
// OpenCV's formula (kOpenCv) is its own: a shift by 8 where 255 divides, 0 to 2 above the
// rounded value.
void cmyk_to_rgb_in_place(std::uint8_t* p, std::size_t pixels, Options::Cmyk model) {
  const std::uint8_t* src = p;
  std::uint8_t* dst = p;
  if (model == Options::Cmyk::kOpenCv) {
    for (std::size_t i = 0; i < pixels; ++i, src += 4, dst += 3) {
      const unsigned k = src[3];
      for (int ch = 0; ch < 3; ++ch) {
        dst[ch] = static_cast<std::uint8_t>(k - (((255U - src[ch]) * k) >> 8));
      }
    }
    return;
  }
  for (std::size_t i = 0; i < pixels; ++i, src += 4, dst += 3) {
    const unsigned c = src[0];
    const unsigned m = src[1];
    const unsigned y = src[2];
    const unsigned k = src[3];
    dst[0] = static_cast<std::uint8_t>((c * k + 127) / 255);
    dst[1] = static_cast<std::uint8_t>((m * k + 127) / 255);
    dst[2] = static_cast<std::uint8_t>((y * k + 127) / 255);
  }
}

// A rotated image goes through a per-thread staging buffer; past this size it is released after
// use so that one rare huge photo does not stay pinned in every worker thread.
constexpr std::size_t kKeepStagingBytes = std::size_t{64} << 20;

Info decode_jpeg(const std::uint8_t* d, std::size_t n, const Options& options,
                 std::vector<std::uint8_t>& out) {
  const JpegMarkers markers = walk_jpeg_markers(d, n);
  TjDecompressor& decompressor = thread_decompressor();
  if (!markers.has_dqt || !markers.has_dht) decompressor.reset();
  const JpegHeader header = read_jpeg_header(decompressor, d, n);
  check_pixels(header.width, header.height, options.max_pixels);
  tjhandle tj = decompressor.get();

  const int orientation = options.exif ? markers.orientation : 1;
  const OrientationPlan& plan = kOrientationPlans[orientation];
  const bool cmyk = header.colorspace == TJCS_CMYK || header.colorspace == TJCS_YCCK;
  const int w = header.width;
  const int h = header.height;
  const std::size_t pixels = static_cast<std::size_t>(w) * static_cast<std::size_t>(h);

  thread_local std::vector<std::uint8_t> staging;
  std::vector<std::uint8_t>& target = plan.transpose ? staging : out;
  size_output(target, pixels * (cmyk ? 4 : 3));

  Info info;
  info.format = format_name(Format::kJpeg);
  decompress(tj, d, n, target.data(), w, h, cmyk ? TJPF_CMYK : TJPF_RGB,
             (plan.bottom_up ? TJFLAG_BOTTOMUP : 0) |
                 (options.fast_dct ? TJFLAG_FASTDCT | TJFLAG_FASTUPSAMPLE : 0),
             options.strict, info.warnings);
  if (cmyk) {
    cmyk_to_rgb_in_place(target.data(), pixels, options.cmyk);
    target.resize(pixels * 3);
  }

  if (plan.transpose) {
    size_output(out, pixels * 3);
    const cv::Mat stored(h, w, CV_8UC3, staging.data());
    cv::Mat shown(w, h, CV_8UC3, out.data());
    cv::transpose(stored, shown);
    if (plan.flip == Flip::kVertical) cv::flip(shown, shown, 0);
    if (staging.capacity() > kKeepStagingBytes) std::vector<std::uint8_t>().swap(staging);
    info.width = h;
    info.height = w;
  } else {
    if (plan.flip == Flip::kHorizontal) {
      cv::Mat shown(h, w, CV_8UC3, out.data());
      cv::flip(shown, shown, 1);
    }
    info.width = w;
    info.height = h;
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// Reduced JPEG decoding through libjpeg's own API (TurboJPEG 2.1 has no cropping)

// libjpeg reports problems through callbacks that must not return after a fatal error: they
// keep the message and jump back to the function that made the library call. Warnings are kept
// (the first one, as TurboJPEG keeps it) and, under strict, stop the decode like a fatal error.
struct LibjpegErrors {
  jpeg_error_mgr manager;      // first: libjpeg hands this object back as a jpeg_error_mgr*
  jpeg_progress_mgr progress;  // counts scans, as TurboJPEG's TJFLAG_LIMITSCANS does
  std::jmp_buf jump;
  bool strict = true;
  bool warned = false;
  bool stopped_on_warning = false;
  char first_warning[JMSG_LENGTH_MAX] = {};
  char message[JMSG_LENGTH_MAX] = {};
};

LibjpegErrors& errors_of(j_common_ptr cinfo) {
  // Sound: `manager` is the first member of a standard-layout struct.
  return *reinterpret_cast<LibjpegErrors*>(cinfo->err);
}

[[noreturn]] void libjpeg_error_exit(j_common_ptr cinfo) {
  LibjpegErrors& errors = errors_of(cinfo);
  (*cinfo->err->format_message)(cinfo, errors.message);
  std::longjmp(errors.jump, 1);
}

void libjpeg_emit_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace output, never wanted
  LibjpegErrors& errors = errors_of(cinfo);
  ++cinfo->err->num_warnings;
  if (!errors.warned) {
    (*cinfo->err->format_message)(cinfo, errors.first_warning);
    errors.warned = true;
  }
  if (errors.strict) {
    errors.stopped_on_warning = true;
    std::longjmp(errors.jump, 1);
  }
}

// Called by libjpeg between passes over the input: the same limit TurboJPEG's TJFLAG_LIMITSCANS
// sets on the full path, with the message formatted as a fatal error's.
void libjpeg_progress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  const int scans = reinterpret_cast<j_decompress_ptr>(cinfo)->input_scan_number;
  if (scans <= kMaxJpegScans) return;
  LibjpegErrors& errors = errors_of(cinfo);
  std::snprintf(errors.message, sizeof errors.message,
                "Progressive JPEG image has more than %d scans", kMaxJpegScans);
  std::longjmp(errors.jump, 1);
}

// One libjpeg decompressor per thread, like the TurboJPEG handle: created on first use, reused
// for every image (its per-image memory comes from libjpeg's own pools), destroyed with the
// thread. Streams without their own tables never reach it, so no table of an earlier image can
// leak into a result.
class LibjpegDecompressor {
 public:
  LibjpegDecompressor() {
    cinfo.err = jpeg_std_error(&errors.manager);
    errors.manager.error_exit = libjpeg_error_exit;
    errors.manager.emit_message = libjpeg_emit_message;
    errors.progress.progress_monitor = libjpeg_progress;
    if (setjmp(errors.jump) != 0) {
      throw DecodeError(std::string("cannot create a libjpeg decompressor: ") + errors.message);
    }
    jpeg_create_decompress(&cinfo);
    cinfo.progress = &errors.progress;  // after the create, which clears every other field
  }
  LibjpegDecompressor(const LibjpegDecompressor&) = delete;
  LibjpegDecompressor& operator=(const LibjpegDecompressor&) = delete;
  ~LibjpegDecompressor() { jpeg_destroy_decompress(&cinfo); }

  void reset_errors(bool strict) {
    errors.strict = strict;
    errors.warned = false;
    errors.stopped_on_warning = false;
    errors.manager.num_warnings = 0;
    errors.message[0] = '\0';
  }

  jpeg_decompress_struct cinfo{};
  LibjpegErrors errors;
};

LibjpegDecompressor& thread_libjpeg() {
  thread_local LibjpegDecompressor decompressor;
  return decompressor;
}

// Returns the decompressor to its idle state however the reduced decode ends (a window is read
// and then abandoned: the rows below it are never decoded).
class AbortOnExit {
 public:
  explicit AbortOnExit(jpeg_decompress_struct& cinfo) : cinfo_(cinfo) {}
  AbortOnExit(const AbortOnExit&) = delete;
  AbortOnExit& operator=(const AbortOnExit&) = delete;
  ~AbortOnExit() { jpeg_abort_decompress(&cinfo_); }

 private:
  jpeg_decompress_struct& cinfo_;
};

// The three steps below each guard their library calls with setjmp and report a libjpeg error by
// returning false. Nothing with a destructor lives in their frames, so the jump skips nothing.

bool libjpeg_read_header(LibjpegDecompressor& dj, const std::uint8_t* d, std::size_t n) {
  if (setjmp(dj.errors.jump) != 0) return false;
  jpeg_mem_src(&dj.cinfo, d, static_cast<unsigned long>(n));
  return jpeg_read_header(&dj.cinfo, TRUE) == JPEG_HEADER_OK && !dj.errors.warned;
}

bool libjpeg_start_window(LibjpegDecompressor& dj, int scale, bool fast, JDIMENSION& x,
                          JDIMENSION& width) {
  if (setjmp(dj.errors.jump) != 0) return false;
  dj.cinfo.scale_num = 1;
  dj.cinfo.scale_denom = static_cast<unsigned int>(scale);
  dj.cinfo.out_color_space = JCS_EXT_RGB;
  // The same two choices as TurboJPEG's TJFLAG_FASTDCT and TJFLAG_FASTUPSAMPLE on the full path.
  if (fast) {
    dj.cinfo.dct_method = JDCT_IFAST;
    dj.cinfo.do_fancy_upsampling = FALSE;
  }
  jpeg_start_decompress(&dj.cinfo);
  jpeg_crop_scanline(&dj.cinfo, &x, &width);
  return true;
}

bool libjpeg_read_rows(LibjpegDecompressor& dj, JDIMENSION skip, JDIMENSION rows, std::uint8_t* dst,
                       std::size_t stride) {
  constexpr JDIMENSION kRowsPerCall = 16;
  if (setjmp(dj.errors.jump) != 0) return false;
  if (skip > 0 && jpeg_skip_scanlines(&dj.cinfo, skip) != skip) return false;
  for (JDIMENSION done = 0; done < rows;) {
    std::array<JSAMPROW, kRowsPerCall> pointers{};
    const JDIMENSION want = std::min(rows - done, kRowsPerCall);
    for (JDIMENSION i = 0; i < want; ++i) pointers[i] = dst + (done + i) * stride;
    const JDIMENSION got = jpeg_read_scanlines(&dj.cinfo, pointers.data(), want);
    if (got == 0) return false;
    done += got;
  }
  return true;
}

// Under strict, the rest of the stream after the window is read too, so that damage below the
// window is found as the whole-image path finds it: the rows below are skipped (libjpeg still
// entropy-decodes skipped rows, without the inverse DCT), the last row is read (a skip to the end
// would decode nothing) and the decompression is finished (the markers up to EOI). Any warning
// then stops it under strict.
bool libjpeg_verify_rest(LibjpegDecompressor& dj, std::uint8_t* row) {
  if (setjmp(dj.errors.jump) != 0) return false;
  const JDIMENSION height = dj.cinfo.output_height;
  if (dj.cinfo.output_scanline + 1 < height) {
    const JDIMENSION skip = height - 1 - dj.cinfo.output_scanline;
    if (jpeg_skip_scanlines(&dj.cinfo, skip) != skip) return false;
  }
  if (dj.cinfo.output_scanline < height) {
    JSAMPROW pointer = row;
    if (jpeg_read_scanlines(&dj.cinfo, &pointer, 1) != 1) return false;
  }
  jpeg_finish_decompress(&dj.cinfo);
  return true;
}

[[noreturn]] void throw_libjpeg_failure(const LibjpegErrors& errors) {
  if (errors.stopped_on_warning) {
    throw DecodeError(std::string("truncated or corrupt JPEG (decoder warning: ") +
                      errors.first_warning + ")");
  }
  if (errors.message[0] == '\0') throw_corrupt(Format::kJpeg, "the decoder stopped early");
  if (errors.warned) {
    throw_corrupt(Format::kJpeg, std::string(errors.message) +
                                     " (after decoder warning: " + errors.first_warning + ")");
  }
  throw_corrupt(Format::kJpeg, errors.message);
}

// A stream cut short (the common damage) lacks its final EOI marker. It takes the full path,
// which decodes every row and so reports the truncation exactly as without reduction.
bool ends_with_eoi(const std::uint8_t* d, std::size_t n) {
  return n >= 4 && d[n - 2] == 0xFF && d[n - 1] == 0xD9;
}

bool usable_request(const WindowRequest& r, int width, int height) {
  return std::isfinite(r.x) && std::isfinite(r.y) && std::isfinite(r.width) &&
         std::isfinite(r.height) && r.width > 0 && r.height > 0 && r.x >= 0 && r.y >= 0 &&
         r.x + r.width <= width + 1e-6 && r.y + r.height <= height + 1e-6 && r.out_width > 0 &&
         r.out_height > 0;
}

// Rows and columns decoded beyond the window on each side, in scaled pixels: the resampler's
// taps (bicubic reaches two pixels out) and the fancy chroma upsampling, which treats the edges
// of a cropped region like image edges, are then served by real neighbours.
constexpr int kWindowMargin = 3;

// How close to a cut of the restart grid (in scaled pixels) a delivered pixel may lie before the
// neighbouring segment is decoded too: smooth chroma upsampling reads one chroma sample beyond
// each pixel, and treats a cut like an image edge.
constexpr int kUpsamplingGuard = 2;

// Serves a JPEG that carries a restart grid (jpeg_window.hpp) from the segments that cover the
// window [x0, x1) x [y0, y1) (scaled pixels) alone; nullopt where the grid cannot serve it. The
// delivered pixels are those of a whole decode at the same scale: no cut lies within the
// upsampling's reach of one of them, and the window is cut out of the decoded rows rather than by
// jpeg_crop_scanline.
std::optional<Info> decode_restart_window(LibjpegDecompressor& dj, const std::uint8_t* d,
                                          std::size_t n, const Options& options, int scale,
                                          const PixelRect& window, int width, int height,
                                          std::vector<std::uint8_t>& out) {
  const std::optional<RestartGrid> grid = find_restart_grid(d, n);
  if (!grid) return std::nullopt;
  const int guard = grid->subsampled && !options.fast_dct ? kUpsamplingGuard * scale : 0;
  const PixelRect need{window.x0 * scale, window.y0 * scale, std::min(window.x1 * scale, width),
                       std::min(window.y1 * scale, height)};
  thread_local std::vector<std::uint8_t> window_jpeg;
  const std::optional<PixelRect> placed = build_window_jpeg(d, n, *grid, need, guard, window_jpeg);
  if (!placed) return std::nullopt;
  // A rare huge photo's window is not kept in every worker thread.
  struct Release {
    ~Release() {
      if (window_jpeg.capacity() > kKeepStagingBytes) std::vector<std::uint8_t>().swap(window_jpeg);
    }
  } release;

  jpeg_abort_decompress(&dj.cinfo);
  const bool whole = window_jpeg.empty();  // every segment needed: the stream itself
  if (!libjpeg_read_header(dj, whole ? d : window_jpeg.data(), whole ? n : window_jpeg.size())) {
    throw_libjpeg_failure(dj.errors);
  }
  // The built JPEG starts on a block boundary of every scale (its origin is a multiple of 8).
  const int origin_x = placed->x0 / scale;
  const int origin_y = placed->y0 / scale;
  auto columns = static_cast<JDIMENSION>((placed->x1 - placed->x0 + scale - 1) / scale);
  JDIMENSION first_column = 0;
  if (!libjpeg_start_window(dj, scale, options.fast_dct, first_column, columns)) {
    throw_libjpeg_failure(dj.errors);
  }
  const auto rows = static_cast<JDIMENSION>(window.y1 - origin_y);
  if (dj.cinfo.output_width != columns || dj.cinfo.output_components != 3 ||
      dj.cinfo.output_height < rows || window.x1 - origin_x > static_cast<int>(columns)) {
    throw std::logic_error("decode: a restart window's JPEG does not have the expected shape");
  }
  const std::size_t stride = static_cast<std::size_t>(columns) * 3;
  size_output(out, stride * rows);
  if (!libjpeg_read_rows(dj, 0, rows, out.data(), stride)) throw_libjpeg_failure(dj.errors);
  // Moves the window to the front of the buffer, row after row; a row never lands after its source.
  const std::size_t row_bytes = static_cast<std::size_t>(window.x1 - window.x0) * 3;
  const std::size_t skip_x = static_cast<std::size_t>(window.x0 - origin_x) * 3;
  const auto skip_y = static_cast<std::size_t>(window.y0 - origin_y);
  const auto window_rows = static_cast<std::size_t>(window.y1 - window.y0);
  for (std::size_t r = 0; r < window_rows; ++r) {
    std::memmove(out.data() + r * row_bytes, out.data() + (r + skip_y) * stride + skip_x,
                 row_bytes);
  }
  out.resize(row_bytes * window_rows);

  Info info;
  info.format = format_name(Format::kJpeg);
  info.width = window.x1 - window.x0;
  info.height = window.y1 - window.y0;
  if (dj.errors.warned) info.warnings.emplace_back(dj.errors.first_warning);
  info.reduction = {scale, window.x0, window.y0, width, height, true};
  return info;
}

// Decodes the chooser's window, or returns nullopt (having touched nothing) where the full path
// must serve the image.
std::optional<Info> decode_jpeg_reduced(const std::uint8_t* d, std::size_t n,
                                        const Options& options, const WindowChooser& chooser,
                                        std::vector<std::uint8_t>& out) {
  const JpegMarkers markers = walk_jpeg_markers(d, n);
  if (options.exif && markers.orientation != 1) return std::nullopt;
  if (!markers.has_dqt || !(markers.has_dht || markers.arithmetic) || !ends_with_eoi(d, n)) {
    return std::nullopt;
  }
  // libjpeg-turbo 2.1's merged upsampler (fast mode's plain chroma) does not give an
  // arithmetic-coded file's cropped window the pixels of the whole image; such files are rare.
  if (options.fast_dct && markers.arithmetic) return std::nullopt;

  LibjpegDecompressor& dj = thread_libjpeg();
  dj.reset_errors(options.strict);
  const AbortOnExit abort_on_exit(dj.cinfo);
  if (!libjpeg_read_header(dj, d, n)) return std::nullopt;
  const J_COLOR_SPACE space = dj.cinfo.jpeg_color_space;
  if (space != JCS_YCbCr && space != JCS_RGB && space != JCS_GRAYSCALE) return std::nullopt;
  if (dj.cinfo.image_width > INT_MAX || dj.cinfo.image_height > INT_MAX) return std::nullopt;
  const int width = static_cast<int>(dj.cinfo.image_width);
  const int height = static_cast<int>(dj.cinfo.image_height);
  if (static_cast<std::int64_t>(width) * height > options.max_pixels) return std::nullopt;

  const std::optional<WindowRequest> request = chooser.choose(width, height);
  if (!request || !usable_request(*request, width, height)) return std::nullopt;
  // libjpeg's reduced inverse DCTs are square: with 4:2:2 or 4:4:0 chroma, 1/4 and 1/8 come out
  // markedly blurred in colour (under 26 dB against the averaged full decode, where 4:2:0 and
  // 4:4:4 stay above 30), so those stop at 1/2.
  const bool square_sampling = dj.cinfo.max_h_samp_factor == dj.cinfo.max_v_samp_factor;
  const int scale = std::min(reduced_scale(*request), square_sampling ? 8 : 2);
  const int scaled_width = (width + scale - 1) / scale;
  const int scaled_height = (height + scale - 1) / scale;
  const auto first = [&](double at, int limit) {
    return std::clamp(static_cast<int>(std::floor(at / scale)) - kWindowMargin, 0, limit);
  };
  const auto last = [&](double at, int limit) {
    return std::clamp(static_cast<int>(std::ceil(at / scale)) + kWindowMargin, 0, limit);
  };
  const int x0 = first(request->x, scaled_width);
  const int x1 = last(request->x + request->width, scaled_width);
  const int y0 = first(request->y, scaled_height);
  const int y1 = last(request->y + request->height, scaled_height);
  // The whole image at full scale: TurboJPEG's full path does that faster.
  if (scale == 1 && x0 == 0 && y0 == 0 && x1 == width && y1 == height) return std::nullopt;
  if (std::optional<Info> info =
          decode_restart_window(dj, d, n, options, scale, {x0, y0, x1, y1}, width, height, out)) {
    return info;
  }

  auto x = static_cast<JDIMENSION>(x0);
  auto columns = static_cast<JDIMENSION>(x1 - x0);
  if (!libjpeg_start_window(dj, scale, options.fast_dct, x, columns)) {
    throw_libjpeg_failure(dj.errors);
  }
  if (dj.cinfo.output_width != static_cast<JDIMENSION>(columns) ||
      dj.cinfo.output_components != 3) {
    throw std::logic_error("decode: libjpeg's cropped output does not have the expected shape");
  }
  const auto rows = static_cast<JDIMENSION>(y1 - y0);
  const std::size_t stride = static_cast<std::size_t>(columns) * 3;
  size_output(out, stride * rows);
  if (!libjpeg_read_rows(dj, static_cast<JDIMENSION>(y0), rows, out.data(), stride)) {
    throw_libjpeg_failure(dj.errors);
  }
  if (options.strict) {
    thread_local std::vector<std::uint8_t> row;
    row.resize(stride);
    if (!libjpeg_verify_rest(dj, row.data())) throw_libjpeg_failure(dj.errors);
  }

  Info info;
  info.format = format_name(Format::kJpeg);
  info.width = static_cast<int>(columns);
  info.height = static_cast<int>(rows);
  if (dj.errors.warned) info.warnings.emplace_back(dj.errors.first_warning);
  info.reduction = {scale, static_cast<int>(x), y0, width, height};
  return info;
}

// ---------------------------------------------------------------------------------------------
// PNG through libpng

// libpng reports through callbacks: a fatal error must not return, so it keeps the message and
// jumps back to the setjmp of the function that made the library call (no C++ frame with a
// destructor lies in between, and no exception ever crosses a libpng frame). Warnings, which
// libpng would otherwise print on stderr, are kept (the first one, and how many); they never stop
// the decode: libpng warns about ancillary chunks and trailing data it then ignores, never about
// pixels it delivers (damaged image data is an error), so `strict` leaves them listed. An
// ordinary photo's "iCCP: known incorrect sRGB profile" must not cost the sample.
struct PngState {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  std::size_t pos = 0;
  bool truncated = false;  // the read callback ran out of input
  int warnings = 0;
  char first_warning[256] = {};
  char message[256] = {};
};

PngState& png_state(png_structp png) { return *static_cast<PngState*>(png_get_error_ptr(png)); }

[[noreturn]] void png_on_error(png_structp png, png_const_charp message) {
  PngState& state = png_state(png);
  std::snprintf(state.message, sizeof state.message, "%s", message != nullptr ? message : "");
  png_longjmp(png, 1);
}

void png_on_warning(png_structp png, png_const_charp message) {
  PngState& state = png_state(png);
  if (state.warnings++ == 0) {
    std::snprintf(state.first_warning, sizeof state.first_warning, "%s",
                  message != nullptr ? message : "");
  }
}

void png_read_memory(png_structp png, png_bytep dst, png_size_t length) {
  PngState& state = png_state(png);
  if (state.size - state.pos < length) {
    state.truncated = true;
    png_error(png, "the data ends early");
  }
  std::memcpy(dst, state.data + state.pos, length);
  state.pos += length;
}

// Owns one libpng read struct (single use: libpng cannot rewind one to a new image).
class PngReader {
 public:
  explicit PngReader(PngState& state) {
    png_ = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, png_on_error, png_on_warning);
    if (png_ == nullptr) throw DecodeError("cannot create a libpng decoder");
    info_ = png_create_info_struct(png_);
    end_ = png_create_info_struct(png_);
    if (info_ == nullptr || end_ == nullptr) {
      png_destroy_read_struct(&png_, &info_, &end_);
      throw DecodeError("cannot create a libpng decoder");
    }
    png_set_read_fn(png_, &state, png_read_memory);
    // Text chunks are never read, and libpng would inflate and keep every one (up to 1000 of up
    // to 8 MB each: a 3 MB file of zTXt chunks cost cv::imdecode 3.2 GB and 19 s). Skipped as
    // unknown chunks, their CRCs are still checked.
    static constexpr png_byte kIgnored[] = "tEXt\0zTXt\0iTXt";
    png_set_keep_unknown_chunks(png_, PNG_HANDLE_CHUNK_NEVER, kIgnored, 3);
  }
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;
  ~PngReader() { png_destroy_read_struct(&png_, &info_, &end_); }

  png_structp png() const { return png_; }
  png_infop info() const { return info_; }
  png_infop end() const { return end_; }

 private:
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
  png_infop end_ = nullptr;
};

struct PngHeader {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int bit_depth = 0;
  int color_type = 0;
};

// The two steps below each guard their library calls with setjmp and report a libpng error (or a
// warning under strict) by returning false. Nothing with a destructor lives in their frames.

bool png_read_header(const PngReader& r, PngHeader& header) {
  if (setjmp(png_jmpbuf(r.png())) != 0) return false;
  png_read_info(r.png(), r.info());
  png_get_IHDR(r.png(), r.info(), &header.width, &header.height, &header.bit_depth,
               &header.color_type, nullptr, nullptr, nullptr);
  return true;
}

// The transformations OpenCV's PNG decoder (grfmt_png.cpp) asks of libpng for an 8-bit colour
// image, so that the pixels are cv::imdecode's: 16-bit samples stripped to their high byte,
// alpha dropped (a palette's tRNS expanded first, then dropped), palettes and 1/2/4-bit gray
// expanded, gray replicated; libpng's own interlace handling, one row at a time straight into
// `dst` (what png_read_image does, without its array of row pointers).
bool png_read_pixels(const PngReader& r, const PngHeader& header, std::uint8_t* dst,
                     std::size_t stride) {
  png_structp png = r.png();
  if (setjmp(png_jmpbuf(png)) != 0) return false;
  if (header.bit_depth == 16) png_set_strip_16(png);
  png_set_strip_alpha(png);
  if (header.color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  const bool gray = (header.color_type & PNG_COLOR_MASK_COLOR) == 0;
  if (gray && header.bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (gray) png_set_gray_to_rgb(png);
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, r.info());
  if (png_get_rowbytes(png, r.info()) != stride || png_get_channels(png, r.info()) != 3) {
    png_error(png, "unexpected row layout after the transformations");
  }
  for (int pass = 0; pass < passes; ++pass) {
    for (png_uint_32 y = 0; y < header.height; ++y) png_read_row(png, dst + y * stride, nullptr);
  }
  png_read_end(png, r.end());
  return true;
}

[[noreturn]] void throw_png_failure(const PngState& state) {
  std::string what = state.message[0] != '\0' ? state.message : "the decoder stopped early";
  if (state.warnings > 0)
    what += std::string(" (after decoder warning: ") + state.first_warning + ")";
  if (state.truncated) throw_truncated(Format::kPng, state.size, what);
  throw_corrupt(Format::kPng, what);
}

// The EXIF orientation of a PNG's eXIf chunk (a TIFF header and its first IFD), read as OpenCV's
// ExifReader reads it, since cv::imdecode applies it to PNGs too: the 16 bits at the value
// field of the first Orientation entry whatever its type; reading stops at the first entry
// beyond the data. 1 (as stored) when there is none.
int png_exif_orientation(const std::uint8_t* p, std::size_t n) {
  constexpr std::uint16_t kOrientation = 0x0112;
  if (n < 8 || p[0] != p[1] || (p[0] != 'I' && p[0] != 'M')) return 1;
  const TiffReader r{p[0] == 'I'};
  if (r.u16(p + 2) != 42) return 1;
  const std::uint64_t ifd = r.u32(p + 4);
  if (ifd + 2 > n) return 1;
  const std::uint16_t count = r.u16(p + ifd);
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t at = ifd + 2 + i * 12;
    if (at + 2 > n) return 1;
    if (r.u16(p + at) != kOrientation) continue;
    if (at + 10 > n) return 1;
    return r.u16(p + at + 8);
  }
  return 1;
}

// Applies an orientation as OpenCV's ExifTransform does (values outside 2-8 change nothing).
void apply_png_orientation(int orientation, std::vector<std::uint8_t>& out, int& width,
                           int& height) {
  if (orientation < 2 || orientation > 8) return;
  cv::Mat image(height, width, CV_8UC3, out.data());
  if (orientation <= 4) {
    cv::flip(image, image, orientation == 2 ? 1 : orientation == 3 ? -1 : 0);
    return;
  }
  cv::Mat turned;
  cv::transpose(image, turned);
  if (orientation != 5) cv::flip(turned, turned, orientation == 6 ? 1 : orientation == 7 ? -1 : 0);
  std::memcpy(out.data(), turned.data, out.size());
  std::swap(width, height);
}

Info decode_png(const std::uint8_t* d, std::size_t n, const Options& options,
                std::vector<std::uint8_t>& out) {
  // The size from the IHDR bytes, checked before libpng allocates anything for the image.
  const Size size = png_size(d, n);
  check_pixels(size.width, size.height, options.max_pixels);

  PngState state;
  state.data = d;
  state.size = n;
  const PngReader reader(state);
  PngHeader header;
  if (!png_read_header(reader, header)) throw_png_failure(state);
  if (header.width != static_cast<png_uint_32>(size.width) ||
      header.height != static_cast<png_uint_32>(size.height)) {
    throw std::logic_error("decode: libpng's IHDR differs from the bytes read before it");
  }
  const std::size_t stride = static_cast<std::size_t>(size.width) * 3;
  size_output(out, stride * static_cast<std::size_t>(size.height));
  if (!png_read_pixels(reader, header, out.data(), stride)) throw_png_failure(state);

  Info info;
  info.format = format_name(Format::kPng);
  info.width = size.width;
  info.height = size.height;
  if (options.exif) {
    png_uint_32 exif_size = 0;
    png_bytep exif = nullptr;
    for (png_infop where : {reader.info(), reader.end()}) {
      if (png_get_valid(reader.png(), where, PNG_INFO_eXIf) != 0) {
        png_get_eXIf_1(reader.png(), where, &exif_size, &exif);
        break;
      }
    }
    if (exif != nullptr && exif_size > 0) {
      apply_png_orientation(png_exif_orientation(exif, exif_size), out, info.width, info.height);
    }
  }
  if (state.warnings > 0) {
    std::string warning = state.first_warning;
    if (state.warnings > 1) {
      warning += " (and " + std::to_string(state.warnings - 1) + " more decoder warnings)";
    }
    info.warnings.push_back(std::move(warning));
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// WebP, BMP, TIFF through OpenCV

Info decode_with_opencv(Format format, const std::uint8_t* d, std::size_t n, const Options& options,
                        std::vector<std::uint8_t>& out) {
  const Size size = header_size(format, d, n);
  check_pixels(size.width, size.height, options.max_pixels);
  if (n > static_cast<std::size_t>(INT_MAX)) {
    throw DecodeError(std::string(format_title(format)) + " input of " + std::to_string(n) +
                      " bytes is too large to decode");
  }

  // OpenCV decodes into a Mat of its own, never one borrowed from `out`: when OpenCV fails to
  // read a header it returns without touching the Mat it was given, so a borrowed Mat would look
  // decoded while holding whatever `out` held before (the last image this buffer carried).
  const cv::Mat encoded(1, static_cast<int>(n), CV_8UC1, const_cast<std::uint8_t*>(d));
  const int flags = cv::IMREAD_COLOR | (options.exif ? 0 : cv::IMREAD_IGNORE_ORIENTATION);
  cv::Mat bgr;
  try {
    cv::imdecode(encoded, flags, &bgr);
  } catch (const cv::Exception& e) {
    throw_corrupt(format, e.err);
  }
  if (bgr.empty()) throw_corrupt(format, "OpenCV could not decode the data");
  if (bgr.type() != CV_8UC3) throw_corrupt(format, "OpenCV returned an unexpected pixel type");

  Info info;
  info.format = format_name(format);
  info.width = bgr.cols;
  info.height = bgr.rows;
  size_output(out, static_cast<std::size_t>(bgr.cols) * static_cast<std::size_t>(bgr.rows) * 3);
  cv::Mat rgb(bgr.rows, bgr.cols, CV_8UC3, out.data());
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return info;
}

}  // namespace

// The scaled window must cover twice the output size, not just the output size: the caller's
// bilinear resize of a full-scale window samples the pixels without averaging, while the DCT
// scale averages s x s blocks, and the two drift apart as s nears the whole reduction. Measured on
// `make-dataset --size large` (docs/PERFORMANCE.md): covering 1x gives 32.7 dB (resize 256 +
// centre crop) and 35.2 dB (random-resized crop) against whole-image decoding, 2x gives 37.6 and
// 41.4 dB.
constexpr double kCoverage = 2.0;

int reduced_scale(const WindowRequest& window) {
  if (!window.allow_scale) return 1;
  for (const int scale : {8, 4, 2}) {
    if (window.width >= static_cast<double>(window.out_width) * scale * kCoverage &&
        window.height >= static_cast<double>(window.out_height) * scale * kCoverage) {
      return scale;
    }
  }
  return 1;
}

Info decode(const std::uint8_t* data, std::size_t size, const Options& options,
            std::vector<std::uint8_t>& out, const WindowChooser* chooser) {
  const Format format = detect(data, size);
  if (format == Format::kUnknown) throw_unrecognised(data, size);
  if (format == Format::kJpeg) {
    if (chooser != nullptr) {
      if (std::optional<Info> info = decode_jpeg_reduced(data, size, options, *chooser, out)) {
        return std::move(*info);
      }
    }
    return decode_jpeg(data, size, options, out);
  }
  if (format == Format::kPng) return decode_png(data, size, options, out);
  return decode_with_opencv(format, data, size, options, out);
}

Info peek(const std::uint8_t* data, std::size_t size) {
  const Format format = detect(data, size);
  if (format == Format::kUnknown) throw_unrecognised(data, size);
  Info info;
  info.format = format_name(format);
  if (format == Format::kJpeg) {
    JpegHeader header = read_jpeg_header(thread_decompressor(), data, size);
    info.width = header.width;
    info.height = header.height;
    if (!header.warning.empty()) info.warnings.push_back(std::move(header.warning));
  } else {
    const Size s = header_size(format, data, size);
    info.width = s.width;
    info.height = s.height;
  }
  return info;
}

}  // namespace millrace::decode
