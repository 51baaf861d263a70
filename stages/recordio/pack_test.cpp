// Tests of `millrace pack`: the library function read back by the C++ reader and by an
// independent Python reader (tests/tools/read_rec.py), multi-label lists, re-encoding, errors, and
// the command line's exit codes.
#include "stages/recordio/pack.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "stages/recordio/recordio_kernel.hpp"
#include "stages/recordio/recordio_test_support.hpp"
#include "tests/support/command.hpp"

namespace millrace::recordio {
namespace {

namespace fs = std::filesystem;
using millrace::testing::Command;
using millrace::testing::millrace_binary;
using millrace::testing::quoted;
using millrace::testing::run;
using testing::Bytes;
using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;
using testing::write_text;

// sha256 of a file by coreutils, independent of anything in millrace.
std::string sha256_of(const std::string& path) {
  const Command c = run("sha256sum " + quoted(path));
  EXPECT_EQ(c.status, 0) << c.out;
  return c.out.substr(0, 64);
}

struct PyRecord {
  std::uint64_t offset = 0;
  std::uint64_t id = 0;
  std::uint32_t flag = 0;
  std::vector<float> labels;
  std::string sha256;
};

// Reads OUT.rec (and checks OUT.idx) with tests/tools/read_rec.py.
std::vector<PyRecord> read_with_python(const std::string& rec, const std::string& idx) {
  const std::string tool = std::string(MILLRACE_SOURCE_DIR) + "/tests/tools/read_rec.py";
  const Command c = run("/usr/bin/python3 -B " + quoted(tool) + " " + quoted(rec) + " --idx " +
                        quoted(idx) + " 2>&1");
  EXPECT_EQ(c.status, 0) << c.out;
  std::vector<PyRecord> out;
  std::istringstream lines(c.out);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    PyRecord r;
    std::string labels;
    fields >> r.offset >> r.id >> r.flag >> labels >> r.sha256;
    EXPECT_TRUE(fields) << line;
    std::istringstream items(labels);
    for (std::string item; std::getline(items, item, ',');) r.labels.push_back(std::stof(item));
    out.push_back(r);
  }
  return out;
}

struct Source {
  std::string path;
  std::uint64_t id = 0;
  std::vector<float> labels;
};

// Three class folders of small images (JPEG and PNG); returns them in the order pack numbers them
// (sorted relative paths), with the class index as label.
std::vector<Source> make_folder(const fs::path& root) {
  const std::vector<std::string> names = {"cat/b.jpg",     "ant/z.png", "ant/a.jpg",
                                          "bee/m.jpeg",    "cat/a.jpg", "bee/sub/k.jpg",
                                          "ant/readme.txt"};
  std::vector<Source> out;
  int seed = 0;
  for (const auto& name : names) {
    const fs::path p = root / name;
    if (p.extension() == ".txt") {
      write_text(p.string(), "not an image");
      continue;
    }
    cv::Mat image(30 + seed * 4, 41 - seed * 3, CV_8UC3);
    cv::randu(image, cv::Scalar::all(0), cv::Scalar::all(255));
    std::vector<std::uint8_t> encoded;
    cv::imencode(p.extension() == ".png" ? ".png" : ".jpg", image, encoded);
    write_bytes(p.string(), encoded);
    ++seed;
  }
  const std::vector<std::pair<std::string, float>> sorted = {
      {"ant/a.jpg", 0},     {"ant/z.png", 0}, {"bee/m.jpeg", 1},
      {"bee/sub/k.jpg", 1}, {"cat/a.jpg", 2}, {"cat/b.jpg", 2}};
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    out.push_back({(root / sorted[i].first).string(), i, {sorted[i].second}});
  }
  return out;
}

TEST(Pack, FolderReadBackByTheReaderAndByPython) {
  TempDir dir;
  const auto sources = make_folder(dir.path() / "images");
  PackOptions options;
  options.folder = dir.file("images");
  options.output = dir.file("out/set.rec");
  std::vector<std::size_t> progress;
  const PackReport report = pack(options, [&](std::size_t done, std::size_t total) {
    EXPECT_EQ(total, sources.size());
    progress.push_back(done);
  });
  EXPECT_EQ(progress, (std::vector<std::size_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(report.records, sources.size());
  EXPECT_EQ(report.rec_path, options.output);
  EXPECT_EQ(report.idx_path, dir.file("out/set.idx"));
  EXPECT_EQ(report.file_bytes, fs::file_size(options.output));
  std::uint64_t image_bytes = 0;
  for (const auto& s : sources) image_bytes += fs::file_size(s.path);
  EXPECT_EQ(report.image_bytes, image_bytes);

  // The C++ reader: ids, labels and the original bytes, unchanged.
  RecordReader reader(options.output);
  Bytes payload;
  std::vector<std::uint64_t> offsets;
  for (const auto& s : sources) {
    SCOPED_TRACE(s.path);
    const ReadResult r = reader.next(payload);
    ASSERT_EQ(r.status, ReadStatus::kRecord) << r.error;
    offsets.push_back(r.offset);
    ImageHeader header;
    std::vector<float> labels;
    const std::size_t image = parse_image_payload(payload, 1, r.offset, header, labels);
    EXPECT_EQ(header.flag, 0U);
    EXPECT_EQ(header.id, s.id);
    EXPECT_EQ(header.id2, 0U);
    EXPECT_EQ(labels, s.labels);
    EXPECT_EQ(Bytes(payload.begin() + static_cast<long>(image), payload.end()), read_bytes(s.path));
  }
  EXPECT_EQ(reader.next(payload).status, ReadStatus::kEnd);
  // The index points at the record heads, keyed by id.
  const auto index = read_index(report.idx_path, report.file_bytes);
  ASSERT_EQ(index.size(), sources.size());
  for (std::size_t i = 0; i < index.size(); ++i) {
    EXPECT_EQ(index[i].key, sources[i].id);
    EXPECT_EQ(index[i].offset, offsets[i]);
  }

  // An independent reader agrees record by record.
  const auto py = read_with_python(report.rec_path, report.idx_path);
  ASSERT_EQ(py.size(), sources.size());
  for (std::size_t i = 0; i < py.size(); ++i) {
    SCOPED_TRACE(sources[i].path);
    EXPECT_EQ(py[i].offset, offsets[i]);
    EXPECT_EQ(py[i].id, sources[i].id);
    EXPECT_EQ(py[i].flag, 0U);
    EXPECT_EQ(py[i].labels, sources[i].labels);
    EXPECT_EQ(py[i].sha256, sha256_of(sources[i].path));
  }
}

TEST(Pack, MultiLabelListWithRootAndSplitRecords) {
  TempDir dir;
  // Files whose bytes hold the magic at 4-aligned payload offsets: the records are split.
  const Bytes magic = testing::kMagicLe;
  std::vector<Bytes> contents;
  contents.reserve(4);
  for (int i = 0; i < 4; ++i) {
    contents.push_back(testing::pattern_bytes(100 + static_cast<std::size_t>(i) * 13,
                                              static_cast<std::uint32_t>(i), {0, 40, 96}));
  }
  write_bytes(dir.file("root/x/0.jpg"), contents[0]);
  write_bytes(dir.file("root/x/1.jpg"), contents[1]);
  write_bytes(dir.file("root/y/2.jpg"), contents[2]);
  write_bytes(dir.file("elsewhere/3.jpg"), contents[3]);
  write_text(dir.file("lists/train.lst"),
             "40\t1.000000\t0.500000\t-2.000000\tx/0.jpg\n"
             "7\t0\t0\t3\tx/1.jpg\n"
             "12\t4.250000\t1.000000\t0.000000\ty/2.jpg\n"
             "3\t9\t8\t7\t" +
                 dir.file("elsewhere/3.jpg") + "\n");
  PackOptions options;
  options.list = dir.file("lists/train.lst");
  options.root = dir.file("root");
  options.output = dir.file("multi.rec");
  const PackReport report = pack(options);
  ASSERT_EQ(report.records, 4U);
  const std::vector<std::uint64_t> ids = {40, 7, 12, 3};
  const std::vector<std::vector<float>> labels = {
      {1.0F, 0.5F, -2.0F}, {0, 0, 3}, {4.25F, 1.0F, 0}, {9, 8, 7}};
  RecordReader reader(options.output);
  Bytes payload;
  for (std::size_t i = 0; i < 4; ++i) {
    ASSERT_EQ(reader.next(payload).status, ReadStatus::kRecord);
    ImageHeader header;
    std::vector<float> got;
    const std::size_t image = parse_image_payload(payload, 3, 0, header, got);
    EXPECT_EQ(header.flag, 3U);
    EXPECT_EQ(header.label, 0.0F);
    EXPECT_EQ(header.id, ids[i]);
    EXPECT_EQ(got, labels[i]);
    EXPECT_EQ(Bytes(payload.begin() + static_cast<long>(image), payload.end()), contents[i]);
  }
  // The magic inside the images made split records: more aligned magic words than records.
  const Bytes file = read_bytes(options.output);
  std::size_t magic_words = 0;
  for (std::size_t p = 0; p + 4 <= file.size(); p += 4) {
    magic_words += std::equal(magic.begin(), magic.end(), file.begin() + static_cast<long>(p));
  }
  EXPECT_EQ(magic_words, 4U * 4U);
  const auto py = read_with_python(report.rec_path, report.idx_path);
  ASSERT_EQ(py.size(), 4U);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(py[i].id, ids[i]);
    EXPECT_EQ(py[i].flag, 3U);
    EXPECT_EQ(py[i].labels, labels[i]);
  }
  // Without --root, paths are relative to the list's folder.
  write_bytes(dir.file("lists/x/0.jpg"), contents[0]);
  write_text(dir.file("lists/one.lst"), "5\t2\tx/0.jpg\n");
  PackOptions relative;
  relative.list = dir.file("lists/one.lst");
  relative.output = dir.file("one.rec");
  EXPECT_EQ(pack(relative).records, 1U);
}

TEST(Pack, ResizeAndQualityReencode) {
  TempDir dir;
  cv::Mat wide(60, 100, CV_8UC3, cv::Scalar(10, 200, 30));
  cv::Mat tall(90, 45, CV_8UC3, cv::Scalar(250, 20, 120));
  std::vector<std::uint8_t> encoded;
  cv::imencode(".png", wide, encoded);
  write_bytes(dir.file("img/a/wide.png"), encoded);
  cv::imencode(".jpg", tall, encoded);
  write_bytes(dir.file("img/b/tall.jpg"), encoded);
  PackOptions options;
  options.folder = dir.file("img");
  options.output = dir.file("small.rec");
  options.resize = 32;
  options.quality = 90;
  ASSERT_EQ(pack(options).records, 2U);
  RecordReader reader(options.output);
  Bytes payload;
  // Shorter side to 32, the other floor(other * 32 / shorter): 100x60 -> 53x32, 45x90 -> 32x64.
  const std::vector<cv::Size> sizes = {cv::Size(53, 32), cv::Size(32, 64)};
  const std::vector<cv::Vec3b> colours = {cv::Vec3b(10, 200, 30), cv::Vec3b(250, 20, 120)};
  for (std::size_t i = 0; i < 2; ++i) {
    ASSERT_EQ(reader.next(payload).status, ReadStatus::kRecord);
    ImageHeader header;
    std::vector<float> labels;
    const std::size_t image = parse_image_payload(payload, 1, 0, header, labels);
    EXPECT_EQ(payload[image], 0xFF);  // JPEG SOI, also for the PNG source
    EXPECT_EQ(payload[image + 1], 0xD8);
    const cv::Mat decoded = cv::imdecode(
        cv::Mat(1, static_cast<int>(payload.size() - image), CV_8U, payload.data() + image),
        cv::IMREAD_COLOR);
    ASSERT_FALSE(decoded.empty());
    EXPECT_EQ(decoded.size(), sizes[i]);
    const cv::Vec3b centre = decoded.at<cv::Vec3b>(decoded.rows / 2, decoded.cols / 2);
    for (int c = 0; c < 3; ++c) EXPECT_NEAR(centre[c], colours[i][c], 6);
    EXPECT_EQ(labels, std::vector<float>{static_cast<float>(i)});
  }
}

TEST(Pack, MissingFileIsAnErrorNamingItAndLeavesNoOutput) {
  TempDir dir;
  write_bytes(dir.file("a.jpg"), Bytes{1, 2, 3});
  write_text(dir.file("l.lst"), "0\t0\ta.jpg\n1\t0\tgone.jpg\n");
  PackOptions options;
  options.list = dir.file("l.lst");
  options.output = dir.file("o.rec");
  try {
    pack(options);
    FAIL() << "no error for a missing file";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.file("gone.jpg")), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.file("o.rec")));
  EXPECT_FALSE(fs::exists(dir.file("o.idx")));
  // Re-encoding something that is not an image is an error too.
  options.list.clear();
  write_bytes(dir.file("f/bad.jpg"), Bytes{1, 2, 3, 4});
  options.folder = dir.file("f");
  options.resize = 10;
  EXPECT_THROW(pack(options), std::runtime_error);
  EXPECT_FALSE(fs::exists(dir.file("o.rec")));
}

TEST(Pack, ContradictoryOptions) {
  PackOptions both;
  both.list = "a.lst";
  both.folder = "f";
  both.output = "o.rec";
  EXPECT_THROW(pack(both), std::invalid_argument);
  PackOptions neither;
  neither.output = "o.rec";
  EXPECT_THROW(pack(neither), std::invalid_argument);
  PackOptions root_without_list;
  root_without_list.folder = "f";
  root_without_list.root = "r";
  root_without_list.output = "o.rec";
  EXPECT_THROW(pack(root_without_list), std::invalid_argument);
  PackOptions bad_quality;
  bad_quality.folder = "f";
  bad_quality.output = "o.rec";
  bad_quality.quality = 101;
  EXPECT_THROW(pack(bad_quality), std::invalid_argument);
  EXPECT_EQ(index_path_for("/d/train.rec"), "/d/train.idx");
  EXPECT_EQ(index_path_for("data"), "data.idx");
}

TEST(PackCommand, ExitCodesAndSummary) {
  const std::string millrace = millrace_binary();
  ASSERT_TRUE(fs::exists(millrace)) << millrace << " is built with the tests";
  TempDir dir;
  const auto sources = make_folder(dir.path() / "images");
  const std::string out = dir.file("cli.rec");
  Command c = run(quoted(millrace) + " pack --folder " + quoted(dir.file("images")) + " " +
                  quoted(out) + " 2>&1");
  EXPECT_EQ(c.status, 0) << c.out;
  EXPECT_NE(c.out.find(out + ": 6 records"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find(dir.file("cli.idx")), std::string::npos) << c.out;
  EXPECT_EQ(read_with_python(out, dir.file("cli.idx")).size(), sources.size());

  write_text(dir.file("l.lst"), "0\t1\tmissing.jpg\n");
  c = run(quoted(millrace) + " pack --list " + quoted(dir.file("l.lst")) + " " +
          quoted(dir.file("m.rec")) + " 2>&1");
  EXPECT_EQ(c.status, 1) << c.out;
  EXPECT_NE(c.out.find(dir.file("missing.jpg")), std::string::npos) << c.out;

  for (const std::string& args :
       {std::string(" pack ") + quoted(out), " pack --folder a --list b " + quoted(out),
        std::string(" pack --folder a"), " pack --folder a --root r " + quoted(out),
        " pack --folder a --quality 0 " + quoted(out), " pack --folder a --resize 0 " + quoted(out),
        " pack --folder a --quality 101 " + quoted(out)}) {
    c = run(quoted(millrace) + args + " 2>&1");
    EXPECT_EQ(c.status, 2) << args << "\n" << c.out;
    EXPECT_NE(c.out.find("usage: millrace"), std::string::npos) << args;
  }
  c = run(quoted(millrace) + " --help");
  EXPECT_NE(c.out.find("pack (--list LIST"), std::string::npos) << c.out;
}

}  // namespace
}  // namespace millrace::recordio
