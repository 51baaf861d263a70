#include "stages/common/jpeg/jpeg_window.hpp"

#include <algorithm>
#include <array>
#include <cstring>

namespace millrace::decode {
namespace {

constexpr std::uint8_t kSoi = 0xD8;
constexpr std::uint8_t kEoi = 0xD9;
constexpr std::uint8_t kSos = 0xDA;
constexpr std::uint8_t kDri = 0xDD;
constexpr std::uint8_t kRst0 = 0xD0;
constexpr std::uint8_t kApp0 = 0xE0;
constexpr std::uint8_t kApp14 = 0xEE;
constexpr std::uint8_t kCom = 0xFE;
constexpr std::size_t kKeepMarkers = std::size_t{1} << 16;

int load_be16(const std::uint8_t* p) { return p[0] << 8 | p[1]; }

void store_be16(std::uint8_t* p, int v) {
  p[0] = static_cast<std::uint8_t>(v >> 8);
  p[1] = static_cast<std::uint8_t>(v & 0xFF);
}

int ceil_div(int a, int b) { return (a + b - 1) / b; }

bool is_rst(std::uint8_t marker) { return marker >= kRst0 && marker <= kRst0 + 7; }

// One marker segment of the headers: its marker, where its length field starts, its length.
struct Segment {
  std::uint8_t marker = 0;
  std::size_t at = 0;
  std::size_t length = 0;
};

// Reads the marker segment at `pos` (fill bytes allowed before it); false at anything else.
bool next_segment(const std::uint8_t* d, std::size_t n, std::size_t& pos, Segment& s) {
  if (pos >= n || d[pos] != 0xFF) return false;
  while (pos < n && d[pos] == 0xFF) ++pos;
  if (pos >= n) return false;
  s.marker = d[pos++];
  // Markers without a payload have no business in the headers of a stream we cut.
  if (s.marker == 0x00 || s.marker == 0x01 || is_rst(s.marker) || s.marker == kSoi ||
      s.marker == kEoi || n - pos < 2) {
    return false;
  }
  s.at = pos;
  s.length = static_cast<std::size_t>(load_be16(d + pos));
  if (s.length < 2 || n - pos < s.length) return false;
  pos += s.length;
  return true;
}

// Segments that only carry metadata: a decoder of the window needs none of them, and an EXIF or
// ICC block can outweigh a small window's data. JFIF's APP0 and Adobe's APP14 say how to read the
// colour components, so they stay.
bool metadata_only(const std::uint8_t* d, const Segment& s) {
  if (s.marker == kCom) return true;
  if (s.marker < kApp0 || s.marker > kApp0 + 15) return false;
  const std::uint8_t* payload = d + s.at + 2;
  const std::size_t size = s.length - 2;
  if (s.marker == kApp0) return !(size >= 5 && std::memcmp(payload, "JFIF\0", 5) == 0);
  if (s.marker == kApp14) return !(size >= 5 && std::memcmp(payload, "Adobe", 5) == 0);
  return true;
}

}  // namespace

std::optional<RestartGrid> find_restart_grid(const std::uint8_t* d, std::size_t n) {
  if (n < 4 || d[0] != 0xFF || d[1] != kSoi) return std::nullopt;
  RestartGrid g;
  int components = 0;
  std::array<int, 3> h{};
  std::array<int, 3> v{};
  bool frame = false;
  std::size_t pos = 2;
  Segment s;
  while (next_segment(d, n, pos, s)) {
    const std::uint8_t* p = d + s.at + 2;  // the payload
    const std::size_t size = s.length - 2;
    switch (s.marker) {
      case 0xC0:  // baseline
      case 0xC1:  // extended sequential, Huffman
        if (frame || size < 6) return std::nullopt;
        frame = true;
        if (p[0] != 8) return std::nullopt;
        g.height = load_be16(p + 1);
        g.width = load_be16(p + 3);
        components = p[5];
        if (g.height == 0 || g.width == 0) return std::nullopt;  // height set by a DNL marker
        if ((components != 1 && components != 3) ||
            size != 6 + 3 * static_cast<std::size_t>(components)) {
          return std::nullopt;
        }
        for (int c = 0; c < components; ++c) {
          h[c] = p[6 + 3 * c + 1] >> 4;
          v[c] = p[6 + 3 * c + 1] & 0x0F;
        }
        g.frame_size_at = s.at + 3;
        break;
      case kDri:
        if (size != 2) return std::nullopt;
        g.interval = load_be16(p);
        break;
      case kSos: {
        if (!frame || size < 1 || p[0] != components) return std::nullopt;
        g.scan_at = s.at + s.length;
        if (components == 1) {
          // A one-component scan is not interleaved: its MCU is one block, whatever the
          // sampling factors say.
          g.mcu_width = 8;
          g.mcu_height = 8;
        } else {
          const bool luma_ok = h[0] >= 1 && h[0] <= 2 && v[0] >= 1 && v[0] <= 2;
          const bool chroma_full = h[1] == 1 && v[1] == 1 && h[2] == 1 && v[2] == 1;
          if (!luma_ok || !chroma_full) return std::nullopt;
          g.mcu_width = 8 * h[0];
          g.mcu_height = 8 * v[0];
          g.subsampled = h[0] > 1 || v[0] > 1;
        }
        if (g.interval <= 0) return std::nullopt;
        g.mcus_per_row = ceil_div(g.width, g.mcu_width);
        g.mcu_rows = ceil_div(g.height, g.mcu_height);
        if (g.mcus_per_row % g.interval != 0) return std::nullopt;
        g.segments_per_row = g.mcus_per_row / g.interval;
        return g;
      }
      default:
        // Progressive, lossless, hierarchical and arithmetic frames, arithmetic conditioning,
        // a DNL or EXP before the scan: nothing a window can be cut from.
        if ((s.marker >= 0xC2 && s.marker <= 0xCF && s.marker != 0xC4) || s.marker == 0xDC ||
            s.marker == 0xDE || s.marker == 0xDF) {
          return std::nullopt;
        }
        break;
    }
  }
  return std::nullopt;
}

std::optional<PixelRect> build_window_jpeg(const std::uint8_t* d, std::size_t n,
                                           const RestartGrid& g, const PixelRect& need,
                                           int guard_pixels, std::vector<std::uint8_t>& jpeg) {
  if (need.x0 < 0 || need.y0 < 0 || need.x1 > g.width || need.y1 > g.height || need.x0 >= need.x1 ||
      need.y0 >= need.y1 || g.scan_at >= n) {
    return std::nullopt;
  }
  const int segment_width = g.interval * g.mcu_width;
  int c0 = need.x0 / segment_width;
  int c1 = std::min(ceil_div(need.x1, segment_width), g.segments_per_row);
  int r0 = need.y0 / g.mcu_height;
  int r1 = std::min(ceil_div(need.y1, g.mcu_height), g.mcu_rows);
  if (guard_pixels > 0) {
    if (c0 > 0 && need.x0 - c0 * segment_width < guard_pixels) --c0;
    if (c1 < g.segments_per_row && c1 * segment_width - need.x1 < guard_pixels) ++c1;
    if (r0 > 0 && need.y0 - r0 * g.mcu_height < guard_pixels) --r0;
    if (r1 < g.mcu_rows && r1 * g.mcu_height - need.y1 < guard_pixels) ++r1;
  }
  if (c0 == 0 && r0 == 0 && c1 == g.segments_per_row && r1 == g.mcu_rows) {
    jpeg.clear();
    return PixelRect{0, 0, g.width, g.height};
  }

  // Where each RST marker sits. An 0xFF in entropy-coded data is always followed by a stuffed
  // 0x00, so every other 0xFF starts a marker (or is a fill byte before one).
  thread_local std::vector<std::size_t> markers;
  markers.clear();
  // A huge image's marker list is not kept in every worker thread.
  struct Release {
    ~Release() {
      if (markers.capacity() > kKeepMarkers) std::vector<std::size_t>().swap(markers);
    }
  } release;
  const std::size_t segments =
      static_cast<std::size_t>(g.segments_per_row) * static_cast<std::size_t>(g.mcu_rows);
  std::size_t end_of_scan = 0;
  for (std::size_t p = g.scan_at;;) {
    const void* found = p < n ? std::memchr(d + p, 0xFF, n - p) : nullptr;
    if (found == nullptr) return std::nullopt;
    const std::size_t q = static_cast<std::size_t>(static_cast<const std::uint8_t*>(found) - d);
    if (q + 1 >= n) return std::nullopt;
    const std::uint8_t b = d[q + 1];
    if (b == 0x00 || b == 0xFF) {
      p = q + (b == 0x00 ? 2 : 1);
      continue;
    }
    if (b == kEoi) {
      end_of_scan = q;
      break;
    }
    if (!is_rst(b) || (b - kRst0) != static_cast<int>(markers.size() % 8) ||
        markers.size() + 1 >= segments) {
      return std::nullopt;
    }
    markers.push_back(q);
    p = q + 2;
  }
  if (markers.size() + 1 != segments) return std::nullopt;
  const auto segment_start = [&](std::size_t k) { return k == 0 ? g.scan_at : markers[k - 1] + 2; };
  const auto segment_end = [&](std::size_t k) {
    return k + 1 == segments ? end_of_scan : markers[k];
  };

  jpeg.clear();
  jpeg.reserve(g.scan_at + 2 +
               (segment_end(static_cast<std::size_t>(r1) * g.segments_per_row - 1) -
                segment_start(static_cast<std::size_t>(r0) * g.segments_per_row)));
  jpeg.push_back(0xFF);
  jpeg.push_back(kSoi);
  std::size_t frame_size_at = 0;
  std::size_t pos = 2;
  Segment s;
  while (pos < g.scan_at && next_segment(d, n, pos, s)) {
    if (metadata_only(d, s)) continue;
    jpeg.push_back(0xFF);
    jpeg.push_back(s.marker);
    if (s.at <= g.frame_size_at && g.frame_size_at < s.at + s.length) {
      frame_size_at = jpeg.size() + (g.frame_size_at - s.at);
    }
    jpeg.insert(jpeg.end(), d + s.at, d + s.at + s.length);
  }
  if (pos != g.scan_at || frame_size_at == 0) return std::nullopt;

  PixelRect placed;
  placed.x0 = c0 * segment_width;
  placed.y0 = r0 * g.mcu_height;
  placed.x1 = std::min(g.width, c1 * segment_width);
  placed.y1 = std::min(g.height, r1 * g.mcu_height);
  store_be16(jpeg.data() + frame_size_at, placed.y1 - placed.y0);
  store_be16(jpeg.data() + frame_size_at + 2, placed.x1 - placed.x0);

  // Each row's run of segments is contiguous in the stream, so it is copied at once and the RST
  // markers inside it are renumbered in place; the run of the next row follows a new RST.
  int number = 0;
  for (int r = r0; r < r1; ++r) {
    const std::size_t first = static_cast<std::size_t>(r) * g.segments_per_row + c0;
    const std::size_t last = static_cast<std::size_t>(r) * g.segments_per_row + c1 - 1;
    if (r > r0) {
      jpeg.push_back(0xFF);
      jpeg.push_back(static_cast<std::uint8_t>(kRst0 + (number++ % 8)));
    }
    const std::size_t begin = segment_start(first);
    const std::size_t base = jpeg.size();
    jpeg.insert(jpeg.end(), d + begin, d + segment_end(last));
    for (std::size_t k = first; k < last; ++k) {
      jpeg[base + (markers[k] - begin) + 1] = static_cast<std::uint8_t>(kRst0 + (number++ % 8));
    }
  }
  jpeg.push_back(0xFF);
  jpeg.push_back(kEoi);
  return placed;
}

}  // namespace millrace::decode
