// Windows decoded from a JPEG's restart grid against a whole decode at the same scale, and the
// grids that must take the ordinary path.
#include "stages/common/jpeg/jpeg_window.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "stages/common/jpeg/jpeg_restart.hpp"
#include "stages/common/jpeg/jpeg_test_support.hpp"
#include "stages/decode/decode_kernel.hpp"

namespace millrace::decode {
namespace {

using testing::Bytes;
using testing::encode;
using testing::Encoding;
using testing::Image;
using testing::k420;
using testing::k422;
using testing::k440;
using testing::k444;
using testing::kGray;
using testing::Layout;
using testing::whole;

class FixedWindow final : public WindowChooser {
 public:
  explicit FixedWindow(WindowRequest r) : r_(r) {}
  std::optional<WindowRequest> choose(int, int) const noexcept override { return r_; }

 private:
  WindowRequest r_;
};

struct Difference {
  std::size_t pixels = 0;  // pixels with any channel different
  int max = 0;
};

// Compares a decoded window with the same rectangle of `reference`.
Difference compare(const Bytes& window, const Info& info, const Image& reference) {
  Difference d;
  const Reduction& r = info.reduction;
  for (int y = 0; y < info.height; ++y) {
    for (int x = 0; x < info.width; ++x) {
      bool differs = false;
      for (int c = 0; c < 3; ++c) {
        const int a = window[(static_cast<std::size_t>(y) * info.width + x) * 3 + c];
        const int b =
            reference.rgb[(static_cast<std::size_t>(r.y + y) * reference.width + r.x + x) * 3 + c];
        if (a != b) {
          differs = true;
          d.max = std::max(d.max, std::abs(a - b));
        }
      }
      d.pixels += differs ? 1 : 0;
    }
  }
  return d;
}

// Random windows over the image at every scale the decoder may choose; every delivered pixel must
// equal the whole decode's, and every window must have come from the grid.
void expect_exact_windows(const Bytes& jpeg, int width, int height, bool fast,
                          const std::string& what, int trials = 60) {
  std::mt19937 rng(12345);
  Options options;
  options.fast_dct = fast;
  std::vector<std::optional<Image>> references(9);
  for (int t = 0; t < trials; ++t) {
    const int w = std::uniform_int_distribution<int>(std::max(1, width / 6), width)(rng);
    const int h = std::uniform_int_distribution<int>(std::max(1, height / 6), height)(rng);
    WindowRequest request;
    request.x = std::uniform_int_distribution<int>(0, width - w)(rng) +
                std::uniform_real_distribution<double>(0, 0.9)(rng);
    request.y = std::uniform_int_distribution<int>(0, height - h)(rng);
    request.width = std::min<double>(w, width - request.x);
    request.height = h;
    const int wanted = 1 << std::uniform_int_distribution<int>(0, 3)(rng);
    request.out_width = std::max(1, w / (2 * wanted));
    request.out_height = std::max(1, h / (2 * wanted));
    const FixedWindow chooser(request);
    Bytes out;
    const Info info = decode(jpeg.data(), jpeg.size(), options, out, &chooser);
    const int scale = info.reduction.scale;
    if (scale == 0) continue;  // the whole image at full size: nothing was cut
    ASSERT_TRUE(info.reduction.from_grid) << what << ": window " << t << " took another path";
    if (!references[scale]) references[scale] = whole(jpeg, scale, fast);
    const Difference d = compare(out, info, *references[scale]);
    EXPECT_EQ(d.pixels, 0u) << what << ", window " << t << " (" << request.x << "," << request.y
                            << " " << request.width << "x" << request.height << ") at 1/" << scale
                            << ": " << d.pixels << " pixels differ, by up to " << d.max;
  }
}

Bytes with_grid(const Bytes& jpeg, int interval = 0) {
  Bytes out;
  const recordio::RestartResult r =
      recordio::add_restart_grid(jpeg.data(), jpeg.size(), interval, out);
  EXPECT_EQ(r.outcome, recordio::RestartOutcome::kRewritten) << r.message;
  return out;
}

TEST(JpegWindow, WindowsAreExactForEveryServedLayout) {
  const std::vector<std::pair<int, int>> sizes = {{512, 384}, {500, 375}, {333, 500}, {257, 131}};
  for (const Layout& layout : {k444, k420, k422, k440, kGray}) {
    for (const auto& [w, h] : sizes) {
      const Bytes jpeg = with_grid(encode(w, h, layout, {}));
      const std::string what =
          std::string(layout.name) + " " + std::to_string(w) + "x" + std::to_string(h);
      ASSERT_TRUE(find_restart_grid(jpeg.data(), jpeg.size()).has_value()) << what;
      expect_exact_windows(jpeg, w, h, false, what);
      expect_exact_windows(jpeg, w, h, true, what + " (dct: fast)", 20);
    }
  }
}

TEST(JpegWindow, EverySegmentWidthIsExact) {
  // One MCU per segment (the finest grid) up to a whole row per segment.
  for (const int interval : {1, 2, 4, 8, 32}) {
    const Bytes jpeg = encode(512, 256, k420, {interval});
    const std::optional<RestartGrid> grid = find_restart_grid(jpeg.data(), jpeg.size());
    ASSERT_TRUE(grid.has_value()) << interval;
    EXPECT_EQ(grid->segments_per_row, 32 / interval);
    expect_exact_windows(jpeg, 512, 256, false, "interval " + std::to_string(interval), 30);
  }
}

TEST(JpegWindow, GridDescribesTheStream) {
  const Bytes jpeg = encode(500, 375, k420, {4});
  const std::optional<RestartGrid> g = find_restart_grid(jpeg.data(), jpeg.size());
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(g->width, 500);
  EXPECT_EQ(g->height, 375);
  EXPECT_EQ(g->mcu_width, 16);
  EXPECT_EQ(g->mcu_height, 16);
  EXPECT_EQ(g->mcus_per_row, 32);
  EXPECT_EQ(g->mcu_rows, 24);
  EXPECT_EQ(g->segments_per_row, 8);
  EXPECT_TRUE(g->subsampled);
  // A one-component scan is not interleaved: its MCU is one block whatever the factors say.
  const std::optional<RestartGrid> gray = find_restart_grid(
      with_grid(encode(100, 60, kGray, {})).data(), with_grid(encode(100, 60, kGray, {})).size());
  ASSERT_TRUE(gray.has_value());
  EXPECT_EQ(gray->mcu_width, 8);
  EXPECT_EQ(gray->mcus_per_row, 13);
  EXPECT_FALSE(gray->subsampled);
}

// The window's JPEG alone, decoded: with no guard, the pixels next to a cut through 4:2:0 chroma
// differ from the whole decode (smooth upsampling treats the cut as an image edge); with the
// guard, none do.
TEST(JpegWindow, GuardKeepsUpsampledPixelsExact) {
  const Bytes jpeg = encode(512, 384, k420, {1});
  const std::optional<RestartGrid> grid = find_restart_grid(jpeg.data(), jpeg.size());
  ASSERT_TRUE(grid.has_value());
  const Image reference = whole(jpeg, 1, false);
  const PixelRect need{160, 96, 320, 256};  // on MCU boundaries: every cut touches it
  for (const int guard : {0, 2}) {
    Bytes cut;
    const std::optional<PixelRect> placed =
        build_window_jpeg(jpeg.data(), jpeg.size(), *grid, need, guard, cut);
    ASSERT_TRUE(placed.has_value());
    const Image window = whole(cut, 1, false);
    ASSERT_EQ(window.width, placed->x1 - placed->x0);
    ASSERT_EQ(window.height, placed->y1 - placed->y0);
    Info info;
    info.width = need.x1 - need.x0;
    info.height = need.y1 - need.y0;
    info.reduction.x = need.x0;
    info.reduction.y = need.y0;
    Bytes needed;
    for (int y = need.y0; y < need.y1; ++y) {
      const std::size_t at =
          (static_cast<std::size_t>(y - placed->y0) * window.width + need.x0 - placed->x0) * 3;
      needed.insert(needed.end(), window.rgb.begin() + static_cast<std::ptrdiff_t>(at),
                    window.rgb.begin() +
                        static_cast<std::ptrdiff_t>(at + static_cast<std::size_t>(info.width) * 3));
    }
    const Difference d = compare(needed, info, reference);
    if (guard == 0) {
      EXPECT_GT(d.pixels, 0u) << "a cut right at the window should show in 4:2:0 chroma";
      EXPECT_LE(d.max, 64) << "beyond what one chroma sample explains";
      std::printf("4:2:0 window cut without a guard: %zu of %d pixels differ, by up to %d\n",
                  d.pixels, info.width * info.height, d.max);
    } else {
      EXPECT_EQ(d.pixels, 0u);
      EXPECT_LT(placed->x0, need.x0);
      EXPECT_LT(placed->y0, need.y0);
    }
  }
}

// What must take the ordinary path: the decode still succeeds, with the same pixels inside the
// window as a whole decode, but not from the grid.
void expect_fallback(const Bytes& jpeg, int width, int height, const std::string& what) {
  EXPECT_FALSE(find_restart_grid(jpeg.data(), jpeg.size()).has_value()) << what;
  WindowRequest request;
  request.x = width / 4.0;
  request.y = height / 3.0;
  request.width = width / 2.0;
  request.height = height / 2.0;
  request.out_width = static_cast<int>(request.width);
  request.out_height = static_cast<int>(request.height);
  const FixedWindow chooser(request);
  Bytes out;
  const Info info = decode(jpeg.data(), jpeg.size(), {}, out, &chooser);
  EXPECT_EQ(info.reduction.scale, 1) << what;
  EXPECT_FALSE(info.reduction.from_grid) << what;
}

TEST(JpegWindow, GridsThatCannotServeFallBack) {
  // 32 MCUs per row: 5 and 12 wrap rows, 64 spans two rows.
  for (const int interval : {5, 12, 64}) {
    expect_fallback(encode(500, 375, k420, {interval}), 500, 375,
                    "interval " + std::to_string(interval));
  }
  expect_fallback(encode(500, 375, k420, {}), 500, 375, "no restart markers");
  expect_fallback(encode(500, 375, k420, {4, true}), 500, 375, "progressive");
  expect_fallback(encode(500, 375, k420, {4, false, true}), 500, 375, "arithmetic");
  expect_fallback(encode(333, 500, k444, {8}), 333, 500, "4:4:4, 42 MCUs a row, interval 8");
}

TEST(JpegWindow, OddSizesAndTinyImages) {
  // Partial MCUs on the right and at the bottom are part of the last segment column and row.
  for (const auto& [w, h] : std::vector<std::pair<int, int>>{{17, 9}, {31, 47}, {129, 65}}) {
    for (const Layout& layout : {k444, k420, k422, k440, kGray}) {
      const Bytes jpeg = with_grid(encode(w, h, layout, {}));
      expect_exact_windows(
          jpeg, w, h, false,
          std::string(layout.name) + " " + std::to_string(w) + "x" + std::to_string(h), 15);
    }
  }
  // One segment in all: nothing smaller can be cut, the stream itself is the window's JPEG.
  const Bytes tiny = encode(16, 16, k420, {1});
  const std::optional<RestartGrid> grid = find_restart_grid(tiny.data(), tiny.size());
  ASSERT_TRUE(grid.has_value());
  Bytes cut = {1, 2, 3};
  const std::optional<PixelRect> placed =
      build_window_jpeg(tiny.data(), tiny.size(), *grid, {4, 4, 12, 12}, 0, cut);
  ASSERT_TRUE(placed.has_value());
  EXPECT_TRUE(cut.empty());
  EXPECT_EQ(placed->x1, 16);
  EXPECT_EQ(placed->y1, 16);
}

// Offsets of the RST markers in a stream (0xFF followed by D0..D7 in the entropy-coded data).
std::vector<std::size_t> restart_markers(const Bytes& jpeg) {
  const std::optional<RestartGrid> grid = find_restart_grid(jpeg.data(), jpeg.size());
  std::vector<std::size_t> found;
  for (std::size_t i = grid->scan_at; i + 1 < jpeg.size(); ++i) {
    if (jpeg[i] == 0xFF && jpeg[i + 1] >= 0xD0 && jpeg[i + 1] <= 0xD7) found.push_back(i);
  }
  return found;
}

WindowRequest bottom_right_quarter(int width, int height) {
  WindowRequest request;
  request.x = width / 2.0;
  request.y = height / 2.0;
  request.width = width / 2.0;
  request.height = height / 2.0;
  request.out_width = width / 2;
  request.out_height = height / 2;
  return request;
}

TEST(JpegWindow, CorruptSegmentInTheWindowIsReported) {
  const Bytes jpeg = encode(512, 384, k444, {8});  // 64 MCUs a row: 8 segments a row, 48 rows
  const std::vector<std::size_t> markers = restart_markers(jpeg);
  ASSERT_EQ(markers.size(), 8u * 48 - 1);
  // Segment 6 of row 36 (inside the bottom-right quarter) loses most of its data: the decoder
  // meets the next RST marker in the middle of an MCU.
  const std::size_t k = 36 * 8 + 6;
  const std::size_t begin = markers[k - 1] + 2;
  const std::size_t end = markers[k];
  ASSERT_GT(end - begin, 20u);
  Bytes corrupt(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(begin + 4));
  corrupt.insert(corrupt.end(), jpeg.begin() + static_cast<std::ptrdiff_t>(end), jpeg.end());

  const FixedWindow chooser(bottom_right_quarter(512, 384));
  Bytes out;
  try {
    decode(corrupt.data(), corrupt.size(), {}, out, &chooser);
    ADD_FAILURE() << "a corrupt segment inside the window decoded without an error";
  } catch (const DecodeError& e) {
    EXPECT_NE(std::string(e.what()).find("corrupt JPEG"), std::string::npos) << e.what();
  }
  Options lenient;
  lenient.strict = false;
  const Info info = decode(corrupt.data(), corrupt.size(), lenient, out, &chooser);
  EXPECT_TRUE(info.reduction.from_grid);
  ASSERT_FALSE(info.warnings.empty());
  EXPECT_NE(info.warnings.front().find("Corrupt JPEG data"), std::string::npos)
      << info.warnings.front();

  // The same damage in the top-left quarter lies outside the window's segments: not read, as
  // rows below a window are not read by the ordinary reduced path.
  const std::size_t k_outside = 2 * 8 + 1;
  Bytes elsewhere(jpeg.begin(),
                  jpeg.begin() + static_cast<std::ptrdiff_t>(markers[k_outside - 1] + 6));
  elsewhere.insert(elsewhere.end(), jpeg.begin() + static_cast<std::ptrdiff_t>(markers[k_outside]),
                   jpeg.end());
  const Info clean = decode(elsewhere.data(), elsewhere.size(), {}, out, &chooser);
  EXPECT_TRUE(clean.reduction.from_grid);
  EXPECT_TRUE(clean.warnings.empty());
}

TEST(JpegWindow, MisnumberedMarkerFallsBackAndIsReported) {
  const Bytes jpeg = encode(512, 384, k444, {8});
  const std::vector<std::size_t> markers = restart_markers(jpeg);
  // A marker of the first row renumbered: the stream no longer matches its grid. The ordinary
  // reduced path decodes every row above the window and meets the damage there.
  Bytes damaged = jpeg;
  damaged[markers[2] + 1] = static_cast<std::uint8_t>(0xD0 + (jpeg[markers[2] + 1] - 0xD0 + 3) % 8);
  Bytes scratch;
  EXPECT_FALSE(build_window_jpeg(damaged.data(), damaged.size(),
                                 *find_restart_grid(damaged.data(), damaged.size()),
                                 {256, 192, 512, 384}, 0, scratch)
                   .has_value());
  const FixedWindow chooser(bottom_right_quarter(512, 384));
  Bytes out;
  try {
    decode(damaged.data(), damaged.size(), {}, out, &chooser);
    ADD_FAILURE() << "a misnumbered restart marker decoded without an error";
  } catch (const DecodeError& e) {
    EXPECT_NE(std::string(e.what()).find("JPEG"), std::string::npos) << e.what();
  }
  // A marker missing altogether (its two bytes cut out): fewer segments than the grid declares.
  Bytes missing(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(markers[5]));
  missing.insert(missing.end(), jpeg.begin() + static_cast<std::ptrdiff_t>(markers[5] + 2),
                 jpeg.end());
  Bytes cut;
  EXPECT_FALSE(build_window_jpeg(missing.data(), missing.size(),
                                 *find_restart_grid(missing.data(), missing.size()),
                                 {256, 192, 512, 384}, 0, cut)
                   .has_value());
}

TEST(JpegWindow, WindowJpegDropsMetadataAndKeepsItsTables) {
  Bytes jpeg = encode(256, 256, k420, {2});
  // An APP1 block of 5000 bytes after SOI.
  Bytes app1 = {0xFF, 0xE1, 0x13, 0x8A, 'E', 'x', 'i', 'f', 0, 0};
  app1.resize(5004, 0x55);
  jpeg.insert(jpeg.begin() + 2, app1.begin(), app1.end());
  const std::optional<RestartGrid> grid = find_restart_grid(jpeg.data(), jpeg.size());
  ASSERT_TRUE(grid.has_value());
  Bytes cut;
  const std::optional<PixelRect> placed =
      build_window_jpeg(jpeg.data(), jpeg.size(), *grid, {40, 40, 80, 80}, 0, cut);
  ASSERT_TRUE(placed.has_value());
  EXPECT_LT(cut.size(), 5000u);
  EXPECT_EQ(placed->x0, 32);
  EXPECT_EQ(placed->x1, 96);
  EXPECT_EQ(placed->y0, 32);
  EXPECT_EQ(placed->y1, 80);
  const Image window = whole(cut, 1, false);
  EXPECT_EQ(window.width, 64);
  EXPECT_EQ(window.height, 48);
}

// What the caller reads (the requested window, without the decoder's margin) is the same from the
// prepared file's grid as from the original through the cropping path: batches do not change.
TEST(JpegWindow, PreparedFileGivesTheCroppingPathsWindow) {
  std::mt19937 rng(2024);
  for (const Layout& layout : {k444, k420, k422, k440, kGray}) {
    const Bytes original = encode(500, 375, layout, {});
    const Bytes prepared = with_grid(original);
    for (int t = 0; t < 25; ++t) {
      WindowRequest request;
      request.width = std::uniform_int_distribution<int>(60, 500)(rng);
      request.height = std::uniform_int_distribution<int>(60, 375)(rng);
      request.x = std::uniform_real_distribution<double>(0, 500 - request.width)(rng);
      request.y = std::uniform_real_distribution<double>(0, 375 - request.height)(rng);
      const int wanted = 1 << std::uniform_int_distribution<int>(0, 2)(rng);
      request.out_width = std::max(1, static_cast<int>(request.width) / (2 * wanted));
      request.out_height = std::max(1, static_cast<int>(request.height) / (2 * wanted));
      const FixedWindow chooser(request);
      Bytes a;
      Bytes b;
      const Info from_crop = decode(original.data(), original.size(), {}, a, &chooser);
      const Info from_grid = decode(prepared.data(), prepared.size(), {}, b, &chooser);
      ASSERT_FALSE(from_crop.reduction.from_grid);
      ASSERT_TRUE(from_grid.reduction.from_grid) << layout.name;
      ASSERT_EQ(from_crop.reduction.scale, from_grid.reduction.scale);
      const int s = from_grid.reduction.scale;
      const int x0 = static_cast<int>(std::ceil(request.x / s));
      const int y0 = static_cast<int>(std::ceil(request.y / s));
      const int x1 = static_cast<int>(std::floor((request.x + request.width) / s));
      const int y1 = static_cast<int>(std::floor((request.y + request.height) / s));
      std::size_t differ = 0;
      for (int y = y0; y < y1; ++y) {
        for (int x = x0; x < x1; ++x) {
          for (int c = 0; c < 3; ++c) {
            const auto at = [&](const Info& info, const Bytes& px) {
              return px[(static_cast<std::size_t>(y - info.reduction.y) * info.width + x -
                         info.reduction.x) *
                            3 +
                        c];
            };
            differ += at(from_crop, a) != at(from_grid, b) ? 1 : 0;
          }
        }
      }
      EXPECT_EQ(differ, 0u) << layout.name << ", window " << t << " at 1/" << s;
    }
  }
}

// Damage anywhere (headers, markers, segments, the cut-off tail) gives a window or a DecodeError,
// never a crash or another exception (with MILLRACE_SANITIZE=address, no stray access either).
TEST(JpegWindow, DamagedStreamsNeverCrash) {
  const Bytes jpeg = with_grid(encode(200, 150, k420, {}));
  const FixedWindow chooser(bottom_right_quarter(200, 150));
  std::mt19937 rng(99);
  int decoded = 0;
  int refused = 0;
  for (int trial = 0; trial < 400; ++trial) {
    Bytes damaged = jpeg;
    const int edits = std::uniform_int_distribution<int>(1, 4)(rng);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = std::uniform_int_distribution<std::size_t>(2, damaged.size() - 1)(rng);
      switch (std::uniform_int_distribution<int>(0, 2)(rng)) {
        case 0:
          damaged[at] = static_cast<std::uint8_t>(rng());
          break;
        case 1:
          damaged[at] = 0xFF;
          break;
        default:
          damaged.erase(damaged.begin() + static_cast<std::ptrdiff_t>(at),
                        damaged.begin() + static_cast<std::ptrdiff_t>(
                                              std::min(damaged.size(), at + 1 + rng() % 8)));
          break;
      }
    }
    for (const bool strict : {true, false}) {
      Options options;
      options.strict = strict;
      Bytes out;
      try {
        const Info info = decode(damaged.data(), damaged.size(), options, out, &chooser);
        EXPECT_EQ(out.size(), static_cast<std::size_t>(info.width) * info.height * 3);
        ++decoded;
      } catch (const DecodeError&) {
        ++refused;
      }
    }
  }
  EXPECT_GT(decoded, 0);
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace millrace::decode
