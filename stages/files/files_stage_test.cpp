// Tests of the `files` source: im2rec list parsing, folder scanning, and the stage itself driven
// through its SourceStage interface (epochs, limit, shuffling, loading bytes).
#include "stages/files/files_stage.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/config_node.hpp"
#include "engine/registry.hpp"
#include "stages/common/stage_testing.hpp"
#include "tests/support/error_of.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;

using testing::error_of;
using testing::TempDir;

// ---- read_image_list ---------------------------------------------------------------------------

TEST(ReadImageList, ReadsIdsLabelsAndResolvesPathsAgainstRoot) {
  TempDir dir;
  const auto list = dir.write("train.lst",
                              "0\t3\tdog/a.jpg\n"
                              "7\t1.5\tcat/b c.jpg\n"
                              "2\t0\t/abs/d.png\n");
  const auto entries = read_image_list(list.string(), "/data/set", 1);
  ASSERT_EQ(entries.size(), 3U);
  EXPECT_EQ(entries[0].id, 0U);
  EXPECT_EQ(entries[0].labels, std::vector<float>{3.0F});
  EXPECT_EQ(entries[0].path, "/data/set/dog/a.jpg");
  EXPECT_EQ(entries[1].id, 7U);
  EXPECT_EQ(entries[1].labels, std::vector<float>{1.5F});
  // Fields are tab-separated, so a space belongs to the path.
  EXPECT_EQ(entries[1].path, "/data/set/cat/b c.jpg");
  // An absolute path is used as it is.
  EXPECT_EQ(entries[2].id, 2U);
  EXPECT_EQ(entries[2].path, "/abs/d.png");
}

TEST(ReadImageList, RelativeRootAndEmptyRoot) {
  TempDir dir;
  const auto list = dir.write("l.lst", "4\t1\timg/x.jpg\n");
  EXPECT_EQ(read_image_list(list.string(), "data", 1).at(0).path, "data/img/x.jpg");
  EXPECT_EQ(read_image_list(list.string(), "", 1).at(0).path, "img/x.jpg");
}

TEST(ReadImageList, LabelWidthTwo) {
  TempDir dir;
  const auto list = dir.write("l.lst",
                              "0\t1\t2.25\ta.jpg\n"
                              "1\t-4\t1e3\tb.jpg\n");
  const auto entries = read_image_list(list.string(), "r", 2);
  ASSERT_EQ(entries.size(), 2U);
  EXPECT_EQ(entries[0].labels, (std::vector<float>{1.0F, 2.25F}));
  EXPECT_EQ(entries[1].labels, (std::vector<float>{-4.0F, 1000.0F}));
  EXPECT_EQ(entries[1].path, "r/b.jpg");
  // A line with one label is malformed when two are expected.
  const auto short_list = dir.write("s.lst", "0\t1\ta.jpg\n");
  EXPECT_NE(error_of([&] {
              read_image_list(short_list.string(), "", 2);
            }).find(short_list.string() + ":1: "),
            std::string::npos);
}

TEST(ReadImageList, FloatIndexAsWrittenBySomeTools) {
  TempDir dir;
  const auto list = dir.write("l.lst", "12.0\t5\ta.jpg\n0.0\t6\tb.jpg\n");
  const auto entries = read_image_list(list.string(), "", 1);
  ASSERT_EQ(entries.size(), 2U);
  EXPECT_EQ(entries[0].id, 12U);
  EXPECT_EQ(entries[1].id, 0U);
}

TEST(ReadImageList, LargeIntegerIndexIsExact) {
  // Above 2^53 a double cannot hold every integer: 2^53 + 1 must not become 2^53.
  TempDir dir;
  const auto list = dir.write("l.lst",
                              "9007199254740993\t5\ta.jpg\n"
                              "9007199254740992\t5\tb.jpg\n"
                              "18446744073709551615\t5\tc.jpg\n");
  const auto entries = read_image_list(list.string(), "", 1);
  ASSERT_EQ(entries.size(), 3U);
  EXPECT_EQ(entries[0].id, 9007199254740993ULL);
  EXPECT_EQ(entries[1].id, 9007199254740992ULL);
  EXPECT_EQ(entries[2].id, 18446744073709551615ULL);
}

TEST(ReadImageList, ToleratesBlankLinesAndWindowsLineEnds) {
  TempDir dir;
  const auto list = dir.write("l.lst", "1\t2\ta.jpg\r\n\r\n\n3\t4\tb.jpg\r\n");
  const auto entries = read_image_list(list.string(), "", 1);
  ASSERT_EQ(entries.size(), 2U);
  EXPECT_EQ(entries[0].path, "a.jpg");
  EXPECT_EQ(entries[1].id, 3U);
  EXPECT_EQ(entries[1].labels, std::vector<float>{4.0F});
  EXPECT_EQ(entries[1].path, "b.jpg");
}

struct MalformedCase {
  const char* name;
  const char* bad_line;
  const char* reason;  // part of the message that says what is wrong
};

class ReadImageListMalformed : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(ReadImageListMalformed, ErrorNamesFileAndLine) {
  TempDir dir;
  // The bad line is the fourth physical line: the blank line still counts.
  const auto list = dir.write(
      "bad.lst", std::string("0\t1\ta.jpg\n1\t1\tb.jpg\n\n") + GetParam().bad_line + "\n");
  const std::string message = error_of([&] { read_image_list(list.string(), "", 1); });
  ASSERT_FALSE(message.empty()) << "no error for line '" << GetParam().bad_line << "'";
  EXPECT_EQ(message.rfind(list.string() + ":4: ", 0), 0U) << message;
  EXPECT_NE(message.find(GetParam().reason), std::string::npos) << message;
}

INSTANTIATE_TEST_SUITE_P(
    Lines, ReadImageListMalformed,
    ::testing::Values(MalformedCase{"SpacesNotTabs", "2 1 c.jpg", "found 1 fields"},
                      MalformedCase{"MissingPath", "2\t1", "found 2 fields"},
                      MalformedCase{"ExtraField", "2\t1\t1\tc.jpg", "found 4 fields"},
                      MalformedCase{"FractionalIndex", "12.5\t1\tc.jpg", "index '12.5'"},
                      MalformedCase{"NegativeIndex", "-1\t1\tc.jpg", "index '-1'"},
                      MalformedCase{"WordIndex", "abc\t1\tc.jpg", "index 'abc'"},
                      MalformedCase{"IndexBeyondUint64", "1e30\t1\tc.jpg", "index '1e30'"},
                      MalformedCase{"InfiniteIndex", "inf\t1\tc.jpg", "index 'inf'"},
                      MalformedCase{"WordLabel", "2\tdog\tc.jpg", "label 'dog'"},
                      MalformedCase{"EmptyLabel", "2\t\tc.jpg", "label ''"},
                      MalformedCase{"EmptyPath", "2\t1\t", "empty path"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ReadImageList, MissingListFileNamesIt) {
  const std::string message =
      error_of([] { read_image_list("/nonexistent/millrace/list.lst", "", 1); });
  EXPECT_NE(message.find("/nonexistent/millrace/list.lst"), std::string::npos) << message;
}

// ---- scan_image_folder -------------------------------------------------------------------------

TEST(ScanImageFolder, LabelsAreSortedClassFoldersAndIdsSortedPositions) {
  TempDir dir;
  dir.write("b_birds/x.jpg", "1");
  dir.write("a_ants/sub/deep/y.PNG", "2");
  dir.write("a_ants/z.jpeg", "3");
  dir.write("a_ants/notes.txt", "not an image");
  dir.write("a_ants/z.jpg.bak", "not an image");
  dir.write("c_cats/readme", "not an image");
  dir.write("c_cats/w.Tiff", "4");
  dir.write("d_dogs/v.webp", "5");
  dir.write("d_dogs/u.bmp", "6");
  fs::create_directories(dir.path() / "aa_empty");

  const auto entries = scan_image_folder(dir.str());
  // Sorted by path relative to the root; class = position of the top folder among all sorted
  // sub-folders (a_ants 0, aa_empty 1, b_birds 2, c_cats 3, d_dogs 4).
  const std::vector<std::pair<std::string, float>> expected = {
      {"a_ants/sub/deep/y.PNG", 0.0F}, {"a_ants/z.jpeg", 0.0F}, {"b_birds/x.jpg", 2.0F},
      {"c_cats/w.Tiff", 3.0F},         {"d_dogs/u.bmp", 4.0F},  {"d_dogs/v.webp", 4.0F}};
  ASSERT_EQ(entries.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(expected[i].first);
    EXPECT_EQ(entries[i].id, i);
    EXPECT_EQ(fs::path(entries[i].path), dir.path() / expected[i].first);
    EXPECT_EQ(entries[i].labels, std::vector<float>{expected[i].second});
  }
}

TEST(ScanImageFolder, FlatFolderHasLabelZero) {
  TempDir dir;
  dir.write("b.jpg", "1");
  dir.write("a.png", "2");
  dir.write("c.txt", "3");
  const auto entries = scan_image_folder(dir.str());
  ASSERT_EQ(entries.size(), 2U);
  EXPECT_EQ(fs::path(entries[0].path).filename(), "a.png");
  EXPECT_EQ(fs::path(entries[1].path).filename(), "b.jpg");
  for (std::size_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(entries[i].labels, std::vector<float>{0.0F});
  }
}

TEST(FileIndex, KeepsARangeOfEntriesIntact) {
  FileIndex index(2);
  for (std::uint64_t i = 0; i < 6; ++i) {
    const std::string path = "dir/" + std::string(i + 1, 'x') + ".jpg";  // paths of every length
    const float labels[2] = {static_cast<float>(i), -static_cast<float>(i)};
    index.add(100 + i, path, labels);
  }
  ASSERT_EQ(index.size(), 6U);
  EXPECT_EQ(index.path(0), "dir/x.jpg");
  EXPECT_EQ(index.path(5), "dir/xxxxxx.jpg");
  index.keep(2, 5);
  ASSERT_EQ(index.size(), 3U);
  for (std::size_t i = 0; i < 3; ++i) {
    const FileEntry e = index.at(i);
    EXPECT_EQ(e.id, 102 + i);
    EXPECT_EQ(e.path, "dir/" + std::string(i + 3, 'x') + ".jpg");
    EXPECT_EQ(e.labels,
              (std::vector<float>{static_cast<float>(i + 2), -static_cast<float>(i + 2)}));
  }
  EXPECT_THROW(index.at(3), std::out_of_range);
  index.keep(1, 1);
  EXPECT_TRUE(index.empty());
}

TEST(ScanImageFolder, MissingRootThrows) {
  EXPECT_THROW(scan_image_folder("/nonexistent/millrace/root"), std::exception);
}

// ---- FilesSource -------------------------------------------------------------------------------

const std::vector<std::string> kEngineKeys{"type", "name", "concurrency", "queue", "on_error"};

std::unique_ptr<FilesSource> make_source(const std::string& yaml, std::uint64_t pipeline_seed = 0) {
  return testing::make_stage<FilesSource>("files", yaml, pipeline_seed);
}

struct Drawn {
  std::vector<std::vector<std::uint64_t>> epochs;  // ids, per epoch, in the order drawn
  std::vector<Sample> samples;                     // every sample, in the order drawn
};

// Calls next() until kEnd, checking the marker sequence on the way.
Drawn drain(SourceStage& source, std::size_t expected_epochs) {
  Drawn out;
  out.epochs.emplace_back();
  Sample sample;
  for (int guard = 0; guard < 100000; ++guard) {
    sample.reset();
    const SourceStatus status = source.next(sample);
    if (status == SourceStatus::kEnd) break;
    if (status == SourceStatus::kEpochEnd) {
      out.epochs.emplace_back();
      continue;
    }
    EXPECT_EQ(sample.epoch, out.epochs.size() - 1);
    out.epochs.back().push_back(sample.id);
    out.samples.push_back(sample);
  }
  // After the last kEpochEnd comes kEnd: the trailing list opened by the last marker is empty.
  EXPECT_TRUE(out.epochs.back().empty()) << "samples after the last epoch marker";
  out.epochs.pop_back();
  EXPECT_EQ(out.epochs.size(), expected_epochs);
  // kEnd is sticky.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(source.next(sample), SourceStatus::kEnd);
  return out;
}

// A folder of `n` files in two classes, named so that sorted order is f000, f001, ...
void make_dataset(const TempDir& dir, int n) {
  for (int i = 0; i < n; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "%s/f%03d.jpg", i % 2 == 0 ? "even" : "odd", i);
    dir.write(name, "bytes of " + std::to_string(i));
  }
}

std::vector<std::uint64_t> iota_ids(std::size_t n) {
  std::vector<std::uint64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0U);
  return ids;
}

TEST(FilesSource, EpochsEndWithMarkersInListOrder) {
  TempDir dir;
  dir.write("l.lst", "10\t0\ta.jpg\n11\t1\tb.jpg\n12\t2\tc.jpg\n");
  auto source = make_source("type: files\nroot: " + dir.str() + "\nlist: l.lst\nepochs: 3\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  EXPECT_EQ(source->total_samples(), std::optional<std::uint64_t>(9));
  const Drawn drawn = drain(*source, 3);
  for (const auto& epoch : drawn.epochs) {
    EXPECT_EQ(epoch, (std::vector<std::uint64_t>{10, 11, 12}));
  }
  ASSERT_EQ(drawn.samples.size(), 9U);
  EXPECT_EQ(drawn.samples[4].path, (dir.path() / "b.jpg").string());
  EXPECT_EQ(drawn.samples[4].labels, std::vector<float>{1.0F});
  EXPECT_EQ(drawn.samples[8].epoch, 2U);
}

TEST(FilesSource, ScannedFolderThroughTheRegistry) {
  TempDir dir;
  make_dataset(dir, 6);
  auto source = make_source("type: files\nroot: " + dir.str() + "\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  const Drawn drawn = drain(*source, 1);
  // Sorted relative paths: even/f000, even/f002, even/f004, odd/f001, odd/f003, odd/f005.
  EXPECT_EQ(drawn.epochs[0], iota_ids(6));
  ASSERT_EQ(drawn.samples.size(), 6U);
  EXPECT_EQ(drawn.samples[1].path, (dir.path() / "even/f002.jpg").string());
  EXPECT_EQ(drawn.samples[1].labels, std::vector<float>{0.0F});
  EXPECT_EQ(drawn.samples[3].path, (dir.path() / "odd/f001.jpg").string());
  EXPECT_EQ(drawn.samples[3].labels, std::vector<float>{1.0F});
}

TEST(FilesSource, LimitKeepsTheFirstEntries) {
  TempDir dir;
  make_dataset(dir, 10);
  auto source = make_source("type: files\nroot: " + dir.str() + "\nlimit: 4\nepochs: 2\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  EXPECT_EQ(source->entries().size(), 4U);
  EXPECT_EQ(source->total_samples(), std::optional<std::uint64_t>(8));
  const Drawn drawn = drain(*source, 2);
  EXPECT_EQ(drawn.epochs[0], iota_ids(4));
  EXPECT_EQ(drawn.epochs[1], iota_ids(4));
}

TEST(FilesSource, LimitAboveTheDatasetSizeKeepsAll) {
  TempDir dir;
  make_dataset(dir, 3);
  auto source = make_source("type: files\nroot: " + dir.str() + "\nlimit: 100\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  EXPECT_EQ(drain(*source, 1).epochs[0], iota_ids(3));
}

TEST(FilesSource, LimitWithShuffleDrawsFromTheFirstEntriesOnly) {
  TempDir dir;
  make_dataset(dir, 20);
  auto source =
      make_source("type: files\nroot: " + dir.str() + "\nlimit: 5\nshuffle: true\nseed: 3\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  auto ids = drain(*source, 1).epochs[0];
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, iota_ids(5));
}

std::vector<std::vector<std::uint64_t>> shuffled_epochs(const TempDir& dir, const std::string& seed,
                                                        std::uint64_t pipeline_seed = 0) {
  auto source = make_source(
      "type: files\nroot: " + dir.str() + "\nshuffle: true\nepochs: 3\nseed: " + seed + "\n",
      pipeline_seed);
  if (source == nullptr) return {};
  source->prepare();
  return drain(*source, 3).epochs;
}

TEST(FilesSource, ShuffleIsAReproduciblePermutationPerEpoch) {
  TempDir dir;
  constexpr std::size_t kN = 40;
  make_dataset(dir, kN);
  const auto a = shuffled_epochs(dir, "7");
  ASSERT_EQ(a.size(), 3U);
  for (const auto& epoch : a) {
    auto sorted = epoch;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, iota_ids(kN)) << "an epoch is not a permutation of the dataset";
    EXPECT_NE(epoch, iota_ids(kN)) << "shuffle left the order unchanged";
  }
  // A new permutation every epoch (the chance that two of 40! orders coincide is nil).
  EXPECT_NE(a[0], a[1]);
  EXPECT_NE(a[1], a[2]);
  EXPECT_NE(a[0], a[2]);
  // The same seed gives the same sequence of permutations; another seed another one.
  EXPECT_EQ(shuffled_epochs(dir, "7"), a);
  const auto b = shuffled_epochs(dir, "8");
  ASSERT_EQ(b.size(), 3U);
  EXPECT_NE(b[0], a[0]);
  EXPECT_NE(b[1], a[1]);
}

TEST(FilesSource, SeedMinusOneTakesThePipelineSeed) {
  TempDir dir;
  make_dataset(dir, 30);
  const auto explicit_seed = shuffled_epochs(dir, "11");
  EXPECT_EQ(shuffled_epochs(dir, "-1", 11), explicit_seed);
  EXPECT_NE(shuffled_epochs(dir, "-1", 12), explicit_seed);
}

TEST(FilesSource, NoShuffleKeepsOrderEveryEpoch) {
  TempDir dir;
  make_dataset(dir, 8);
  auto source = make_source("type: files\nroot: " + dir.str() + "\nepochs: 2\nseed: 5\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  const Drawn drawn = drain(*source, 2);
  EXPECT_EQ(drawn.epochs[0], iota_ids(8));
  EXPECT_EQ(drawn.epochs[1], iota_ids(8));
}

TEST(FilesSource, ConstructedDirectlyWithParams) {
  TempDir dir;
  dir.write("l.lst", "5\t1\t2\tx.jpg\n6\t3\t4\ty.jpg\n");
  FilesSource::Params params;
  params.root = dir.str();
  params.list = "l.lst";
  params.label_width = 2;
  StageContext context;
  context.name = "src";
  context.type = "files";
  FilesSource source(context, params);
  source.prepare();
  const Drawn drawn = drain(source, 1);
  ASSERT_EQ(drawn.samples.size(), 2U);
  EXPECT_EQ(drawn.samples[0].id, 5U);
  EXPECT_EQ(drawn.samples[0].labels, (std::vector<float>{1.0F, 2.0F}));
  EXPECT_EQ(drawn.samples[1].labels, (std::vector<float>{3.0F, 4.0F}));
  EXPECT_EQ(drawn.samples[1].path, (dir.path() / "y.jpg").string());
}

// max_file_bytes: a file above it is a sample error from its size (a sparse 3 GiB file is refused
// at once, without being read); a file of exactly the limit loads.
TEST(FilesSource, FilesAboveMaxFileBytesAreSampleErrors) {
  TempDir dir;
  dir.write("a.jpg", std::string(100, 'a'));
  dir.write("b.jpg", "");
  fs::resize_file(dir.path() / "b.jpg", std::uint64_t{3} << 30);
  dir.write("l.lst", "0\t0\ta.jpg\n1\t0\tb.jpg\n");
  for (const std::int64_t limit : {std::int64_t{100}, std::int64_t{99}}) {
    auto source = make_source("type: files\nroot: " + dir.str() +
                              "\nlist: l.lst\nmax_file_bytes: " + std::to_string(limit) + "\n");
    ASSERT_NE(source, nullptr);
    source->prepare();
    for (int i = 0; i < 2; ++i) {
      Sample sample;
      ASSERT_EQ(source->next(sample), SourceStatus::kSample);
      const std::string size = i == 0 ? "100" : "3221225472";
      const std::string message = error_of([&] { source->load(sample); });
      if (i == 0 && limit == 100) {
        EXPECT_EQ(message, "");
        EXPECT_EQ(sample.bytes.size(), 100U);
      } else {
        EXPECT_EQ(message, "file is " + size + " bytes, above max_file_bytes " +
                               std::to_string(limit) +
                               " (raise files's max_file_bytes to read it)");
      }
    }
  }
}

TEST(FilesSource, EmptyDatasetFailsInPrepare) {
  TempDir dir;
  dir.write("only.txt", "not an image");
  auto source = make_source("type: files\nroot: " + dir.str() + "\n");
  ASSERT_NE(source, nullptr);
  const std::string message = error_of([&] { source->prepare(); });
  EXPECT_NE(message.find("no images found"), std::string::npos) << message;
}

TEST(FilesSource, MalformedListFailsInPrepareNamingTheLine) {
  TempDir dir;
  dir.write("l.lst", "0\t1\ta.jpg\nbroken line\n");
  auto source = make_source("type: files\nroot: " + dir.str() + "\nlist: l.lst\n");
  ASSERT_NE(source, nullptr);
  const std::string message = error_of([&] { source->prepare(); });
  EXPECT_NE(message.find("l.lst:2: "), std::string::npos) << message;
}

TEST(FilesSource, LoadReadsTheFileBytes) {
  TempDir dir;
  std::string content(70000, '\0');
  for (std::size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>((i * 131) % 251);
  dir.write("c/big.jpg", content);
  dir.write("c/empty.jpg", "");
  auto source = make_source("type: files\nroot: " + dir.str() + "\n");
  ASSERT_NE(source, nullptr);
  EXPECT_TRUE(source->has_load());
  source->prepare();
  Sample sample;
  ASSERT_EQ(source->next(sample), SourceStatus::kSample);
  source->load(sample);
  EXPECT_EQ(std::string(sample.bytes.begin(), sample.bytes.end()), content);
  // A recycled sample that held more bytes gets exactly the new file's (here: none).
  ASSERT_EQ(source->next(sample), SourceStatus::kSample);
  EXPECT_EQ(fs::path(sample.path).filename(), "empty.jpg");
  source->load(sample);
  EXPECT_TRUE(sample.bytes.empty());
}

TEST(FilesSource, LoadOfAMissingFileIsASampleErrorWithTheReason) {
  TempDir dir;
  dir.write("l.lst", "0\t0\tgone.jpg\n");
  auto source = make_source("type: files\nroot: " + dir.str() + "\nlist: l.lst\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  Sample sample;
  ASSERT_EQ(source->next(sample), SourceStatus::kSample);
  try {
    source->load(sample);
    FAIL() << "no error for a missing file";
  } catch (const SampleError& e) {
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos)
        << e.what();
  }
}

TEST(FilesSource, LoadOfAFolderIsASampleError) {
  TempDir dir;
  fs::create_directories(dir.path() / "folder.jpg");
  dir.write("l.lst", "0\t0\tfolder.jpg\n");
  auto source = make_source("type: files\nroot: " + dir.str() + "\nlist: l.lst\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  Sample sample;
  ASSERT_EQ(source->next(sample), SourceStatus::kSample);
  EXPECT_THROW(source->load(sample), SampleError);
}

// The list is made once, before the run; what its paths name may change while it runs. Each
// change is the sample's own error (the run goes on, on_error decides), and none holds a worker:
// a FIFO in a file's place would block a plain open() until something writes to it.
TEST(FilesSource, FilesChangedAfterTheListWasMadeAreSampleErrors) {
  TempDir dir;
  for (const char* name : {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}) dir.write(name, "bytes");
  auto source = make_source("type: files\nroot: " + dir.str() + "\n");
  ASSERT_NE(source, nullptr);
  source->prepare();
  fs::remove(dir.path() / "a.jpg");
  fs::remove(dir.path() / "b.jpg");
  fs::create_directory(dir.path() / "b.jpg");
  fs::remove(dir.path() / "c.jpg");
  ASSERT_EQ(::mkfifo(dir.file("c.jpg").c_str(), 0600), 0);
  const std::vector<std::string> expected{"cannot open file: No such file or directory",
                                          "not a regular file: a folder",
                                          "not a regular file: a FIFO", ""};
  const std::vector<testing::Loaded> loaded = testing::load_epoch(*source);
  ASSERT_EQ(loaded.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(loaded[i].sample.path);
    EXPECT_EQ(loaded[i].error, expected[i]);
  }
  const Sample& last = loaded.back().sample;
  EXPECT_EQ(std::string(last.bytes.begin(), last.bytes.end()), "bytes");
}

TEST(FilesSource, ConfigChecksReportLocatedErrors) {
  const StageFactory* factory = Registry::builtin().find("files");
  ASSERT_NE(factory, nullptr);
  TempDir dir;
  StageContext context;
  context.name = "files";
  context.type = "files";
  auto errors_for = [&](const std::string& yaml) {
    Diagnostics d;
    ConfigNode node = load_config_document(yaml, "f.yaml", d);
    EXPECT_EQ(factory->create(node, context, kEngineKeys, d), nullptr) << yaml;
    std::vector<std::string> out;
    for (const auto& diagnostic : d.all()) out.push_back(diagnostic.to_string());
    return out;
  };
  EXPECT_EQ(errors_for("type: files\nroot: " + dir.str() + "\nlist: missing.lst\n"),
            std::vector<std::string>{"f.yaml:3:7: error: stage 'files' (files): 'list' file '" +
                                     (dir.path() / "missing.lst").string() + "' does not exist"});
  EXPECT_EQ(errors_for("type: files\nroot: " + dir.str() + "\nepochs: 0\nlimit: -1\n"),
            (std::vector<std::string>{
                "f.yaml:3:9: error: stage 'files' (files): 'epochs' is out of range: 0 not in "
                "1..1048576",
                "f.yaml:4:8: error: stage 'files' (files): 'limit' is out of range: -1 not in "
                "0..inf"}));
}

}  // namespace
}  // namespace millrace

namespace millrace {
namespace {

TEST(PartRange, EveryEntryLandsInExactlyOnePart) {
  for (std::size_t n = 0; n <= 53; ++n) {
    for (int parts = 1; parts <= 7; ++parts) {
      std::vector<int> owner(n, -1);
      std::size_t previous_end = 0;
      for (int k = 0; k < parts; ++k) {
        const auto [begin, end] = part_range(n, parts, k);
        EXPECT_EQ(begin, previous_end) << n << " " << parts << " " << k;  // contiguous, in order
        EXPECT_LE(end - begin,
                  (n + static_cast<std::size_t>(parts) - 1) / static_cast<std::size_t>(parts));
        for (std::size_t i = begin; i < end; ++i) {
          EXPECT_EQ(owner[i], -1);
          owner[i] = k;
        }
        previous_end = end;
      }
      EXPECT_EQ(previous_end, n);
      for (int o : owner) EXPECT_GE(o, 0);
    }
  }
}

TEST(PartRange, MatchesMxnetNstep) {
  // MXNet: nstep = ceil(10 / 3) = 4: parts [0, 4), [4, 8), [8, 10).
  EXPECT_EQ(part_range(10, 3, 0), (std::pair<std::size_t, std::size_t>{0, 4}));
  EXPECT_EQ(part_range(10, 3, 1), (std::pair<std::size_t, std::size_t>{4, 8}));
  EXPECT_EQ(part_range(10, 3, 2), (std::pair<std::size_t, std::size_t>{8, 10}));
}

// ---- the global split
// ----------------------------------------------------------------------------

struct Dealt {
  std::vector<std::uint64_t> ids;      // in the order drawn
  std::vector<std::uint64_t> repeats;  // the ids drawn as repeats
};

std::vector<Dealt> deal_epochs(const std::string& yaml, int parts, std::uint64_t global_start,
                               std::size_t epochs) {
  std::vector<Dealt> out;
  for (int k = 0; k < parts; ++k) {
    auto source = make_source(yaml + "num_parts: " + std::to_string(parts) +
                              "\npart_index: " + std::to_string(k) + "\n");
    EXPECT_NE(source, nullptr);
    if (source == nullptr) return out;
    source->prepare();
    EXPECT_TRUE(source->set_global_start(global_start));
    const Drawn drawn = drain(*source, epochs);
    Dealt d;
    for (const Sample& sample : drawn.samples) {
      if (sample.epoch != 0) continue;
      d.ids.push_back(sample.id);
      if (sample.repeat) d.repeats.push_back(sample.id);
    }
    out.push_back(d);
  }
  return out;
}

TEST(FilesSource, GlobalSplitDealsOneShuffleToThePartsWithEqualCounts) {
  TempDir dir;
  make_dataset(dir, 10);
  const std::string yaml = "type: files\nroot: " + dir.str() + "\nshuffle: true\nseed: 4\n";
  auto whole = make_source(yaml);
  ASSERT_NE(whole, nullptr);
  whole->prepare();
  const std::vector<std::uint64_t> order = drain(*whole, 1).epochs[0];
  ASSERT_NE(order, iota_ids(10));
  for (const int parts : {2, 3, 4}) {
    SCOPED_TRACE(std::to_string(parts) + " parts");
    const std::size_t each = (10 + parts - 1) / parts;
    std::vector<std::uint64_t> all;
    std::size_t repeats = 0;
    const auto dealt = deal_epochs(yaml, parts, 0, 1);
    ASSERT_EQ(dealt.size(), static_cast<std::size_t>(parts));
    for (int k = 0; k < parts; ++k) {
      const Dealt& d = dealt[static_cast<std::size_t>(k)];
      ASSERT_EQ(d.ids.size(), each);  // every part the same count
      for (std::size_t j = 0; j < each; ++j) {
        const std::size_t g = static_cast<std::size_t>(k) + j * static_cast<std::size_t>(parts);
        // Dealt in turn from the one order; past its end, from its start again.
        EXPECT_EQ(d.ids[j], order[g < 10 ? g : g - 10]);
      }
      repeats += d.repeats.size();
      all.insert(all.end(), d.ids.begin(), d.ids.end() - static_cast<long>(d.repeats.size()));
    }
    EXPECT_EQ(repeats, each * static_cast<std::size_t>(parts) - 10);
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all, iota_ids(10));  // disjoint and covering, repeats aside
  }
}

TEST(FilesSource, GlobalStartDealsTheRestOfTheEpochToAnyNumberOfParts) {
  TempDir dir;
  make_dataset(dir, 10);
  const std::string yaml =
      "type: files\nroot: " + dir.str() + "\nshuffle: true\nseed: 4\nepochs: 2\n";
  auto whole = make_source(yaml);
  ASSERT_NE(whole, nullptr);
  whole->prepare();
  const auto epochs = drain(*whole, 2).epochs;
  // Two parts took 3 each: positions [0, 6) of the order. Three parts deal [6, 10).
  const auto dealt = deal_epochs(yaml, 3, 6, 2);
  std::vector<std::uint64_t> rest;
  for (const Dealt& d : dealt) {
    ASSERT_EQ(d.ids.size(), 2U);
    rest.insert(rest.end(), d.ids.begin(), d.ids.end() - static_cast<long>(d.repeats.size()));
  }
  std::sort(rest.begin(), rest.end());
  std::vector<std::uint64_t> expected(epochs[0].begin() + 6, epochs[0].end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(rest, expected);
  // Only the first epoch starts late: the next is whole.
  auto one = make_source(yaml);
  ASSERT_NE(one, nullptr);
  one->prepare();
  ASSERT_TRUE(one->set_global_start(6));
  const auto resumed = drain(*one, 2).epochs;
  EXPECT_EQ(resumed[0], std::vector<std::uint64_t>(epochs[0].begin() + 6, epochs[0].end()));
  EXPECT_EQ(resumed[1], epochs[1]);
  // Past the end of the order, or with a contiguous split, there is no such start.
  auto past = make_source(yaml);
  ASSERT_NE(past, nullptr);
  past->prepare();
  EXPECT_FALSE(past->set_global_start(11));
  auto contiguous = make_source(yaml + "split: contiguous\n");
  ASSERT_NE(contiguous, nullptr);
  contiguous->prepare();
  EXPECT_FALSE(contiguous->set_global_start(6));
  EXPECT_FALSE(contiguous->split().global);
}

TEST(FilesSource, ContiguousSplitKeepsMxnetsSlices) {
  TempDir dir;
  make_dataset(dir, 10);
  auto part = make_source("type: files\nroot: " + dir.str() +
                          "\nsplit: contiguous\nnum_parts: 2\npart_index: 1\n");
  ASSERT_NE(part, nullptr);
  part->prepare();
  const auto ids = drain(*part, 1).epochs[0];
  EXPECT_EQ(ids, std::vector<std::uint64_t>({5, 6, 7, 8, 9}));
}

TEST(FilesSource, TheDatasetDigestFollowsTheEntriesNotWhereTheyLie) {
  TempDir a;
  TempDir b;
  TempDir c;
  make_dataset(a, 6);
  make_dataset(b, 6);
  make_dataset(c, 5);
  c.write("odd/f105.jpg", "bytes of 5");  // the same count, another name
  const auto split = [](const TempDir& dir, const std::string& extra) {
    auto source = make_source("type: files\nroot: " + dir.str() + "\n" + extra);
    EXPECT_NE(source, nullptr);
    if (source == nullptr) return SourceStage::Split{};
    source->prepare();
    return source->split();
  };
  EXPECT_EQ(split(a, "").dataset, split(b, "").dataset);  // the same files in another folder
  EXPECT_EQ(split(a, "").dataset_samples, 6U);
  EXPECT_EQ(split(a, "limit: 5\n").dataset_samples, 5U);
  EXPECT_NE(split(a, "").dataset, split(a, "limit: 5\n").dataset);
  EXPECT_NE(split(a, "").dataset, split(c, "").dataset);
  EXPECT_TRUE(split(a, "").global);
}

}  // namespace
}  // namespace millrace
