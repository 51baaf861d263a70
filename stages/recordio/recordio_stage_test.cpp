// Tests of the `recordio` source: the real fixtures with and without their index, labels from the
// header or a list, sharding (by count with an index, by bytes without, over one file or several),
// shuffling (full permutation with an index, bounded buffer without), damaged records as
// per-sample errors, the config checks, and a whole pipeline over a packed .rec.
#include "stages/recordio/recordio_stage.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engine/config_node.hpp"
#include "engine/registry.hpp"
#include "millrace/pipeline.hpp"
#include "stages/common/stage_testing.hpp"
#include "stages/recordio/pack.hpp"
#include "stages/recordio/recordio_kernel.hpp"
#include "stages/recordio/recordio_test_support.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;
using recordio::testing::Bytes;
using recordio::testing::fixture;
using recordio::testing::pattern_bytes;
using recordio::testing::put_le32;
using recordio::testing::read_bytes;
using recordio::testing::TempDir;
using recordio::testing::write_bytes;
using recordio::testing::write_text;

const std::vector<std::string> kEngineKeys{"type", "name", "concurrency", "queue", "on_error"};

// The stage, built from YAML as a pipeline builds it, and prepared.
std::unique_ptr<RecordIoSource> make_source(const std::string& yaml,
                                            std::uint64_t pipeline_seed = 0) {
  auto source = testing::make_stage<RecordIoSource>("recordio", yaml, pipeline_seed);
  if (source != nullptr) source->prepare();
  return source;
}

struct Loaded {
  std::uint64_t id = 0;
  std::uint32_t epoch = 0;
  std::string path;
  std::vector<float> labels;
  Bytes bytes;
  std::string error;  // the SampleError load() raised, if any
};

// Drains next() until kEnd, loading every sample; one list per epoch.
std::vector<std::vector<Loaded>> drain(RecordIoSource& source) {
  std::vector<std::vector<Loaded>> epochs(1);
  Sample sample;
  for (int guard = 0; guard < 100000; ++guard) {
    sample.reset();
    const SourceStatus status = source.next(sample);
    if (status == SourceStatus::kEnd) break;
    if (status == SourceStatus::kEpochEnd) {
      epochs.emplace_back();
      continue;
    }
    EXPECT_EQ(sample.epoch, epochs.size() - 1);
    Loaded l;
    try {
      source.load(sample);
    } catch (const SampleError& e) {
      l.error = e.what();
    }
    l.id = sample.id;
    l.epoch = sample.epoch;
    l.path = sample.path;
    l.labels = sample.labels;
    l.bytes = sample.bytes;
    epochs.back().push_back(std::move(l));
  }
  EXPECT_TRUE(epochs.back().empty()) << "samples after the last epoch marker";
  epochs.pop_back();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(source.next(sample), SourceStatus::kEnd);
  return epochs;
}

std::vector<std::uint64_t> ids_of(const std::vector<Loaded>& samples) {
  std::vector<std::uint64_t> ids;
  ids.reserve(samples.size());
  for (const auto& s : samples) ids.push_back(s.id);
  return ids;
}

std::uint64_t offset_in(const std::string& path) {
  return std::stoull(path.substr(path.rfind('@') + 1));
}

// ---- a generated dataset -----------------------------------------------------------------------

struct Record {
  std::uint64_t id = 0;
  std::uint64_t offset = 0;
  std::vector<float> labels;
  Bytes image;
};

struct Dataset {
  std::string rec;
  std::vector<Record> records;  // in file order
  std::uint64_t size = 0;
};

// `n` records with ids 1000 + 7 * i, images of varied sizes among which some hold the magic at
// aligned offsets (split records), `width` labels each (1: flag 0), and an .idx whose keys are
// listed in reverse order when `with_index`.
Dataset make_dataset(const std::string& rec, int n, bool with_index, int width = 1,
                     std::uint32_t seed = 0) {
  Dataset d;
  d.rec = rec;
  fs::create_directories(fs::path(rec).parent_path());
  recordio::RecordWriter writer(rec);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> index;
  Bytes payload;
  for (int i = 0; i < n; ++i) {
    Record r;
    r.id = 1000 + 7 * static_cast<std::uint64_t>(i);
    const std::size_t size =
        10 + static_cast<std::size_t>((i * 193 + static_cast<int>(seed)) % 900);
    std::vector<std::size_t> magic;
    if (i % 4 == 1) magic = {0, size / 8 * 4};
    r.image = pattern_bytes(size, seed * 1000 + static_cast<std::uint32_t>(i), magic);
    for (int k = 0; k < width; ++k) r.labels.push_back(static_cast<float>(i % 5) + 0.25F * k);
    recordio::build_image_payload(r.id, r.labels, r.image, payload);
    r.offset = writer.write(payload);
    index.emplace_back(r.id, r.offset);
    d.records.push_back(std::move(r));
  }
  writer.close();
  d.size = writer.size();
  if (with_index) {
    std::reverse(index.begin(), index.end());
    recordio::write_index(recordio::index_path_for(rec), index);
  }
  return d;
}

std::vector<std::uint64_t> all_ids(const std::vector<Record>& records) {
  std::vector<std::uint64_t> ids;
  ids.reserve(records.size());
  for (const auto& r : records) ids.push_back(r.id);
  return ids;
}

// ---- the real fixtures -------------------------------------------------------------------------

void expect_adaface(const std::vector<Loaded>& samples, const std::string& rec) {
  const std::vector<std::uint64_t> keys_in_file_order{0, 4, 7, 5, 1, 6, 3, 2};
  EXPECT_EQ(ids_of(samples), keys_in_file_order);
  // adaface.lst: 0, 1, 2, 3 are men (0), 4, 5, 6, 7 women (1).
  const auto index = recordio::read_index(fixture("adaface.idx"), read_bytes(rec).size());
  ASSERT_EQ(samples.size(), index.size());
  for (std::size_t i = 0; i < samples.size(); ++i) {
    SCOPED_TRACE(samples[i].path);
    EXPECT_TRUE(samples[i].error.empty()) << samples[i].error;
    EXPECT_EQ(samples[i].labels, std::vector<float>{samples[i].id >= 4 ? 1.0F : 0.0F});
    EXPECT_EQ(samples[i].path, rec + "@" + std::to_string(index[i].offset));
    const cv::Mat decoded = cv::imdecode(samples[i].bytes, cv::IMREAD_COLOR);
    ASSERT_FALSE(decoded.empty());
    EXPECT_EQ(decoded.size(), cv::Size(112, 112));
    // The bytes are the record's payload after the 24-byte header: with the part header and the
    // padding they make up the record's extent in the index.
    EXPECT_EQ(8 + recordio::align4(24 + samples[i].bytes.size()), index[i].size);
  }
}

TEST(RecordIoSource, AdafaceByIndex) {
  auto source = make_source("type: recordio\npath: " + fixture("adaface.rec") + "\n");
  ASSERT_NE(source, nullptr);
  EXPECT_TRUE(source->indexed());
  EXPECT_EQ(source->total_samples(), std::optional<std::uint64_t>(8));
  const auto epochs = drain(*source);
  ASSERT_EQ(epochs.size(), 1U);
  expect_adaface(epochs[0], fixture("adaface.rec"));
}

TEST(RecordIoSource, AdafaceSequentiallyGivesTheSameSamples) {
  TempDir dir;
  const std::string rec = dir.file("adaface.rec");
  fs::copy_file(fixture("adaface.rec"), rec);
  auto source = make_source("type: recordio\npath: " + rec + "\n");
  ASSERT_NE(source, nullptr);
  EXPECT_FALSE(source->indexed());
  EXPECT_EQ(source->total_samples(), std::nullopt);
  const auto sequential = drain(*source);
  ASSERT_EQ(sequential.size(), 1U);
  expect_adaface(sequential[0], rec);
  // An explicit index makes the copy read by index, with the same bytes.
  auto indexed =
      make_source("type: recordio\npath: " + rec + "\nindex: " + fixture("adaface.idx") + "\n");
  ASSERT_NE(indexed, nullptr);
  EXPECT_TRUE(indexed->indexed());
  const auto by_index = drain(*indexed);
  ASSERT_EQ(by_index.size(), 1U);
  ASSERT_EQ(by_index[0].size(), sequential[0].size());
  for (std::size_t i = 0; i < by_index[0].size(); ++i) {
    EXPECT_EQ(by_index[0][i].bytes, sequential[0][i].bytes);
    EXPECT_EQ(by_index[0][i].path, sequential[0][i].path);
  }
}

TEST(RecordIoSource, DmlcSampleIdsLabelsAndBytes) {
  auto source = make_source("type: recordio\npath: [" + fixture("dmlc_sample.rec") + "]\n");
  ASSERT_NE(source, nullptr);
  EXPECT_FALSE(source->indexed());
  const auto epochs = drain(*source);
  ASSERT_EQ(epochs.size(), 1U);
  ASSERT_EQ(epochs[0].size(), 10U);
  for (int k = 1; k <= 10; ++k) {
    const Loaded& s = epochs[0][static_cast<std::size_t>(k - 1)];
    EXPECT_TRUE(s.error.empty()) << s.error;
    EXPECT_EQ(s.id, static_cast<std::uint64_t>(k));
    EXPECT_EQ(s.labels, std::vector<float>{static_cast<float>(k % 2)});
    std::string text;
    for (int r = 0; r < 10; ++r) text += std::to_string(k) + "\n";
    EXPECT_EQ(std::string(s.bytes.begin(), s.bytes.end()), text);
    EXPECT_EQ(offset_in(s.path), 52U * static_cast<std::uint64_t>(k - 1));
  }
}

// ---- labels ------------------------------------------------------------------------------------

TEST(RecordIoSource, LabelsFromAListReplaceTheRecords) {
  TempDir dir;
  // adaface's ids with labels that are not the header's: id * 10 + 1.
  std::string list;
  for (int id = 7; id >= 0; --id) {
    list += std::to_string(id) + "\t" + std::to_string(id * 10 + 1) + ".000000\tx/" +
            std::to_string(id) + ".jpg\n";
  }
  write_text(dir.file("relabel.lst"), list);
  auto source = make_source("type: recordio\npath: " + fixture("adaface.rec") +
                            "\nlabels: " + dir.file("relabel.lst") + "\n");
  ASSERT_NE(source, nullptr);
  const auto epochs = drain(*source);
  ASSERT_EQ(epochs.size(), 1U);
  ASSERT_EQ(epochs[0].size(), 8U);
  for (const auto& s : epochs[0]) {
    EXPECT_EQ(s.labels, std::vector<float>{static_cast<float>(s.id * 10 + 1)});
  }
  // An id the list does not have is a per-sample error naming it.
  write_text(dir.file("short.lst"), "0\t5\ta.jpg\n");
  auto partial = make_source("type: recordio\npath: " + fixture("adaface.rec") +
                             "\nlabels: " + dir.file("short.lst") + "\n");
  ASSERT_NE(partial, nullptr);
  const auto p = drain(*partial);
  ASSERT_EQ(p[0].size(), 8U);
  EXPECT_TRUE(p[0][0].error.empty());
  EXPECT_EQ(p[0][0].labels, std::vector<float>{5.0F});
  EXPECT_NE(p[0][1].error.find("id 4 has no line in"), std::string::npos) << p[0][1].error;
}

TEST(RecordIoSource, MultiLabelRecordsAndLabelWidth) {
  TempDir dir;
  const Dataset d = make_dataset(dir.file("m/multi.rec"), 6, true, 3);
  auto source = make_source("type: recordio\npath: " + d.rec + "\nlabel_width: 3\n");
  ASSERT_NE(source, nullptr);
  const auto epochs = drain(*source);
  ASSERT_EQ(epochs[0].size(), 6U);
  for (std::size_t i = 0; i < 6; ++i) {
    EXPECT_TRUE(epochs[0][i].error.empty()) << epochs[0][i].error;
    EXPECT_EQ(epochs[0][i].labels, d.records[i].labels);
    EXPECT_EQ(epochs[0][i].bytes, d.records[i].image);
  }
  // label_width 1 disagrees with flag 3: every record is an error that says so.
  auto narrow = make_source("type: recordio\npath: " + d.rec + "\n");
  ASSERT_NE(narrow, nullptr);
  const auto narrow_epochs = drain(*narrow);
  ASSERT_EQ(narrow_epochs.size(), 1U);
  ASSERT_EQ(narrow_epochs[0].size(), 6U);
  for (const auto& s : narrow_epochs[0]) {
    EXPECT_NE(s.error.find("carries 3 label(s) (flag 3) but label_width is 1"), std::string::npos)
        << s.error;
    EXPECT_NE(s.error.find("offset " + std::to_string(offset_in(s.path))), std::string::npos);
  }
}

// ---- sharding ----------------------------------------------------------------------------------

struct Source {
  std::string yaml;  // the stage's keys without num_parts / part_index
  std::vector<Record> records;
  std::uint64_t size = 0;  // bytes, for the part boundaries without an index
  bool indexed = false;
};

std::vector<Record> fixture_records(const std::string& rec, bool adaface) {
  std::vector<Record> out;
  auto source = make_source("type: recordio\npath: " + rec + "\n");
  const auto epochs = drain(*source);
  for (const auto& s : epochs.at(0)) {
    Record r;
    r.id = s.id;
    r.offset = offset_in(s.path);
    out.push_back(r);
  }
  EXPECT_EQ(out.size(), adaface ? 8U : 10U);
  return out;
}

void expect_parts_cover_once(const Source& src) {
  const std::uint64_t n = src.records.size();
  for (int parts = 1; parts <= 5; ++parts) {
    SCOPED_TRACE(std::to_string(parts) + " parts");
    std::vector<std::uint64_t> concatenated;
    const auto step_count = (n + static_cast<std::uint64_t>(parts) - 1) / parts;
    const auto step_bytes = recordio::align4((src.size + static_cast<std::uint64_t>(parts) - 1) /
                                             static_cast<std::uint64_t>(parts));
    for (int k = 0; k < parts; ++k) {
      auto source =
          make_source(src.yaml + "split: contiguous\nnum_parts: " + std::to_string(parts) +
                      "\npart_index: " + std::to_string(k) + "\n");
      ASSERT_NE(source, nullptr);
      EXPECT_EQ(source->indexed(), src.indexed);
      EXPECT_EQ(source->part(), std::make_pair(k, parts));
      const auto epochs = drain(*source);
      ASSERT_EQ(epochs.size(), 1U);
      std::vector<std::uint64_t> expected;
      for (std::uint64_t i = 0; i < n; ++i) {
        const std::uint64_t offset = src.records[i].offset;
        const auto kk = static_cast<std::uint64_t>(k);
        const bool mine = src.indexed ? i >= kk * step_count && i < (kk + 1) * step_count
                                      : offset >= kk * step_bytes &&
                                            (k + 1 == parts || offset < (kk + 1) * step_bytes);
        if (mine) expected.push_back(src.records[i].id);
      }
      EXPECT_EQ(ids_of(epochs[0]), expected) << "part " << k;
      if (src.indexed) {
        EXPECT_EQ(source->total_samples(), expected.size());
      }
      for (const auto& s : epochs[0]) EXPECT_TRUE(s.error.empty()) << s.error;
      const auto ids = ids_of(epochs[0]);
      concatenated.insert(concatenated.end(), ids.begin(), ids.end());
    }
    EXPECT_EQ(concatenated, all_ids(src.records));
  }
}

TEST(RecordIoSharding, FixturesWithAndWithoutIndex) {
  TempDir dir;
  const std::string copy = dir.file("adaface.rec");
  fs::copy_file(fixture("adaface.rec"), copy);
  const std::uint64_t adaface_size = read_bytes(copy).size();
  expect_parts_cover_once({"type: recordio\npath: " + fixture("adaface.rec") + "\n",
                           fixture_records(fixture("adaface.rec"), true), adaface_size, true});
  expect_parts_cover_once(
      {"type: recordio\npath: " + copy + "\n", fixture_records(copy, true), adaface_size, false});
  expect_parts_cover_once({"type: recordio\npath: " + fixture("dmlc_sample.rec") + "\n",
                           fixture_records(fixture("dmlc_sample.rec"), false), 532, false});
}

TEST(RecordIoSharding, GeneratedFileWithSplitRecords) {
  TempDir dir;
  const Dataset indexed = make_dataset(dir.file("i/data.rec"), 50, true);
  expect_parts_cover_once(
      {"type: recordio\npath: " + indexed.rec + "\n", indexed.records, indexed.size, true});
  const Dataset plain = make_dataset(dir.file("p/data.rec"), 50, false);
  expect_parts_cover_once(
      {"type: recordio\npath: " + plain.rec + "\n", plain.records, plain.size, false});
  // The byte boundaries above fall inside records (none is a record head), so every part but
  // the first starts by skipping the tail of a record that belongs to the part before.
  for (std::uint64_t parts = 2; parts <= 5; ++parts) {
    const std::uint64_t step = recordio::align4((plain.size + parts - 1) / parts);
    for (std::uint64_t k = 1; k < parts; ++k) {
      EXPECT_TRUE(std::none_of(plain.records.begin(), plain.records.end(),
                               [&](const Record& r) { return r.offset == k * step; }))
          << parts << " parts, boundary " << k;
    }
  }
}

TEST(RecordIoSharding, SeveralFilesAreOneByteRange) {
  TempDir dir;
  // Written out of name order, read in name order.
  const Dataset b = make_dataset(dir.file("shards/b.rec"), 13, false, 1, 2);
  const Dataset a = make_dataset(dir.file("shards/a.rec"), 20, false, 1, 1);
  const Dataset c = make_dataset(dir.file("shards/c.rec"), 9, false, 1, 3);
  write_text(dir.file("shards/notes.txt"), "not a record file");
  Source src;
  src.yaml = "type: recordio\npath: " + dir.file("shards") + "\n";
  std::uint64_t start = 0;
  for (const Dataset* d : {&a, &b, &c}) {
    for (Record r : d->records) {
      r.offset += start;  // in the concatenation
      src.records.push_back(r);
    }
    start += d->size;
  }
  src.size = start;
  auto whole = make_source(src.yaml);
  ASSERT_NE(whole, nullptr);
  EXPECT_EQ(whole->files(), (std::vector<std::string>{a.rec, b.rec, c.rec}));
  // Ids repeat across the files (each starts at 1000): compare in order, with the bytes.
  const auto all = drain(*whole)[0];
  ASSERT_EQ(all.size(), 42U);
  EXPECT_EQ(all[20].path, b.rec + "@0");
  EXPECT_EQ(all[20].bytes, b.records[0].image);
  EXPECT_EQ(all[41].bytes, c.records[8].image);
  expect_parts_cover_once(src);
  // A list of files is read in the order given.
  auto listed = make_source("type: recordio\npath: [" + c.rec + ", " + a.rec + "]\n");
  ASSERT_NE(listed, nullptr);
  const auto l = drain(*listed)[0];
  ASSERT_EQ(l.size(), 29U);
  EXPECT_EQ(l[0].path, c.rec + "@0");
  EXPECT_EQ(l[9].path, a.rec + "@0");
}

// Records of one size, so that part boundaries fall exactly on record heads and file starts.
Dataset equal_records(const std::string& rec, int n, std::uint64_t first_id) {
  Dataset d;
  d.rec = rec;
  fs::create_directories(fs::path(rec).parent_path());
  recordio::RecordWriter writer(rec);
  Bytes payload;
  for (int i = 0; i < n; ++i) {
    Record r;
    r.id = first_id + static_cast<std::uint64_t>(i);
    r.labels = {1.0F};
    r.image = pattern_bytes(32, static_cast<std::uint32_t>(r.id));  // a 64-byte frame
    recordio::build_image_payload(r.id, r.labels, r.image, payload);
    r.offset = writer.write(payload);
    d.records.push_back(std::move(r));
  }
  writer.close();
  d.size = writer.size();
  EXPECT_EQ(d.size, 64U * static_cast<std::uint64_t>(n));
  return d;
}

TEST(RecordIoSharding, BoundariesOnRecordHeadsAndFileStarts) {
  TempDir dir;
  // 10 records of 64 bytes: 2 parts split at record 5's head, 5 parts at every other head.
  const Dataset one = equal_records(dir.file("one/a.rec"), 10, 0);
  expect_parts_cover_once(
      {"type: recordio\npath: " + one.rec + "\n", one.records, one.size, false});
  // Two files of 5 records: with 2 parts the boundary is the second file's start.
  const Dataset a = equal_records(dir.file("two/a.rec"), 5, 0);
  const Dataset b = equal_records(dir.file("two/b.rec"), 5, 5);
  Source src;
  src.yaml = "type: recordio\npath: " + dir.file("two") + "\n";
  src.records = a.records;
  for (Record r : b.records) {
    r.offset += a.size;
    src.records.push_back(r);
  }
  src.size = a.size + b.size;
  expect_parts_cover_once(src);
}

TEST(RecordIoSharding, SeveralFilesEachWithItsIndexAreReadByIndex) {
  TempDir dir;
  const Dataset a = make_dataset(dir.file("s/a.rec"), 7, true, 1, 1);
  const Dataset b = make_dataset(dir.file("s/b.rec"), 5, true, 1, 2);
  Source src;
  src.yaml = "type: recordio\npath: " + dir.file("s") + "\n";
  src.records = a.records;
  src.records.insert(src.records.end(), b.records.begin(), b.records.end());
  src.indexed = true;
  expect_parts_cover_once(src);
}

// ---- shuffling ---------------------------------------------------------------------------------

std::vector<std::vector<std::uint64_t>> epoch_ids(const std::string& yaml,
                                                  std::uint64_t pipeline_seed = 0) {
  auto source = make_source(yaml, pipeline_seed);
  std::vector<std::vector<std::uint64_t>> out;
  if (source == nullptr) return out;
  for (const auto& e : drain(*source)) out.push_back(ids_of(e));
  return out;
}

void expect_permutations(const std::vector<std::vector<std::uint64_t>>& epochs,
                         const std::vector<std::uint64_t>& ids) {
  for (const auto& e : epochs) {
    auto sorted = e;
    std::sort(sorted.begin(), sorted.end());
    auto expected = ids;
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(sorted, expected) << "an epoch is not a permutation";
    EXPECT_NE(e, ids) << "the order did not change";
  }
  for (std::size_t i = 1; i < epochs.size(); ++i) EXPECT_NE(epochs[i], epochs[i - 1]);
}

TEST(RecordIoShuffle, WithAnIndexAFullPermutationPerEpoch) {
  TempDir dir;
  const Dataset d = make_dataset(dir.file("data.rec"), 50, true);
  const std::string yaml = "type: recordio\npath: " + d.rec + "\nshuffle: true\nepochs: 3\n";
  const auto a = epoch_ids(yaml + "seed: 5\n");
  ASSERT_EQ(a.size(), 3U);
  expect_permutations(a, all_ids(d.records));
  EXPECT_EQ(epoch_ids(yaml + "seed: 5\n"), a);
  EXPECT_NE(epoch_ids(yaml + "seed: 6\n"), a);
  EXPECT_EQ(epoch_ids(yaml + "seed: -1\n", 5), a);
  // Far from local: some record moves by more than half the dataset.
  std::size_t longest = 0;
  for (std::size_t t = 0; t < a[0].size(); ++t) {
    const auto i = static_cast<std::size_t>((a[0][t] - 1000) / 7);
    longest = std::max(longest, i > t ? i - t : t - i);
  }
  EXPECT_GT(longest, 25U);
  // A shuffled part is a permutation of that part.
  const auto part = epoch_ids(yaml + "split: contiguous\nnum_parts: 3\npart_index: 1\n");
  ASSERT_EQ(part.size(), 3U);
  const auto ids = all_ids(d.records);
  const std::vector<std::uint64_t> middle(ids.begin() + 17, ids.begin() + 34);
  expect_permutations(part, middle);
}

TEST(RecordIoShuffle, WithoutAnIndexABoundedBuffer) {
  TempDir dir;
  const Dataset d = make_dataset(dir.file("data.rec"), 50, false);
  const std::string yaml = "type: recordio\npath: " + d.rec + "\nshuffle: true\nepochs: 3\n";
  for (const int buffer : {4, 16, 1024}) {
    SCOPED_TRACE("shuffle_buffer " + std::to_string(buffer));
    const std::string y = yaml + "shuffle_buffer: " + std::to_string(buffer) + "\n";
    const auto a = epoch_ids(y + "seed: 9\n");
    ASSERT_EQ(a.size(), 3U);
    expect_permutations(a, all_ids(d.records));
    EXPECT_EQ(epoch_ids(y + "seed: 9\n"), a);
    EXPECT_EQ(epoch_ids(y, 9), a);
    EXPECT_NE(epoch_ids(y + "seed: 10\n"), a);
    // A record can come out at most buffer - 1 places before its position in the file: the
    // buffer never holds more than `buffer` records.
    for (const auto& epoch : a) {
      for (std::size_t t = 0; t < epoch.size(); ++t) {
        const auto i = static_cast<std::size_t>((epoch[t] - 1000) / 7);
        EXPECT_LE(i, t + static_cast<std::size_t>(buffer) - 1);
      }
    }
  }
  // A buffer of one is the file order.
  const auto one = epoch_ids(yaml + "shuffle_buffer: 1\n");
  for (const auto& e : one) EXPECT_EQ(e, all_ids(d.records));
}

TEST(RecordIoShuffle, NoShuffleKeepsFileOrderEveryEpoch) {
  TempDir dir;
  const Dataset d = make_dataset(dir.file("data.rec"), 12, true);
  auto source = make_source("type: recordio\npath: " + d.rec + "\nepochs: 2\n");
  ASSERT_NE(source, nullptr);
  EXPECT_EQ(source->total_samples(), std::optional<std::uint64_t>(24));
  const auto epochs = drain(*source);
  ASSERT_EQ(epochs.size(), 2U);
  for (std::size_t e = 0; e < 2; ++e) {
    EXPECT_EQ(ids_of(epochs[e]), all_ids(d.records));
    for (std::size_t i = 0; i < epochs[e].size(); ++i) {
      EXPECT_EQ(epochs[e][i].epoch, e);
      EXPECT_EQ(epochs[e][i].bytes, d.records[i].image);
      EXPECT_EQ(epochs[e][i].labels, d.records[i].labels);
    }
  }
}

// `limit` is the data set's first N records in file order, taken before the split: the parts
// together read exactly those, with an index or without (where each part's byte range is cut at
// the end of the first N), for any number of parts and either split.
TEST(RecordIoSource, LimitTakesTheDataSetsFirstRecords) {
  TempDir dir;
  const Dataset with = make_dataset(dir.file("i/data.rec"), 20, true);
  const Dataset without = make_dataset(dir.file("p/data.rec"), 20, false);
  for (const Dataset* d : {&with, &without}) {
    SCOPED_TRACE(d == &with ? "with an index" : "without an index");
    auto source = make_source("type: recordio\npath: " + d->rec + "\nlimit: 4\nepochs: 2\n");
    ASSERT_NE(source, nullptr);
    const auto epochs = drain(*source);
    ASSERT_EQ(epochs.size(), 2U);
    const auto ids = all_ids(d->records);
    for (const auto& e : epochs) {
      EXPECT_EQ(ids_of(e), std::vector<std::uint64_t>(ids.begin(), ids.begin() + 4));
    }
    for (const char* split : {"contiguous", "global"}) {
      for (const int parts : {2, 3, 5}) {
        SCOPED_TRACE(std::string(split) + ", " + std::to_string(parts) + " parts");
        std::vector<std::uint64_t> read;
        for (int k = 0; k < parts; ++k) {
          auto part =
              make_source("type: recordio\npath: " + d->rec + "\nlimit: 7\nsplit: " + split +
                          "\nnum_parts: " + std::to_string(parts) +
                          "\npart_index: " + std::to_string(k) + "\n");
          ASSERT_NE(part, nullptr);
          const auto epochs_read = drain(*part);
          ASSERT_EQ(epochs_read.size(), 1U);
          for (const Loaded& l : epochs_read[0]) read.push_back(l.id);
        }
        std::sort(read.begin(), read.end());
        read.erase(std::unique(read.begin(), read.end()), read.end());  // the deal's padding
        EXPECT_EQ(read, std::vector<std::uint64_t>(ids.begin(), ids.begin() + 7));
      }
    }
  }
}

// ---- damaged records ---------------------------------------------------------------------------

TEST(RecordIoSource, DamagedRecordsAreSampleErrorsWithOffsets) {
  TempDir dir;
  const Dataset d = make_dataset(dir.file("i/data.rec"), 10, true);
  Bytes file = read_bytes(d.rec);
  put_le32(file, d.records[3].offset, 0xBADBAD00);      // bad magic
  put_le32(file, d.records[7].offset + 4, 0x00FFFFFF);  // length past the end
  write_bytes(d.rec, file);
  fs::create_directories(dir.path() / "p");
  write_bytes(dir.file("p/data.rec"), file);  // the same bytes, without an index
  for (const std::string& rec : {d.rec, dir.file("p/data.rec")}) {
    SCOPED_TRACE(rec);
    auto source = make_source("type: recordio\npath: " + rec + "\n");
    ASSERT_NE(source, nullptr);
    const auto epochs = drain(*source);
    ASSERT_EQ(epochs[0].size(), 10U);
    for (std::size_t i = 0; i < 10; ++i) {
      const Loaded& s = epochs[0][i];
      EXPECT_EQ(offset_in(s.path), d.records[i].offset);
      if (i == 3 || i == 7) {
        EXPECT_NE(s.error.find("offset " + std::to_string(d.records[i].offset)), std::string::npos)
            << s.error;
      } else {
        EXPECT_TRUE(s.error.empty()) << s.error;
        EXPECT_EQ(s.id, d.records[i].id);
        EXPECT_EQ(s.bytes, d.records[i].image);
      }
    }
  }
}

// A .rec cut short during a run (a copy still in progress, a disk that filled): every record
// past the cut becomes a per-sample error (on_error applies) instead of stopping the run; with an
// index each one names its own offset, without one the record at the cut is reported with both
// sizes and reading stops there.
TEST(RecordIoSource, AFileCutShortMidRunGivesSampleErrors) {
  TempDir dir;
  // 48 records of 200 kB: more than two of the sequential reader's 4 MB chunks.
  constexpr int kRecords = 48;
  const std::string rec = dir.file("i/big.rec");
  fs::create_directories(dir.path() / "i");
  std::vector<std::uint64_t> offsets;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> index;
  {
    recordio::RecordWriter writer(rec);
    Bytes payload;
    for (int i = 0; i < kRecords; ++i) {
      const float label = static_cast<float>(i);
      recordio::build_image_payload(static_cast<std::uint64_t>(i), {&label, 1},
                                    pattern_bytes(200000, static_cast<std::uint32_t>(i)), payload);
      offsets.push_back(writer.write(payload));
      index.emplace_back(i, offsets.back());
    }
    writer.close();
  }
  recordio::write_index(recordio::index_path_for(rec), index);
  const Bytes whole = read_bytes(rec);
  fs::create_directories(dir.path() / "p");
  const std::string plain = dir.file("p/big.rec");
  constexpr int kCutIn = 30;  // the cut falls inside this record, past the first chunk
  const std::uint64_t cut = offsets[kCutIn] + 1000;
  for (const bool indexed : {true, false}) {
    SCOPED_TRACE(indexed ? "with an index" : "without an index");
    const std::string path = indexed ? rec : plain;
    write_bytes(path, whole);
    auto source = make_source("type: recordio\npath: " + path + "\n");
    ASSERT_NE(source, nullptr);
    Sample sample;
    std::vector<Loaded> loaded;
    for (int guard = 0; guard < 1000; ++guard) {
      sample.reset();
      const SourceStatus status = source->next(sample);
      if (status != SourceStatus::kSample) break;
      if (loaded.size() == 3) fs::resize_file(path, cut);
      Loaded l;
      try {
        source->load(sample);
      } catch (const SampleError& e) {
        l.error = e.what();
      }
      l.id = sample.id;
      l.path = sample.path;
      loaded.push_back(std::move(l));
    }
    ASSERT_EQ(loaded.size(), indexed ? static_cast<std::size_t>(kRecords) : kCutIn + 1U);
    for (std::size_t i = 0; i < loaded.size(); ++i) {
      SCOPED_TRACE(loaded[i].path);
      EXPECT_EQ(offset_in(loaded[i].path), offsets[i]);
      if (i < kCutIn) {
        EXPECT_EQ(loaded[i].error, "");
        EXPECT_EQ(loaded[i].id, i);
      } else if (indexed) {
        EXPECT_NE(loaded[i].error.find("offset " + std::to_string(offsets[i]) + ": cannot read"),
                  std::string::npos)
            << loaded[i].error;
      } else {
        EXPECT_NE(loaded[i].error.find("shrank from " + std::to_string(whole.size()) + " to " +
                                       std::to_string(cut) + " bytes"),
                  std::string::npos)
            << loaded[i].error;
      }
    }
  }
}

// max_record_bytes: a record above it is a sample error naming the limit, the records after it are
// read as usual, with an index and without, and with a sparse index that gives a record more room.
TEST(RecordIoSource, RecordsAboveMaxRecordBytesAreSampleErrors) {
  TempDir dir;
  const Dataset d = make_dataset(dir.file("i/data.rec"), 12, true);
  const Bytes file = read_bytes(d.rec);
  fs::create_directories(dir.path() / "p");
  write_bytes(dir.file("p/data.rec"), file);
  const std::uint64_t limit = 500;
  for (const std::string& rec : {d.rec, dir.file("p/data.rec")}) {
    SCOPED_TRACE(rec);
    auto source = make_source("type: recordio\npath: " + rec + "\nmax_record_bytes: 500\n");
    ASSERT_NE(source, nullptr);
    const auto epochs = drain(*source);
    ASSERT_EQ(epochs[0].size(), d.records.size());
    int refused = 0;
    for (std::size_t i = 0; i < d.records.size(); ++i) {
      const Loaded& s = epochs[0][i];
      const std::uint64_t payload = recordio::kImageHeaderBytes + d.records[i].image.size();
      if (payload > limit) {
        ++refused;
        EXPECT_EQ(s.error, "record at offset " + std::to_string(d.records[i].offset) + " holds " +
                               std::to_string(payload) +
                               " bytes, above max_record_bytes 500 (raise recordio's "
                               "max_record_bytes to read it)");
      } else {
        EXPECT_TRUE(s.error.empty()) << s.error;
        EXPECT_EQ(s.bytes, d.records[i].image);
      }
    }
    EXPECT_GT(refused, 3);
    EXPECT_LT(refused, 10);
  }
  // An index of every other record: each indexed record is given its neighbour's room too.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> sparse;
  for (std::size_t i = 0; i < d.records.size(); i += 2) {
    sparse.emplace_back(d.records[i].id, d.records[i].offset);
  }
  recordio::write_index(dir.file("sparse.idx"), sparse);
  auto source = make_source("type: recordio\npath: " + d.rec +
                            "\nindex: " + dir.file("sparse.idx") + "\nmax_record_bytes: 500\n");
  ASSERT_NE(source, nullptr);
  const auto epochs = drain(*source);
  ASSERT_EQ(epochs[0].size(), sparse.size());
  for (std::size_t k = 0; k < sparse.size(); ++k) {
    const Record& r = d.records[2 * k];
    const std::uint64_t payload = recordio::kImageHeaderBytes + r.image.size();
    EXPECT_EQ(epochs[0][k].error.empty(), payload <= limit) << epochs[0][k].error;
    if (payload <= limit) EXPECT_EQ(epochs[0][k].bytes, r.image);
  }
}

// With an index, a one-part record above the limit is refused from its 8-byte header: a 3 GiB
// record (a sparse file) costs no read of its data.
TEST(RecordIoSource, AnIndexedHugeRecordIsRefusedFromItsHeader) {
  TempDir dir;
  const std::string rec = dir.file("huge.rec");
  Bytes head(8);
  put_le32(head, 0, recordio::kMagic);
  put_le32(head, 4, recordio::make_lrec(0, recordio::kMaxPartLength));
  write_bytes(rec, head);
  fs::resize_file(rec, 8 + std::uint64_t{recordio::kMaxPartLength} + 1);
  recordio::write_index(recordio::index_path_for(rec), {{7, 0}});
  auto source = make_source("type: recordio\npath: " + rec + "\nmax_record_bytes: 1000\n");
  ASSERT_NE(source, nullptr);
  ASSERT_TRUE(source->indexed());
  Sample sample;
  ASSERT_EQ(source->next(sample), SourceStatus::kSample);
  try {
    source->load(sample);
    ADD_FAILURE() << "a record above the limit loaded";
  } catch (const SampleError& e) {
    EXPECT_EQ(std::string(e.what()),
              "record at offset 0 holds 536870911 bytes, above "
              "max_record_bytes 1000 (raise recordio's max_record_bytes "
              "to read it)");
  }
  EXPECT_LT(sample.bytes.capacity(), std::size_t{1} << 20);
}

// ---- config checks -----------------------------------------------------------------------------

TEST(RecordIoSource, ConfigChecksReportLocatedErrors) {
  const StageFactory* factory = Registry::builtin().find("recordio");
  ASSERT_NE(factory, nullptr);
  TempDir dir;
  const Dataset d = make_dataset(dir.file("data.rec"), 3, false);
  StageContext context;
  context.name = "recordio";
  context.type = "recordio";
  auto errors_for = [&](const std::string& yaml) {
    Diagnostics diagnostics;
    ConfigNode node = load_config_document(yaml, "r.yaml", diagnostics);
    EXPECT_EQ(factory->create(node, context, kEngineKeys, diagnostics), nullptr) << yaml;
    std::vector<std::string> out;
    for (const auto& diagnostic : diagnostics.all()) out.push_back(diagnostic.to_string());
    return out;
  };
  const std::string where = "stage 'recordio' (recordio)";
  EXPECT_EQ(errors_for("type: recordio\npath: " + d.rec + "\nnum_parts: 3\npart_index: 3\n"),
            std::vector<std::string>{"r.yaml:4:13: error: " + where +
                                     ": 'part_index' is 3 but num_parts is 3 (parts are 0..2)"});
  EXPECT_EQ(errors_for("type: recordio\npath: " + dir.file("none.rec") + "\n"),
            std::vector<std::string>{"r.yaml:2:7: error: " + where + ": 'path' '" +
                                     dir.file("none.rec") + "' does not exist"});
  EXPECT_EQ(errors_for("type: recordio\npath: [" + d.rec + ", " + dir.file("x.rec") + "]\n"),
            std::vector<std::string>{"r.yaml:2:" + std::to_string(8 + d.rec.size() + 2) +
                                     ": error: " + where + ": 'path' '" + dir.file("x.rec") +
                                     "' does not exist"});
  EXPECT_EQ(errors_for("type: recordio\npath: " + d.rec + "\nindex: " + dir.file("no.idx") + "\n"),
            std::vector<std::string>{"r.yaml:3:8: error: " + where + ": 'index' file '" +
                                     dir.file("no.idx") + "' does not exist"});
  EXPECT_EQ(errors_for("type: recordio\npath: " + dir.path().string() + "\nindex: " + d.rec + "\n"),
            std::vector<std::string>{
                "r.yaml:3:8: error: " + where +
                ": 'index' goes with a single .rec file; with several, the .idx beside each one "
                "is used"});
  EXPECT_EQ(errors_for("type: recordio\npath: " + d.rec + "\nlabels: " + dir.file("l.lst") + "\n"),
            std::vector<std::string>{"r.yaml:3:9: error: " + where + ": 'labels' file '" +
                                     dir.file("l.lst") + "' does not exist"});
  fs::create_directories(dir.path() / "empty");
  EXPECT_EQ(errors_for("type: recordio\npath: " + dir.file("empty") + "\n"),
            std::vector<std::string>{"r.yaml:2:7: error: " + where + ": 'path' folder '" +
                                     dir.file("empty") + "' holds no .rec files"});
  EXPECT_EQ(
      errors_for("type: recordio\n"),
      std::vector<std::string>{"r.yaml:1:1: error: " + where + ": missing required key 'path'"});
  EXPECT_EQ(errors_for("type: recordio\npath: " + d.rec + "\nnum_parts: -1\nshuffle_buffer: 0\n"),
            (std::vector<std::string>{"r.yaml:3:12: error: " + where +
                                          ": 'num_parts' is out of range: -1 not in "
                                          "0..1048576",
                                      "r.yaml:4:17: error: " + where +
                                          ": 'shuffle_buffer' is out of range: 0 not in "
                                          "1..16777216"}));
}

TEST(RecordIoSource, PartFollowsTheProcessRankByDefault) {
  TempDir dir;
  const Dataset d = make_dataset(dir.file("data.rec"), 9, true);
  Diagnostics diagnostics;
  const ConfigNode node = load_config_document(
      "type: recordio\npath: " + d.rec + "\nsplit: contiguous\n", "r.yaml", diagnostics);
  StageContext context;
  context.name = "recordio";
  context.type = "recordio";
  context.rank = 2;
  context.world = 3;
  auto stage =
      Registry::builtin().find("recordio")->create(node, context, kEngineKeys, diagnostics);
  ASSERT_NE(stage, nullptr);
  auto& source = dynamic_cast<RecordIoSource&>(*stage);
  source.prepare();
  EXPECT_EQ(source.part(), std::make_pair(2, 3));
  const auto ids = all_ids(d.records);
  EXPECT_EQ(ids_of(drain(source)[0]), std::vector<std::uint64_t>(ids.begin() + 6, ids.end()));
}

// ---- a whole pipeline --------------------------------------------------------------------------

// A folder of small JPEGs and PNGs in three class folders; returns, per id (the position in the
// sorted file list), the class label.
std::vector<float> make_image_folder(const fs::path& root, int n) {
  const char* classes[] = {"ant", "bee", "cat"};
  std::vector<std::pair<std::string, float>> files;
  for (int i = 0; i < n; ++i) {
    const int c = i % 3;
    char name[64];
    std::snprintf(name, sizeof name, "%s/img%03d.%s", classes[c], i, i % 5 == 0 ? "png" : "jpg");
    cv::Mat image(20 + i % 7 * 3, 24 + i % 4 * 5, CV_8UC3);
    cv::randu(image, cv::Scalar::all(0), cv::Scalar::all(255));
    std::vector<std::uint8_t> encoded;
    cv::imencode(i % 5 == 0 ? ".png" : ".jpg", image, encoded);
    write_bytes((root / name).string(), encoded);
    files.emplace_back(name, static_cast<float>(c));
  }
  std::sort(files.begin(), files.end());
  std::vector<float> labels;
  labels.reserve(files.size());
  for (const auto& f : files) labels.push_back(f.second);
  return labels;
}

struct Delivered {
  std::map<std::uint64_t, int> count;
  std::map<std::uint64_t, float> label;
  RunStats stats;
};

Delivered run_pipeline(const std::string& source_yaml) {
  const std::string yaml =
      "pipeline: {threads: 2, queue: 4, seed: 3}\n"
      "stages:\n"
      "  - " +
      source_yaml +
      "\n"
      "  - {type: decode}\n"
      "  - {type: augment, resize: 16, crop: center, size: [12, 12], mirror: 0.5}\n"
      "  - {type: normalize, dtype: int8, mean: [123.68, 116.779, 103.939]}\n"
      "  - {type: batch, size: 4, last: pad}\n"
      "  - {type: discard}\n";
  Pipeline p = Pipeline::from_string(yaml, "recordio.yaml");
  Delivered d;
  while (auto batch = p.next()) {
    EXPECT_EQ(batch->dtype(), DType::kInt8);
    EXPECT_EQ(batch->label_width(), 1);
    for (std::size_t r = 0; r < batch->size() - static_cast<std::size_t>(batch->pad()); ++r) {
      const std::uint64_t id = batch->ids()[r];
      ++d.count[id];
      d.label[id] = batch->labels()[r];
    }
  }
  d.stats = p.stats();
  return d;
}

TEST(RecordIoPipeline, EveryRecordOnceThroughDecodeAugmentNormalizeBatch) {
  TempDir dir;
  constexpr int kImages = 23;
  const auto labels = make_image_folder(dir.path() / "images", kImages);
  recordio::PackOptions options;
  options.folder = dir.file("images");
  options.output = dir.file("packed/set.rec");
  const auto report = recordio::pack(options);
  ASSERT_EQ(report.records, static_cast<std::uint64_t>(kImages));
  fs::create_directories(dir.path() / "plain");
  fs::copy_file(options.output, dir.file("plain/set.rec"));
  for (const std::string& source : {"{type: recordio, path: " + options.output + "}",
                                    "{type: recordio, path: " + options.output + ", shuffle: true}",
                                    "{type: recordio, path: " + dir.file("plain/set.rec") + "}",
                                    "{type: recordio, path: " + dir.file("plain/set.rec") +
                                        ", shuffle: true, "
                                        "shuffle_buffer: 5}"}) {
    SCOPED_TRACE(source);
    const Delivered d = run_pipeline(source);
    ASSERT_EQ(d.count.size(), static_cast<std::size_t>(kImages));
    for (const auto& [id, n] : d.count) {
      ASSERT_LT(id, labels.size());
      EXPECT_EQ(n, 1) << "id " << id;
      EXPECT_EQ(d.label.at(id), labels[id]) << "id " << id;
    }
    EXPECT_EQ(d.stats.images, static_cast<std::uint64_t>(kImages));
    EXPECT_TRUE(d.stats.skipped.empty());
  }
}

TEST(RecordIoPipeline, DamagedRecordIsSkippedAndCounted) {
  TempDir dir;
  constexpr int kImages = 10;
  make_image_folder(dir.path() / "images", kImages);
  recordio::PackOptions options;
  options.folder = dir.file("images");
  options.output = dir.file("set.rec");
  recordio::pack(options);
  const auto index = recordio::read_index(dir.file("set.idx"), read_bytes(options.output).size());
  Bytes file = read_bytes(options.output);
  put_le32(file, index[4].offset, 0);
  fs::create_directories(dir.path() / "plain");
  write_bytes(dir.file("plain/set.rec"), file);
  const Delivered d =
      run_pipeline("{type: recordio, path: " + dir.file("plain/set.rec") + ", on_error: skip}");
  EXPECT_EQ(d.count.size(), static_cast<std::size_t>(kImages - 1));
  ASSERT_EQ(d.stats.skipped.size(), 1U);
  EXPECT_EQ(d.stats.skipped[0].path,
            dir.file("plain/set.rec") + "@" + std::to_string(index[4].offset));
  EXPECT_EQ(d.stats.skipped[0].stage, "recordio");
  EXPECT_NE(d.stats.skipped[0].error.find("bad magic"), std::string::npos)
      << d.stats.skipped[0].error;
}

}  // namespace
}  // namespace millrace
