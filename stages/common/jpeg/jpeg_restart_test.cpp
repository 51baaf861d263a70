// Tests of the lossless restart-grid rewrite: pixels kept, the grid windowable, other files left
// alone.
#include "stages/common/jpeg/jpeg_restart.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "stages/common/jpeg/jpeg_test_support.hpp"
#include "stages/common/jpeg/jpeg_window.hpp"

namespace millrace::recordio {
namespace {

using decode::testing::Bytes;
using decode::testing::encode;
using decode::testing::Encoding;
using decode::testing::k420;
using decode::testing::k422;
using decode::testing::k440;
using decode::testing::k444;
using decode::testing::kGray;
using decode::testing::Layout;
using decode::testing::whole;

// A whole decode's pixels at full size, through libjpeg alone.
Bytes pixels_of(const Bytes& jpeg) { return whole(jpeg, 1, false).rgb; }

TEST(RestartGrid, AutoIntervalDividesTheRowWithinTheSegmentWidth) {
  ASSERT_EQ(kRestartSegmentPixels, 32);
  EXPECT_EQ(auto_restart_interval(32, 16), 2);  // 500 px, 4:2:0: 32-pixel segments
  EXPECT_EQ(auto_restart_interval(63, 8), 3);   // 500 px, 4:4:4: 24
  EXPECT_EQ(auto_restart_interval(64, 8), 4);   // 512 px, 4:4:4: 32
  EXPECT_EQ(auto_restart_interval(37, 16), 1);  // a prime row: one MCU per segment
  EXPECT_EQ(auto_restart_interval(2, 16), 2);   // the whole row fits in a segment
  EXPECT_EQ(auto_restart_interval(1, 8), 1);
  for (int mcus = 1; mcus < 400; ++mcus) {
    for (const int width : {8, 16}) {
      const int interval = auto_restart_interval(mcus, width);
      EXPECT_EQ(mcus % interval, 0) << mcus;
      EXPECT_TRUE(interval == 1 || interval * width <= kRestartSegmentPixels) << mcus;
    }
  }
}

TEST(RestartGrid, RewriteIsLosslessAndWindowable) {
  struct Case {
    const Layout* layout;
    Encoding encoding;
    const char* what;
  };
  const std::vector<Case> cases = {
      {&k420, {}, "4:2:0 baseline"},
      {&k444, {}, "4:4:4 baseline"},
      {&k422, {}, "4:2:2 baseline"},
      {&k440, {}, "4:4:0 baseline"},
      {&kGray, {}, "grayscale"},
      {&k420, {0, true}, "4:2:0 progressive"},
      {&k444, {0, true}, "4:4:4 progressive"},
      {&k420, {0, false, true}, "4:2:0 arithmetic"},
      {&k420, {5}, "4:2:0 with an interval that wraps rows"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const Bytes original = encode(500, 375, *c.layout, c.encoding);
    Bytes rewritten;
    const RestartResult r = add_restart_grid(original.data(), original.size(), 0, rewritten);
    ASSERT_EQ(r.outcome, RestartOutcome::kRewritten) << r.message;
    EXPECT_EQ(pixels_of(rewritten), pixels_of(original));
    const std::optional<decode::RestartGrid> grid =
        decode::find_restart_grid(rewritten.data(), rewritten.size());
    ASSERT_TRUE(grid.has_value());
    EXPECT_EQ(grid->interval, r.interval);
    EXPECT_EQ(grid->mcus_per_row % grid->interval, 0);
    // Baseline Huffman: SOF0, no SOF2 (progressive) or SOF9 (arithmetic) left.
    const auto has_marker = [&](std::uint8_t m) {
      for (std::size_t i = 0; i + 1 < grid->scan_at; ++i) {
        if (rewritten[i] == 0xFF && rewritten[i + 1] == m) return true;
      }
      return false;
    };
    EXPECT_TRUE(has_marker(0xC0));
    EXPECT_FALSE(has_marker(0xC2));
    EXPECT_FALSE(has_marker(0xC9));
  }
}

TEST(RestartGrid, ExplicitIntervalAndMetadataKept) {
  Bytes original = encode(256, 128, k420, {});
  // EXIF (orientation 6) and a comment after SOI.
  const Bytes exif = {0xFF, 0xE1, 0x00, 0x22, 'E', 'x', 'i', 'f', 0,    0,    'I', 'I',
                      42,   0,    8,    0,    0,   0,   1,   0,   0x12, 0x01, 3,   0,
                      1,    0,    0,    0,    6,   0,   0,   0,   0,    0,    0,   0};
  const Bytes comment = {0xFF, 0xFE, 0x00, 0x07, 'h', 'e', 'l', 'l', 'o'};
  original.insert(original.begin() + 2, comment.begin(), comment.end());
  original.insert(original.begin() + 2, exif.begin(), exif.end());
  Bytes rewritten;
  const RestartResult r = add_restart_grid(original.data(), original.size(), 2, rewritten);
  ASSERT_EQ(r.outcome, RestartOutcome::kRewritten) << r.message;
  EXPECT_EQ(r.interval, 2);
  EXPECT_EQ(decode::find_restart_grid(rewritten.data(), rewritten.size())->segments_per_row, 8);
  const auto contains = [&](const Bytes& needle) {
    return std::search(rewritten.begin(), rewritten.end(), needle.begin(), needle.end()) !=
           rewritten.end();
  };
  EXPECT_TRUE(contains(exif));
  EXPECT_TRUE(contains(comment));
  EXPECT_EQ(pixels_of(rewritten), pixels_of(original));
}

TEST(RestartGrid, NonJpegAndUnreadableJpegAreLeftAlone) {
  Bytes out = {7, 7, 7};
  const Bytes png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 0};
  EXPECT_EQ(add_restart_grid(png.data(), png.size(), 0, out).outcome, RestartOutcome::kNotJpeg);
  EXPECT_EQ(add_restart_grid(nullptr, 0, 0, out).outcome, RestartOutcome::kNotJpeg);
  const Bytes jpeg = encode(200, 100, k420, {});
  const Bytes truncated(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(jpeg.size() / 2));
  const RestartResult r = add_restart_grid(truncated.data(), truncated.size(), 0, out);
  EXPECT_EQ(r.outcome, RestartOutcome::kUnreadable);
  EXPECT_NE(r.message.find("Premature end"), std::string::npos) << r.message;
  const Bytes header_only(jpeg.begin(), jpeg.begin() + 30);
  EXPECT_EQ(add_restart_grid(header_only.data(), header_only.size(), 0, out).outcome,
            RestartOutcome::kUnreadable);
  EXPECT_EQ(out, (Bytes{7, 7, 7}));
}

}  // namespace
}  // namespace millrace::recordio
