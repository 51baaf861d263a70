// Image decoding kernel: encoded JPEG/PNG/WebP/BMP/TIFF bytes in, interleaved 8-bit RGB out.
//
// Contract:
// - Plain functions with no engine dependency. `decode` and `peek` may be called from any number
//   of threads at once. Each thread lazily creates its own TurboJPEG decompressor on first use
//   (thread_local) and frees it when the thread exits; nothing is shared between threads.
// - The caller owns `data` (read only, must stay valid for the duration of the call) and `out`.
//   `decode` resizes `out` to exactly width*height*3 bytes and reuses its capacity, so once a
//   buffer is large enough decoding a JPEG or a PNG into it allocates no pixel memory (WebP, BMP
//   and TIFF are decoded into OpenCV's own buffer first, then converted into `out`: OpenCV cannot
//   report a failure in a buffer it was lent). The pixels never depend on what `out` held before
//   the call. On a thrown DecodeError
//   the contents and size of `out` are unspecified; an image refused by `max_pixels` leaves `out`
//   untouched.
// - Per-thread state, all owned by the kernel: the TurboJPEG handle (replaced after a failed
//   header read and for streams that lack their own tables, so no result depends on what the
//   thread decoded before) and a staging buffer for JPEGs whose EXIF orientation transposes
//   them (kept for reuse, released after use when above 64 MiB).
// - The format is detected from the magic bytes, never from a file name. JPEG goes through
//   TurboJPEG directly (bit-identical to cv::imdecode, about twice as fast as imdecode plus its
//   BGR->RGB conversion); WebP, BMP and TIFF go through cv::imdecode once their dimensions were
//   read from the header.
// - PNG goes through libpng directly, with the transformations OpenCV's own PNG decoder asks for
//   (16-bit samples stripped to their high byte, alpha and tRNS dropped, palettes and 1/2/4-bit
//   gray expanded, gray replicated, Adam7 interlacing undone) and the orientation of an eXIf
//   chunk applied as cv::imdecode applies it: the pixels are cv::imdecode's for IMREAD_COLOR, in
//   every colour type and bit depth. A libpng read struct is created per image (libpng cannot
//   reuse one) and lives only for the call. libpng's errors and warnings come back through its
//   callbacks (a longjmp to the decoding function, never a C++ exception through libpng's frames)
//   and never reach stderr: an error (a truncated or corrupt stream, a bad CRC in a critical
//   chunk) is a DecodeError whatever `strict` says; a warning (a malformed ancillary chunk such as
//   an iCCP profile that is too short, a bad CRC in one, data after the image) concerns nothing
//   the pixels depend on, so it is listed in Info::warnings (the first, and how many more) under
//   `strict` too: a PNG's pixels are complete or its decode fails. Text chunks
//   (tEXt, zTXt, iTXt) are skipped unparsed: libpng would inflate and keep up to 1000 of them.
// - Reduced decoding: given a WindowChooser, `decode` asks it, once the header is read, which part
//   of the image the caller will read and at what size, then decodes only that window (rounded out
//   to libjpeg's iMCU columns), at the smallest DCT scale (1/2, 1/4, 1/8; 1/2 at most for 4:2:2
//   and 4:4:0 chroma) at which the window still covers twice the output size, through libjpeg's own
//   API (jpeg_crop_scanline, jpeg_skip_scanlines; TurboJPEG 2.1 cannot crop). A second per-thread
//   object, a libjpeg decompressor, serves it. Where the reduced path cannot serve (not a JPEG, an
//   EXIF orientation other than 1, CMYK/YCCK, a stream without its own tables, one that does not
//   end with its EOI marker, any trouble in its headers) the whole image is decoded exactly as
//   without a chooser, with the same errors. Under `strict`, the rows below the window are
//   entropy-decoded and the stream read to its end (no inverse DCT, no pixels), so that a warning
//   anywhere in it is an error as on the whole-image path; without `strict` they are never
//   decoded, and damage there goes unnoticed.
// - Progressive JPEGs of more than kMaxJpegScans scans are refused on both paths (TurboJPEG's
//   TJFLAG_LIMITSCANS, and a libjpeg progress monitor counting scans with the same limit): each
//   scan is a pass over the whole image, so a few hundred kilobytes repeating one scan would
//   otherwise cost minutes.
// - A JPEG whose restart interval divides its MCU row (as `millrace prepare` writes them) is
//   served from its restart grid instead: the JPEG of the segments under the window is cut out of
//   the stream (jpeg_window.hpp) and decoded alone, at the same scale, with one more segment or
//   MCU row where smooth chroma upsampling would otherwise change a pixel next to a cut. Its
//   pixels are then exactly those of a whole decode at that scale. Segments start afresh (byte
//   aligned, DC predictions reset), so damage in one outside the window cannot change a delivered
//   pixel; those segments are never entropy-decoded, under `strict` too, where the window's own
//   segments are decoded strictly. Every restart marker of the stream is checked while the grid is
//   found: a stream whose markers do not match its grid (a truncated or spliced file, a lost or
//   misnumbered marker) takes the path above, which reports the damage.
// - Nothing blocks except on the CPU; no process-wide state is mutated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/window.hpp"

namespace millrace::decode {

// TurboJPEG's own limit under TJFLAG_LIMITSCANS (libjpeg-turbo 2.1, turbojpeg.c), used on the
// libjpeg path too: ordinary progressive files have about 10 scans.
inline constexpr int kMaxJpegScans = 500;

struct Options {
  // Apply the EXIF orientation (JPEG APP1 "Exif", PNG eXIf, tag 0x0112, values 1-8) so that the
  // pixels come out the way a viewer shows them. Other formats follow OpenCV's own orientation
  // handling.
  bool exif = true;
  // Any JPEG decoder warning (a truncated or corrupt JPEG that libjpeg patches over) makes the
  // sample an error. With strict=false the image is returned and the warning is reported in
  // Info::warnings. PNG warnings are always only reported (see above); WebP/BMP/TIFF either
  // decode or fail: OpenCV surfaces no warnings.
  bool strict = true;
  // Images with more pixels than this are refused from their header, before any pixel buffer is
  // allocated (decompression bombs). The default keeps width*height*12 below 2^31.
  std::int64_t max_pixels = 178956970;
  // JPEG only: trade a little fidelity for speed, as TurboJPEG's TJFLAG_FASTDCT |
  // TJFLAG_FASTUPSAMPLE and tf.io.decode_jpeg's dct_method "INTEGER_FAST" do: libjpeg's fast
  // integer inverse DCT (JDCT_IFAST) instead of the accurate one, and chroma upsampled by
  // replication (merged with the colour conversion) instead of the triangle filter. Against the
  // accurate decode: about 43 dB PSNR on photos at 1/1 (docs/PERFORMANCE.md). The reduced inverse
  // DCTs (1/2, 1/4, 1/8) have one kind only; the upsampling choice still applies there.
  bool fast_dct = false;
  // How a CMYK/YCCK JPEG (Adobe's inverted ink, c = 255 - C) becomes RGB. kRounded: R = c * k /
  // 255, rounded. kOpenCv: R = k - ((255 - c) * k >> 8), what cv::imdecode gives (and so MXNet's
  // loader); 0 to 2 above kRounded.
  enum class Cmyk { kRounded, kOpenCv };
  Cmyk cmyk = Cmyk::kRounded;
};

// What a reduced decode delivered instead of the whole image at full size.
struct Reduction {
  // 0: not reduced, the pixels are the whole image at full size. 1, 2, 4 or 8: the pixels are a
  // window of the image scaled by 1/scale (ceil(width / scale) x ceil(height / scale) in all).
  int scale = 0;
  int x = 0;  // the window's first column and row in the scaled image
  int y = 0;
  int full_width = 0;  // the image's size at full scale
  int full_height = 0;
  // The window was decoded from the JPEG's restart grid alone (jpeg_window.hpp): only the
  // segments under it were read, and its pixels are those of a whole decode at this scale.
  bool from_grid = false;
};

struct Info {
  int width = 0;   // after EXIF orientation for `decode`, as stored for `peek`; for a reduced
  int height = 0;  // decode, the size of the window delivered
  std::vector<std::string> warnings;
  std::string format;  // "jpeg", "png", "webp", "bmp" or "tiff"
  Reduction reduction;
};

// Chooses, from the image's full size, the window the caller will read (millrace::WindowRequest,
// engine/window.hpp: the coordinates cv::resize maps); nullopt: the whole image at full scale.
// Called at most once per decode, on the decoding thread; must not throw.
class WindowChooser {
 public:
  virtual std::optional<WindowRequest> choose(int width, int height) const noexcept = 0;

 protected:
  ~WindowChooser() = default;
};

// The DCT scale denominator (1, 2, 4 or 8) for a window: the largest at which the scaled window
// still covers twice the output size in both directions, so that the caller's resize still
// halves it at least (closer to a resize of the full-scale window; 1 when scaling is not
// allowed).
int reduced_scale(const WindowRequest& window);

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
// With a `chooser`, a JPEG may come out reduced (see the contract above and Info::reduction).
Info decode(const std::uint8_t* data, std::size_t size, const Options& options,
            std::vector<std::uint8_t>& out, const WindowChooser* chooser = nullptr);

// Reads only the header: format, width and height as stored (before EXIF orientation), without
// decoding any pixels. Throws DecodeError for an unrecognised format or an unreadable header.
Info peek(const std::uint8_t* data, std::size_t size);

}  // namespace millrace::decode
