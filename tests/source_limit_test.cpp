// The sources of a data set agree on the keys they share (stages/common/source/source_base.hpp):
// the same data set as an im2rec list for `files` and as an indexed .rec for `recordio` gives the
// same ids to every part, for `limit` (the data set's first N, before the split), any number of
// parts and either split; shuffled, the parts together still read exactly the first N.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/registry.hpp"
#include "stages/common/stage_testing.hpp"
#include "stages/recordio/recordio_kernel.hpp"
#include "stages/recordio/recordio_test_support.hpp"

namespace millrace {
namespace {

using recordio::testing::TempDir;
using recordio::testing::write_text;

constexpr int kSamples = 23;

std::uint64_t id_of(int i) { return 500 + 3 * static_cast<std::uint64_t>(i); }

// The data set twice: `list.lst` under `root` (files) and `data.rec` with its .idx (recordio).
void make_both(const std::string& root) {
  std::filesystem::create_directories(root);
  std::string list;
  recordio::RecordWriter writer(root + "/data.rec");
  std::vector<std::pair<std::uint64_t, std::uint64_t>> index;
  std::vector<std::uint8_t> payload;
  for (int i = 0; i < kSamples; ++i) {
    const float label = static_cast<float>(i % 4);
    list += std::to_string(id_of(i)) + "\t" + std::to_string(i % 4) + "\timg" + std::to_string(i) +
            ".jpg\n";
    const std::vector<std::uint8_t> image(16 + static_cast<std::size_t>(i), 0xAB);
    recordio::build_image_payload(id_of(i), std::vector<float>{label}, image, payload);
    index.emplace_back(id_of(i), writer.write(payload));
  }
  writer.close();
  recordio::write_index(root + "/data.idx", index);
  write_text(root + "/list.lst", list);
}

// The ids one source's part delivers in its first epoch, in order.
std::vector<std::uint64_t> ids_read(const std::string& type, const std::string& yaml) {
  auto source = testing::make_stage<SourceStage>(type, yaml);
  if (source == nullptr) return {};
  source->prepare();
  std::vector<std::uint64_t> ids;
  Sample sample;
  for (;;) {
    sample.reset();
    if (source->next(sample) != SourceStatus::kSample) break;
    if (type == "recordio") source->load(sample);  // the id is the record header's
    ids.push_back(sample.id);
  }
  return ids;
}

TEST(SourceLimit, FilesAndRecordIoGiveEveryPartTheSameSamples) {
  TempDir dir;
  const std::string root = dir.file("set");
  make_both(root);
  // Every limit leaves each contiguous part a sample: `files` refuses a part it would leave empty.
  for (const int limit : {0, 7, 10, 17, 100}) {
    const int n = limit == 0 ? kSamples : std::min(limit, kSamples);
    for (const char* split : {"global", "contiguous"}) {
      for (const int parts : {1, 2, 3, 4}) {
        for (const bool shuffle : {false, true}) {
          SCOPED_TRACE("limit " + std::to_string(limit) + ", " + split + ", " +
                       std::to_string(parts) + " parts" + (shuffle ? ", shuffled" : ""));
          const std::string common = "\nlimit: " + std::to_string(limit) + "\nsplit: " + split +
                                     "\nnum_parts: " + std::to_string(parts) +
                                     "\nshuffle: " + (shuffle ? "true" : "false") +
                                     "\nseed: 9\npart_index: ";
          std::vector<std::uint64_t> from_files;
          std::vector<std::uint64_t> from_records;
          for (int k = 0; k < parts; ++k) {
            const std::vector<std::uint64_t> a = ids_read(
                "files", "root: " + root + "\nlist: list.lst" + common + std::to_string(k) + "\n");
            const std::vector<std::uint64_t> b = ids_read(
                "recordio", "path: " + root + "/data.rec" + common + std::to_string(k) + "\n");
            // Unshuffled, part by part in the same order; shuffled, each draws its own order
            // (the generators are keyed apart) over the same samples.
            if (!shuffle) EXPECT_EQ(a, b) << "part " << k;
            EXPECT_EQ(a.size(), b.size()) << "part " << k;
            from_files.insert(from_files.end(), a.begin(), a.end());
            from_records.insert(from_records.end(), b.begin(), b.end());
          }
          for (auto* read : {&from_files, &from_records}) {
            std::sort(read->begin(), read->end());
            read->erase(std::unique(read->begin(), read->end()), read->end());  // padding
            std::vector<std::uint64_t> first(static_cast<std::size_t>(n));
            for (int i = 0; i < n; ++i) first[static_cast<std::size_t>(i)] = id_of(i);
            EXPECT_EQ(*read, first);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace millrace
