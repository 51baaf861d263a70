// Tests of the lossless restart-grid rewrite, of `pack --restart` and of `millrace prepare`.
#include "stages/recordio/jpeg_restart.hpp"

#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/wait.h>

#include <filesystem>
#include <string>
#include <vector>

#include "stages/decode/jpeg_test_support.hpp"
#include "stages/decode/jpeg_window.hpp"
#include "stages/recordio/pack.hpp"
#include "stages/recordio/prepare.hpp"
#include "stages/recordio/recordio_kernel.hpp"
#include "stages/recordio/recordio_test_support.hpp"

namespace millrace::recordio {
namespace {

namespace fs = std::filesystem;
using decode::testing::encode;
using decode::testing::Encoding;
using decode::testing::k420;
using decode::testing::k422;
using decode::testing::k440;
using decode::testing::k444;
using decode::testing::kGray;
using decode::testing::Layout;
using decode::testing::whole;
using testing::Bytes;
using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;
using testing::write_text;

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

struct Command {
  int status = -1;
  std::string out;
};

Command run(const std::string& command) {
  Command c;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return c;
  char buffer[4096];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) c.out.append(buffer, n);
  const int status = ::pclose(pipe);
  c.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return c;
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// A small data set: class folders of JPEGs (one progressive, one cut short), a PNG, a list.
void make_tree(const fs::path& root) {
  write_bytes((root / "ant/a.jpg").string(), encode(120, 90, k420, {}));
  write_bytes((root / "ant/b.jpg").string(), encode(90, 120, k444, {0, true}));
  write_bytes((root / "bee/sub/c.jpeg").string(), encode(64, 64, kGray, {}));
  const Bytes d = encode(100, 100, k420, {});
  write_bytes((root / "bee/d.jpg").string(),
              Bytes(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(d.size() / 2)));
  write_bytes((root / "bee/e.png").string(), {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 1, 2});
  write_text((root / "labels.lst").string(),
             "0\t0\tant/a.jpg\n1\t0\tant/b.jpg\n2\t1\tbee/sub/c.jpeg\n3\t1\tbee/e.png\n");
}

TEST(Prepare, KeepsTheLayoutAndRewritesEveryJpeg) {
  TempDir dir;
  make_tree(dir.path() / "src");
  for (const int threads : {1, 3}) {
    SCOPED_TRACE(threads);
    const fs::path dst = dir.path() / ("dst" + std::to_string(threads));
    PrepareOptions options;
    options.source = dir.file("src");
    options.destination = dst.string();
    options.threads = threads;
    std::size_t calls = 0;
    const PrepareReport report = prepare_tree(options, [&](std::size_t, std::size_t total) {
      EXPECT_EQ(total, 6u);
      ++calls;
    });
    EXPECT_EQ(calls, 6u);
    EXPECT_EQ(report.files, 6u);
    EXPECT_EQ(report.rewritten, 3u);
    EXPECT_EQ(report.copied, 2u);  // the PNG and the list
    EXPECT_EQ(report.unreadable, 1u);
    ASSERT_EQ(report.problems.size(), 1u);
    EXPECT_NE(report.problems[0].find("bee/d.jpg"), std::string::npos) << report.problems[0];
    for (const char* same : {"labels.lst", "bee/e.png", "bee/d.jpg"}) {
      EXPECT_EQ(read_bytes((dst / same).string()), read_bytes(dir.file("src") + "/" + same))
          << same;
    }
    for (const char* jpeg : {"ant/a.jpg", "ant/b.jpg", "bee/sub/c.jpeg"}) {
      const Bytes before = read_bytes(dir.file("src") + "/" + jpeg);
      const Bytes after = read_bytes((dst / jpeg).string());
      EXPECT_EQ(pixels_of(after), pixels_of(before)) << jpeg;
      EXPECT_TRUE(decode::find_restart_grid(after.data(), after.size()).has_value()) << jpeg;
    }
    std::size_t entries = 0;
    for (const auto& e : fs::recursive_directory_iterator(dst)) {
      if (e.is_regular_file()) ++entries;
      EXPECT_EQ(e.path().string().find("partial"), std::string::npos) << e.path();
    }
    EXPECT_EQ(entries, 6u);
  }
  EXPECT_EQ(read_bytes(dir.file("dst1/ant/b.jpg")), read_bytes(dir.file("dst3/ant/b.jpg")));
  PrepareOptions inside;
  inside.source = dir.file("src");
  inside.destination = dir.file("src/ant/out");
  EXPECT_THROW(prepare_tree(inside), std::invalid_argument);
  inside.destination = dir.file("src");
  EXPECT_THROW(prepare_tree(inside), std::invalid_argument);
  inside.source = dir.file("nowhere");
  inside.destination = dir.file("x");
  EXPECT_THROW(prepare_tree(inside), std::invalid_argument);
}

TEST(Prepare, CommandLineAndPackRestart) {
  const std::string millrace = std::string(MILLRACE_BINARY_DIR) + "/millrace";
  ASSERT_TRUE(fs::exists(millrace)) << millrace << " is built with the tests";
  TempDir dir;
  make_tree(dir.path() / "src");
  Command c = run(quoted(millrace) + " prepare " + quoted(dir.file("src")) + " " +
                  quoted(dir.file("dst")) + " 2>&1");
  EXPECT_EQ(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("3 JPEGs rewritten"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("bee/d.jpg"), std::string::npos) << c.out;
  EXPECT_TRUE(fs::exists(dir.file("dst/labels.lst")));
  for (const std::string& args :
       {std::string(" prepare ") + quoted(dir.file("src")),
        " prepare " + quoted(dir.file("src")) + " " + quoted(dir.file("src/in")),
        std::string(" prepare a b --restart 0")}) {
    c = run(quoted(millrace) + args + " 2>&1");
    EXPECT_EQ(c.status, 2) << args << "\n" << c.out;
  }

  // pack --restart auto: every JPEG record rewritten, the rest stored as they were.
  c = run(quoted(millrace) + " pack --list " + quoted(dir.file("src/labels.lst")) + " " +
          quoted(dir.file("set.rec")) + " --restart auto 2>&1");
  EXPECT_EQ(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("3 JPEGs rewritten"), std::string::npos) << c.out;
  RecordReader reader(dir.file("set.rec"));
  Bytes payload;
  const std::vector<std::string> files = {"ant/a.jpg", "ant/b.jpg", "bee/sub/c.jpeg", "bee/e.png"};
  for (const std::string& f : files) {
    SCOPED_TRACE(f);
    const ReadResult r = reader.next(payload);
    ASSERT_EQ(r.status, ReadStatus::kRecord) << r.error;
    ImageHeader header;
    std::vector<float> labels;
    const std::size_t at = parse_image_payload(payload, 1, r.offset, header, labels);
    const Bytes stored(payload.begin() + static_cast<std::ptrdiff_t>(at), payload.end());
    const Bytes original = read_bytes(dir.file("src") + "/" + f);
    if (f.find(".png") != std::string::npos) {
      EXPECT_EQ(stored, original);
    } else {
      EXPECT_EQ(pixels_of(stored), pixels_of(original));
      EXPECT_TRUE(decode::find_restart_grid(stored.data(), stored.size()).has_value());
    }
  }
  EXPECT_EQ(reader.next(payload).status, ReadStatus::kEnd);
}

}  // namespace
}  // namespace millrace::recordio
