// Hostile input: each case here was once a way for a small input to cost unbounded memory or
// time, to hang a run, or to lose data without a word. Each test fails without its fix.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <vector>

#include "engine/config_node.hpp"
#include "engine/file_io.hpp"
#include "engine/pipeline_access.hpp"
#include "engine/registry.hpp"
#include "millrace/errors.hpp"
#include "millrace/pipeline.hpp"
#include "millrace/report.hpp"
#include "stages/augment/augment_stage.hpp"
#include "stages/batch/batch_stage.hpp"
#include "stages/common/stage_testing.hpp"
#include "stages/decode/decode_kernel.hpp"
#include "stages/files/files_stage.hpp"
#include "stages/infer/calibration.hpp"
#include "stages/normalize/normalize_stage.hpp"
#include "stages/recordio/pack.hpp"
#include "stages/recordio/recordio_kernel.hpp"
#include "stages/recordio/recordio_stage.hpp"
#include "stages/sinks/sinks.hpp"
#include "tests/support/error_of.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;
using testing::error_of;
using testing::TempDir;

fs::path make_fifo(const TempDir& dir, const std::string& name) {
  fs::path path = dir / name;
  EXPECT_EQ(::mkfifo(path.c_str(), 0600), 0)
      << std::strerror(errno);  // NOLINT(concurrency-mt-unsafe)
  return path;
}

// ---- files millrace reads and writes -------------------------------------------------------

TEST(ReadRegularFile, RefusesAFifoWithoutWaitingForAWriter) {
  TempDir dir;
  const fs::path fifo = make_fifo(dir, "config.yaml");
  const std::string message =
      error_of([&] { read_regular_file(fifo.string(), 1 << 20, "config file"); });
  EXPECT_NE(message.find("a FIFO, not a regular file"), std::string::npos) << message;
  EXPECT_EQ(message.rfind(fifo.string() + ": cannot read the config file", 0), 0U) << message;
}

TEST(ReadRegularFile, RefusesDevicesFoldersAndFilesAboveTheLimit) {
  TempDir dir;
  EXPECT_NE(error_of([] {
              read_regular_file("/dev/zero", 1 << 20, "table");
            }).find("a character device, not a regular file"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              read_regular_file(dir.str(), 1 << 20, "table");
            }).find("a folder, not a regular file"),
            std::string::npos);
  const fs::path big = dir.write("big", std::string(101, 'x'));
  EXPECT_NE(error_of([&] {
              read_regular_file(big.string(), 100, "table");
            }).find("101 bytes, above the limit of 100 bytes"),
            std::string::npos);
  EXPECT_EQ(read_regular_file(big.string(), 101, "table"), std::string(101, 'x'));
}

TEST(WriteFileAtomically, RefusesWhatIsNotARegularFileAndNamesTheReason) {
  TempDir dir;
  const fs::path fifo = make_fifo(dir, "summary.json");
  const std::string message =
      error_of([&] { write_file_atomically(fifo.string(), "{}", "summary"); });
  EXPECT_NE(message.find("a FIFO is in the way"), std::string::npos) << message;
  EXPECT_NE(output_file_problem(fifo.string()), "");
  EXPECT_EQ(output_file_problem((dir / "new" / "deeper" / "x.json").string()), "");
  dir.write("plain", "x");
  EXPECT_NE(output_file_problem((dir / "plain" / "x.json").string()).find("not a folder"),
            std::string::npos);
}

TEST(WriteFileAtomically, AWriteCutShortKeepsTheOldFileAndGivesTheSystemsReason) {
  TempDir dir;
  const fs::path target = dir.write("trace.json", "old");
  // RLIMIT_FSIZE stands in for a full disk: the write is cut short with EFBIG.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction previous {};
  ::sigaction(SIGXFSZ, &ignore, &previous);
  rlimit old_limit{};
  ::getrlimit(RLIMIT_FSIZE, &old_limit);
  rlimit small = old_limit;
  small.rlim_cur = 1000;
  ::setrlimit(RLIMIT_FSIZE, &small);
  const std::string message =
      error_of([&] { write_file_atomically(target.string(), std::string(5000, 'y'), "trace"); });
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  ::sigaction(SIGXFSZ, &previous, nullptr);
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  std::ifstream in(target);
  std::string content;
  std::getline(in, content);
  EXPECT_EQ(content, "old");
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1U) << "a temporary file was left behind";
}

TEST(ConfigFile, AFifoOrADeviceIsADiagnosticNotAHang) {
  TempDir dir;
  const fs::path fifo = make_fifo(dir, "pipe.yaml");
  for (const std::string& path : {fifo.string(), std::string("/dev/zero")}) {
    const auto diagnostics = validate_file(path);
    ASSERT_EQ(diagnostics.size(), 1U) << path;
    EXPECT_NE(diagnostics[0].message.find("not a regular file"), std::string::npos)
        << diagnostics[0].to_string();
    EXPECT_THROW(Pipeline::from_file(path), ConfigError) << path;
  }
}

TEST(CalibrationTable, AFolderOrADeviceIsNamedForWhatItIs) {
  TempDir dir;
  std::string message = error_of([&] { infer::load_calibration_table(dir.str()); });
  EXPECT_NE(message.find("a folder, not a regular file"), std::string::npos) << message;
  message = error_of([] { infer::load_calibration_table("/dev/zero"); });
  EXPECT_NE(message.find("a character device, not a regular file"), std::string::npos) << message;
  const fs::path fifo = make_fifo(dir, "table.json");
  message = error_of([&] { infer::load_calibration_table(fifo.string()); });
  EXPECT_NE(message.find("a FIFO"), std::string::npos) << message;
}

TEST(PredictionsFile, AFifoInItsPlaceIsAnErrorNotAHang) {
  TempDir dir;
  const fs::path fifo = make_fifo(dir, "predictions.jsonl");
  auto sink = testing::make_stage<PredictionsSink>(
      "predictions", "{type: predictions, path: " + fifo.string() + "}");
  ASSERT_NE(sink, nullptr);
  const std::string message = error_of([&] { sink->open(); });
  EXPECT_NE(message.find("a FIFO is in the way"), std::string::npos) << message;
}

TEST(MeanImage, ANpyHeaderCannotDeclareMoreThanTheFileHolds) {
  TempDir dir;
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 3), }";
  header.resize(118, ' ');
  header += '\n';
  std::string npy = std::string("\x93NUMPY\x01\x00", 8) + static_cast<char>(header.size()) + '\0' +
                    header + std::string(64, '\0');
  const fs::path file = dir.write("mean.npy", npy);
  std::vector<float> values;
  std::string message = error_of([&] { read_npy_float32(file.string(), values); });
  EXPECT_NE(message.find("holds more values than the file"), std::string::npos) << message;
  EXPECT_EQ(values.capacity(), 0U);
  const fs::path fifo = make_fifo(dir, "fifo.npy");
  message = error_of([&] { read_npy_float32(fifo.string(), values); });
  EXPECT_NE(message.find("a FIFO, not a regular file"), std::string::npos) << message;
}

// ---- config documents ----------------------------------------------------------------------

TEST(ConfigDocument, AnAliasInsideItsOwnAnchorIsRefusedNotRecursedForever) {
  Diagnostics d;
  load_config_document("a: &a [1, *a]\n", "cycle.yaml", d);
  // yaml-cpp may refuse the alias itself; either way a diagnostic, no crash.
  EXPECT_TRUE(d.has_errors());
}

TEST(ConfigDocument, AnOverrideIsBoundedLikeAFile) {
  Diagnostics d;
  std::string bomb =
      "[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
      "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
      "&e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]]";
  parse_inline_value(bomb, {"--set", 0, 0}, d);
  ASSERT_TRUE(d.has_errors());
  EXPECT_NE(d.all()[0].message.find("expands to more than"), std::string::npos)
      << d.all()[0].message;
}

// ---- augment: the resize target is bounded -------------------------------------------------

Sample sample_of_size(int width, int height) {
  Sample s;
  s.tensor.reshape(DType::kUInt8, {height, width, 3}, "HWC");
  return s;
}

TEST(AugmentLimits, AnAbsurdAspectRatioIsASampleErrorBeforeAnyAllocation) {
  auto augment =
      testing::make_stage<AugmentStage>("augment", "{type: augment, resize: 256, size: 224}");
  ASSERT_NE(augment, nullptr);
  testing::NullReporter reporter;
  Sample s = sample_of_size(20000, 1);  // a 143-byte PNG declares this
  try {
    augment->process(s, reporter);
    ADD_FAILURE() << "a 20000x1 image was resized";
  } catch (const SampleError& e) {
    EXPECT_NE(std::string(e.what()).find("max_aspect_ratio"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.scratch.storage.capacity(), 0U) << "the resize target was allocated";
}

TEST(AugmentLimits, AResizeAboveMaxPixelsIsASampleError) {
  auto augment = testing::make_stage<AugmentStage>(
      "augment",
      "{type: augment, resize: 256, size: 224, max_aspect_ratio: 1000000, max_pixels: 10000000}");
  ASSERT_NE(augment, nullptr);
  testing::NullReporter reporter;
  Sample s = sample_of_size(100000, 1);
  try {
    augment->process(s, reporter);
    ADD_FAILURE() << "a 100000x1 image was resized to 25600000x256";
  } catch (const SampleError& e) {
    EXPECT_NE(std::string(e.what()).find("25600000x256 = 6553600000 pixels, above max_pixels"),
              std::string::npos)
        << e.what();
  }
  // An ordinary image is unaffected.
  Sample ok = sample_of_size(500, 375);
  augment->process(ok, reporter);
  EXPECT_EQ(ok.geometry.roi.height, 224);
}

// ---- decode: scan limit and strict windows -------------------------------------------------

std::vector<std::uint8_t> noisy_jpeg(int width, int height, bool progressive) {
  cv::Mat bgr(height, width, CV_8UC3);
  cv::RNG rng(5);
  rng.fill(bgr, cv::RNG::UNIFORM, 0, 255);
  std::vector<std::uint8_t> jpeg;
  cv::imencode(".jpg", bgr, jpeg,
               {cv::IMWRITE_JPEG_QUALITY, 90, cv::IMWRITE_JPEG_PROGRESSIVE, progressive ? 1 : 0});
  return jpeg;
}

// The byte range of the first scan (its SOS segment and entropy-coded data).
std::pair<std::size_t, std::size_t> first_scan(const std::vector<std::uint8_t>& j) {
  std::size_t i = 2;
  while (i + 4 <= j.size()) {
    const std::uint8_t marker = j[i + 1];
    const std::size_t length = (std::size_t{j[i + 2]} << 8U) | j[i + 3];
    if (marker != 0xDA) {
      i += 2 + length;
      continue;
    }
    std::size_t end = i + 2 + length;
    while (end + 1 < j.size() &&
           !(j[end] == 0xFF && j[end + 1] != 0x00 && (j[end + 1] < 0xD0 || j[end + 1] > 0xD7))) {
      ++end;
    }
    return {i, end};
  }
  return {0, 0};
}

class TopLeftWindow final : public decode::WindowChooser {
 public:
  std::optional<WindowRequest> choose(int, int) const noexcept override {
    WindowRequest r;
    r.width = 64;
    r.height = 64;
    r.out_width = 64;
    r.out_height = 64;
    r.allow_scale = false;
    return r;
  }
};

TEST(JpegScanLimit, AProgressiveJpegRepeatingAScanIsRefusedOnBothPaths) {
  const std::vector<std::uint8_t> jpeg = noisy_jpeg(256, 256, true);
  const auto [begin, end] = first_scan(jpeg);
  ASSERT_GT(end, begin);
  std::vector<std::uint8_t> bomb(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(end));
  for (int k = 0; k < decode::kMaxJpegScans + 100; ++k) {
    bomb.insert(bomb.end(), jpeg.begin() + static_cast<std::ptrdiff_t>(begin),
                jpeg.begin() + static_cast<std::ptrdiff_t>(end));
  }
  bomb.insert(bomb.end(), jpeg.begin() + static_cast<std::ptrdiff_t>(end), jpeg.end());
  decode::Options lenient;
  lenient.strict = false;
  std::vector<std::uint8_t> out;
  const TopLeftWindow window;
  for (const decode::WindowChooser* chooser :
       {static_cast<const decode::WindowChooser*>(nullptr),
        static_cast<const decode::WindowChooser*>(&window)}) {
    SCOPED_TRACE(chooser == nullptr ? "whole image" : "window");
    const std::string message =
        error_of([&] { decode::decode(bomb.data(), bomb.size(), lenient, out, chooser); });
    EXPECT_NE(message.find("more than 500 scans"), std::string::npos) << message;
  }
  // The original, with its ordinary number of scans, decodes on both paths.
  EXPECT_NO_THROW(decode::decode(jpeg.data(), jpeg.size(), lenient, out, &window));
  EXPECT_NO_THROW(decode::decode(jpeg.data(), jpeg.size(), lenient, out));
}

TEST(StrictWindow, DamageBelowTheWindowIsAnErrorAsOnTheWholeImagePath) {
  std::vector<std::uint8_t> jpeg = noisy_jpeg(512, 512, false);
  const auto [begin, end] = first_scan(jpeg);
  ASSERT_GT(end, begin + 1000);
  // A marker in the entropy-coded data near its end, far below a 64x64 window at the top left.
  const std::size_t at = end - 300;
  jpeg[at] = 0xFF;
  jpeg[at + 1] = 0xD3;
  decode::Options strict;
  std::vector<std::uint8_t> out;
  const std::string whole =
      error_of([&] { decode::decode(jpeg.data(), jpeg.size(), strict, out); });
  ASSERT_NE(whole.find("Corrupt JPEG data"), std::string::npos) << whole;
  const TopLeftWindow window;
  const std::string reduced =
      error_of([&] { decode::decode(jpeg.data(), jpeg.size(), strict, out, &window); });
  EXPECT_NE(reduced.find("Corrupt JPEG data"), std::string::npos)
      << "the window path delivered a JPEG the whole-image path refuses: " << reduced;
  // Without strict, the window is delivered, as the patched whole image is.
  decode::Options lenient;
  lenient.strict = false;
  const decode::Info info = decode::decode(jpeg.data(), jpeg.size(), lenient, out, &window);
  EXPECT_GT(info.reduction.scale, 0);
}

// ---- RecordIO: resynchronising after a shift -----------------------------------------------

std::vector<std::uint8_t> rec_file_bytes(int records) {
  std::vector<std::uint8_t> file;
  std::vector<std::uint8_t> payload;
  for (int i = 0; i < records; ++i) {
    const std::vector<std::uint8_t> image(100 + static_cast<std::size_t>(i) * 7,
                                          static_cast<std::uint8_t>(i));
    const float label = static_cast<float>(i);
    recordio::build_image_payload(static_cast<std::uint64_t>(i), {&label, 1}, image, payload);
    recordio::frame_record(payload, file);
  }
  return file;
}

struct ReadAll {
  std::vector<std::uint64_t> ids;
  std::vector<std::string> errors;
};

ReadAll read_all(const std::string& path) {
  ReadAll r;
  recordio::RecordReader reader(path, 0, recordio::kToEnd, 256);
  std::vector<std::uint8_t> payload;
  std::vector<float> labels;
  for (;;) {
    const recordio::ReadResult result = reader.next(payload);
    if (result.status == recordio::ReadStatus::kEnd) break;
    if (result.status == recordio::ReadStatus::kCorrupt) {
      r.errors.push_back(result.error);
      continue;
    }
    recordio::ImageHeader header;
    recordio::parse_image_payload(payload, 1, result.offset, header, labels);
    r.ids.push_back(header.id);
  }
  return r;
}

TEST(RecordIoResync, OneInsertedByteCostsNoRecordAndIsReported) {
  TempDir dir;
  std::vector<std::uint8_t> bytes = rec_file_bytes(16);
  // After the first record (8-byte header, 24-byte image header, 100 image bytes).
  bytes.insert(bytes.begin() + 132, 0x55);
  dir.write("x.rec", bytes);
  const ReadAll r = read_all(dir.file("x.rec"));
  ASSERT_EQ(r.ids.size(), 16U) << (r.errors.empty() ? "" : r.errors[0]);
  ASSERT_EQ(r.errors.size(), 1U);
  EXPECT_NE(r.errors[0].find("1 byte(s) skipped, from offset 132 to the next record head at "
                             "offset 133"),
            std::string::npos)
      << r.errors[0];
}

TEST(RecordIoResync, JunkBytesAtTheHeadCostNoRecord) {
  TempDir dir;
  std::vector<std::uint8_t> bytes = rec_file_bytes(16);
  bytes.insert(bytes.begin(), {0x01, 0x02, 0x03});
  dir.write("x.rec", bytes);
  const ReadAll r = read_all(dir.file("x.rec"));
  EXPECT_EQ(r.ids.size(), 16U);
  ASSERT_EQ(r.errors.size(), 1U);
  EXPECT_NE(r.errors[0].find("3 byte(s) skipped"), std::string::npos) << r.errors[0];
}

TEST(RecordIoResync, ShiftedRecordsAreReadOnceAcrossRanges) {
  TempDir dir;
  std::vector<std::uint8_t> bytes = rec_file_bytes(40);
  bytes.insert(bytes.begin() + 132, {0x55, 0x66});
  dir.write("x.rec", bytes);
  for (const std::uint64_t cut : {std::uint64_t{200}, std::uint64_t{1000}, std::uint64_t{3000}}) {
    std::vector<std::uint64_t> ids;
    for (const auto& [b, e] : {std::pair<std::uint64_t, std::uint64_t>{0, cut},
                               std::pair<std::uint64_t, std::uint64_t>{cut, recordio::kToEnd}}) {
      recordio::RecordReader reader(dir.file("x.rec"), b, e, 256);
      std::vector<std::uint8_t> payload;
      std::vector<float> labels;
      for (;;) {
        const auto result = reader.next(payload);
        if (result.status == recordio::ReadStatus::kEnd) break;
        if (result.status != recordio::ReadStatus::kRecord) continue;
        recordio::ImageHeader header;
        recordio::parse_image_payload(payload, 1, result.offset, header, labels);
        ids.push_back(header.id);
      }
    }
    std::sort(ids.begin(), ids.end());
    std::vector<std::uint64_t> expected(40);
    for (std::uint64_t i = 0; i < 40; ++i) expected[i] = i;
    EXPECT_EQ(ids, expected) << "cut at " << cut;
  }
}

TEST(RecordIoSource, AnEmptyRecFileIsAnError) {
  TempDir dir;
  dir.write("empty.rec", "");
  auto source = testing::make_stage<RecordIoSource>(
      "recordio", "{type: recordio, path: " + dir.file("empty.rec") + "}");
  ASSERT_NE(source, nullptr);
  const std::string message = error_of([&] { source->prepare(); });
  EXPECT_NE(message.find("the file is empty"), std::string::npos) << message;
}

// ---- pack: whole outputs only --------------------------------------------------------------

TEST(Pack, AFailedPackLeavesThePreviousOutputAndNoPartialFile) {
  TempDir dir;
  const std::vector<std::uint8_t> jpeg = noisy_jpeg(32, 32, false);
  for (const char* name : {"a/1.jpg", "a/2.jpg"}) {
    dir.write(name, jpeg);
  }
  recordio::PackOptions o;
  o.folder = dir.file("a");
  o.output = dir.file("out/set.rec");
  recordio::pack(o);
  const auto rec_size = fs::file_size(dir / "out/set.rec");
  const auto idx_size = fs::file_size(dir / "out/set.idx");
  // A list naming a missing file: the pack fails midway.
  dir.write("list.lst", "0\t0\t1.jpg\n1\t0\tmissing.jpg\n");
  recordio::PackOptions bad;
  bad.list = dir.file("list.lst");
  bad.root = dir.file("a");
  bad.output = dir.file("out/set.rec");
  EXPECT_THROW(recordio::pack(bad), std::exception);
  EXPECT_EQ(fs::file_size(dir / "out/set.rec"), rec_size);
  EXPECT_EQ(fs::file_size(dir / "out/set.idx"), idx_size);
  for (const auto& e : fs::directory_iterator(dir / "out")) {
    EXPECT_NE(e.path().extension(), ".tmp") << e.path();
  }
}

TEST(Pack, AFolderEntryThatIsNotPackedIsReported) {
  TempDir dir;
  const std::vector<std::uint8_t> jpeg = noisy_jpeg(32, 32, false);
  dir.write("a/1.jpg", jpeg);
  fs::create_symlink(dir / "gone.jpg", dir / "a/dangling.jpg");
  recordio::PackOptions o;
  o.folder = dir.file("a");
  o.output = dir.file("set.rec");
  const recordio::PackReport report = recordio::pack(o);
  EXPECT_EQ(report.records, 1U);
  ASSERT_EQ(report.skipped.size(), 1U);
  EXPECT_NE(report.skipped[0].find("dangling.jpg: a dangling symbolic link"), std::string::npos)
      << report.skipped[0];
}

// ---- image lists ---------------------------------------------------------------------------

struct ListCase {
  const char* name;
  std::string text;
  const char* error;  // empty: read, with `count` entries
  std::size_t count;
};

class ImageLists : public ::testing::TestWithParam<ListCase> {};

TEST_P(ImageLists, BothReadersAgree) {
  TempDir dir;
  const fs::path list = dir.write("l.lst", GetParam().text);
  const std::string files_error = error_of([&] {
    const FileIndex entries = read_image_list(list.string(), "", 1);
    EXPECT_EQ(entries.size(), GetParam().count);
    if (!entries.empty()) EXPECT_EQ(entries.path(0), "a.jpg");
  });
  const std::string recordio_error = error_of([&] {
    const auto entries = recordio::read_list(list.string());
    EXPECT_EQ(entries.size(), GetParam().count);
    if (!entries.empty()) EXPECT_EQ(entries[0].path, "a.jpg");
  });
  for (const std::string& message : {files_error, recordio_error}) {
    if (std::string(GetParam().error).empty()) {
      EXPECT_EQ(message, "");
    } else {
      EXPECT_NE(message.find(GetParam().error), std::string::npos) << message;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ImageLists,
    ::testing::Values(
        ListCase{"ByteOrderMark",
                 "\xEF\xBB\xBF"
                 "0\t1\ta.jpg\n1\t1\tb.jpg\n",
                 "", 2},
        ListCase{"CrOnlyLineEnds", "0\t1\ta.jpg\r1\t1\tb.jpg\r2\t1\tc.jpg\r", "", 3},
        ListCase{"MixedLineEnds", "0\t1\ta.jpg\r\n1\t1\tb.jpg\r2\t1\tc.jpg\n", "", 3},
        ListCase{"NanLabel", "0\tnan\ta.jpg\n", "label 'nan' is not a finite number", 0},
        ListCase{"InfLabel", "0\t1\ta.jpg\n1\t-inf\tb.jpg\n", "l.lst:2: label '-inf'", 0},
        ListCase{"NulInPath", std::string("0\t1\ta.jpg\n1\t1\tb.jpg\0.png\n", 25),
                 "l.lst:2: path 'b.jpg\\x00.png' holds a NUL byte", 0},
        ListCase{"DuplicateId", "0\t1\ta.jpg\n1\t1\tb.jpg\n\n0\t2\tc.jpg\n",
                 "l.lst:4: index 0 is used twice (also line 1)", 0},
        ListCase{"BinaryIndexIsShownEscaped", "\x1b[31m\t1\ta.jpg\n",
                 "index '\\x1B[31m' is not a non-negative integer", 0}),
    [](const auto& info) { return std::string(info.param.name); });

// ---- folder scans --------------------------------------------------------------------------

TEST(FolderScan, EntriesThatAreNotReadAreListedWithTheirReason) {
  TempDir dir;
  const std::vector<std::uint8_t> jpeg = noisy_jpeg(16, 16, false);
  const std::string image(jpeg.begin(), jpeg.end());
  dir.write("cats/1.jpg", image);
  dir.write("dogs/2.jpg", image);
  fs::create_symlink(dir / "nowhere.jpg", dir / "cats/dangling.jpg");
  ASSERT_EQ(::mkfifo((dir / "dogs/fifo.jpg").c_str(), 0600), 0);
  fs::create_symlink("/dev/null", dir / "dogs/device.png");
  fs::create_symlink(dir.path(), dir / "dogs/loop");  // a link to the root
  fs::create_symlink("/", dir / "cats/slash");        // a link to / holds the root too
  dir.write("stray.jpg", image);                      // no class folder

  std::vector<UnreadableEntry> unreadable;
  const FileIndex entries = scan_image_folder(dir.str(), &unreadable);
  std::map<std::string, std::string> reason;
  for (const auto& u : unreadable) {
    for (std::size_t i = 0; i < entries.size(); ++i) {
      if (entries.id(i) == u.id) {
        reason[fs::path(entries.path(i)).lexically_relative(dir.path()).string()] = u.reason;
      }
    }
  }
  EXPECT_EQ(entries.size(), 2U + 6U);
  EXPECT_EQ(reason["cats/dangling.jpg"], "a dangling symbolic link");
  EXPECT_EQ(reason["dogs/fifo.jpg"], "not a regular file: a FIFO");
  EXPECT_EQ(reason["dogs/device.png"], "not a regular file: a device");
  EXPECT_NE(reason["dogs/loop"].find("(a loop), not followed"), std::string::npos);
  EXPECT_NE(reason["cats/slash"].find("(a loop), not followed"), std::string::npos);
  EXPECT_NE(reason["stray.jpg"].find("no class"), std::string::npos);
  EXPECT_EQ(reason.size(), 6U);
  // Without the list, only the readable ones, each in its own class.
  const FileIndex readable = scan_image_folder(dir.str());
  ASSERT_EQ(readable.size(), 2U);
  EXPECT_EQ(readable.labels(0)[0], 0.0F);
  EXPECT_EQ(readable.labels(1)[0], 1.0F);
}

TEST(FolderScan, TheSourceSkipsUnreadEntriesWithTheirReason) {
  TempDir dir;
  const std::vector<std::uint8_t> jpeg = noisy_jpeg(16, 16, false);
  dir.write("cats/1.jpg", jpeg);
  fs::create_symlink(dir / "nowhere.jpg", dir / "cats/dangling.jpg");
  auto source = testing::make_stage<FilesSource>("files", "{type: files, root: " + dir.str() + "}");
  ASSERT_NE(source, nullptr);
  source->prepare();
  std::vector<std::string> errors;
  int read = 0;
  for (const auto& loaded : testing::load_epoch(*source)) {
    if (loaded.error.empty()) {
      ++read;
    } else {
      errors.push_back(loaded.sample.path + ": " + loaded.error);
    }
  }
  EXPECT_EQ(read, 1);
  ASSERT_EQ(errors.size(), 1U);
  EXPECT_NE(errors[0].find("dangling.jpg: a dangling symbolic link"), std::string::npos)
      << errors[0];
}

// ---- npy: a folder holds one run's batches -------------------------------------------------

TEST(NpySink, AnEarlierRunsBatchFilesAreRemovedWhenTheIndexStartsAfresh) {
  TempDir dir;
  dir.write("out/batch_000007_data.npy", "old");
  dir.write("out/batch_000007_labels.npy", "old");
  dir.write("out/notes.txt", "the user's");
  dir.write("out/batch_summary.npy", "not ours: no batch number");
  auto sink = testing::make_stage<NpySink>("npy", "{type: npy, dir: " + dir.file("out") + "}");
  ASSERT_NE(sink, nullptr);
  sink->prepare();
  sink->open();
  sink->finish();
  EXPECT_FALSE(fs::exists(dir / "out/batch_000007_data.npy"));
  EXPECT_FALSE(fs::exists(dir / "out/batch_000007_labels.npy"));
  EXPECT_TRUE(fs::exists(dir / "out/notes.txt"));
  EXPECT_TRUE(fs::exists(dir / "out/batch_summary.npy"));
}

// ---- the engine: allocation failures and what a stopped run reports -------------------------

std::atomic<Pipeline*> g_pipeline{nullptr};
std::atomic<int> g_sunk{0};

class CountSource final : public SourceStage {
 public:
  struct Params {
    std::int64_t count = 100;
  };
  static StageInfo info() {
    return {"count", "test source", StageShape::kSource, "nothing", "samples", true, true};
  }
  static const Schema<Params>& schema() {
    static const Schema<Params> s = [] {
      Schema<Params> x;
      x.integer64("count", &Params::count, "samples", 0, 1 << 20);
      return x;
    }();
    return s;
  }
  CountSource(StageContext c, Params p) : SourceStage(std::move(c)), p_(p) {}
  SourceStatus next(Sample& s) override {
    if (i_ > p_.count) return SourceStatus::kEnd;
    if (i_ == p_.count) {
      ++i_;
      return SourceStatus::kEpochEnd;
    }
    s.id = static_cast<std::uint64_t>(i_++);
    s.path = "n/" + std::to_string(s.id);
    s.labels.assign(1, 0.0F);
    s.tensor.reshape(DType::kInt8, {4}, "C");
    return SourceStatus::kSample;
  }
  std::optional<std::uint64_t> total_samples() const override {
    return static_cast<std::uint64_t>(p_.count);
  }

 private:
  Params p_;
  std::int64_t i_ = 0;
};

// Throws std::bad_alloc on every seventh sample, as an allocation a sample asks for that the
// machine cannot give.
class GreedyStage final : public TransformStage {
 public:
  struct Params {};
  static StageInfo info() {
    return {"greedy", "test transform", StageShape::kTransform, "samples", "samples", true, true};
  }
  static const Schema<Params>& schema() {
    static const Schema<Params> s;
    return s;
  }
  GreedyStage(StageContext c, Params) : TransformStage(std::move(c)) {}
  void process(Sample& s, RunReporter&) const override {
    if (s.id % 7 == 3) throw std::bad_alloc();
  }
};

// Cancels the run from inside its fourth batch, as a signal does, after writing it.
class CancellingSink final : public SinkStage {
 public:
  struct Params {};
  static StageInfo info() {
    return {"cancelling", "test sink", StageShape::kSink, "batches", "batches", false, false};
  }
  static const Schema<Params>& schema() {
    static const Schema<Params> s;
    return s;
  }
  CancellingSink(StageContext c, Params) : SinkStage(std::move(c)) {}
  void consume(const BatchData&) override {
    if (g_sunk.fetch_add(1) + 1 == 4) g_pipeline.load()->cancel();
  }
};

const Registry& test_registry() {
  static const Registry r = [] {
    Registry x;
    x.add<CountSource>();
    x.add<GreedyStage>();
    x.add<BatchAssembler>();
    x.add<CancellingSink>();
    x.add<DiscardSink>();
    return x;
  }();
  return r;
}

TEST(AllocationFailure, IsASampleErrorUnderSkip) {
  Pipeline p = PipelineAccess::from_string(
      "pipeline: {threads: 2}\nstages:\n  - {type: count, count: 70}\n  - {type: greedy}\n"
      "  - {type: batch, size: 5, last: partial}\n  - {type: discard}\n",
      test_registry());
  while (p.next()) {
  }
  const RunStats s = p.stats();
  EXPECT_TRUE(s.error.empty()) << s.error;
  EXPECT_EQ(s.images, 60U);
  ASSERT_EQ(s.skipped.size(), 10U);
  EXPECT_NE(s.skipped[0].error.find("out of memory"), std::string::npos) << s.skipped[0].error;
}

TEST(AllocationFailure, FailsTheRunUnderFail) {
  Pipeline p = PipelineAccess::from_string(
      "stages:\n  - {type: count, count: 70}\n  - {type: greedy, on_error: fail}\n"
      "  - {type: batch, size: 5}\n  - {type: discard}\n",
      test_registry());
  EXPECT_THROW(
      {
        while (p.next()) {
        }
      },
      RunError);
}

TEST(StoppedRun, TheSummaryCountsWhatTheSinksWrote) {
  for (int round = 0; round < 5; ++round) {
    g_sunk = 0;
    Pipeline p = PipelineAccess::from_string(
        "pipeline: {threads: 2, prefetch: 4}\nstages:\n  - {type: count, count: 400}\n"
        "  - {type: batch, size: 4}\n  - {type: cancelling}\n",
        test_registry());
    g_pipeline = &p;
    while (p.next()) {
    }
    g_pipeline = nullptr;
    const RunStats s = p.stats();
    EXPECT_TRUE(s.has_sink);
    EXPECT_EQ(s.sink_batches, static_cast<std::uint64_t>(g_sunk.load())) << "round " << round;
    EXPECT_EQ(s.sink_images, 4U * static_cast<std::uint64_t>(g_sunk.load()));
    EXPECT_LE(s.batches, s.sink_batches);
  }
}

}  // namespace
}  // namespace millrace
