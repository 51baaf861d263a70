// Tests of `pack --restart` and of `millrace prepare`: the restart-grid rewrite
// (stages/common/jpeg/jpeg_restart.hpp) applied to a data set.
#include "stages/recordio/prepare.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "stages/common/jpeg/jpeg_test_support.hpp"
#include "stages/common/jpeg/jpeg_window.hpp"
#include "stages/recordio/pack.hpp"
#include "stages/recordio/recordio_kernel.hpp"
#include "stages/recordio/recordio_test_support.hpp"
#include "tests/support/command.hpp"

namespace millrace::recordio {
namespace {

namespace fs = std::filesystem;
using decode::testing::encode;
using decode::testing::k420;
using decode::testing::k444;
using decode::testing::kGray;
using decode::testing::whole;
using millrace::testing::Command;
using millrace::testing::millrace_binary;
using millrace::testing::quoted;
using millrace::testing::run;
using testing::Bytes;
using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;
using testing::write_text;

// A whole decode's pixels at full size, through libjpeg alone.
Bytes pixels_of(const Bytes& jpeg) { return whole(jpeg, 1, false).rgb; }

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
  const std::string millrace = millrace_binary();
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
