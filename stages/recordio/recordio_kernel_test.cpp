// Tests of the RecordIO kernel: the real MXNet fixtures, the split-record framing (with one byte
// layout worked out by hand), corruption and resynchronisation, byte-range reading, the
// image-record header and the .idx / .lst files.
#include "stages/recordio/recordio_kernel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <utility>
#include <vector>

#include "stages/recordio/recordio_test_support.hpp"

namespace millrace::recordio {
namespace {

using testing::Bytes;
using testing::fixture;
using testing::get_le32;
using testing::kMagicLe;
using testing::pattern_bytes;
using testing::put_le32;
using testing::read_bytes;
using testing::TempDir;
using testing::text_bytes;
using testing::write_bytes;
using testing::write_text;

// What a reader produced, in order: records (offset, payload) and errors (offset, message).
struct Item {
  bool ok = true;
  std::uint64_t offset = 0;
  Bytes payload;
  std::string error;
};

std::vector<Item> read_all(const std::string& path, std::uint64_t begin = 0,
                           std::uint64_t end = kToEnd, std::size_t chunk = kDefaultChunkBytes) {
  RecordReader reader(path, begin, end, chunk);
  std::vector<Item> items;
  Bytes payload;
  for (int guard = 0; guard < 100000; ++guard) {
    ReadResult r = reader.next(payload);
    if (r.status == ReadStatus::kEnd) break;
    Item item;
    item.ok = r.status == ReadStatus::kRecord;
    item.offset = r.offset;
    if (item.ok) item.payload = payload;
    item.error = r.error;
    items.push_back(std::move(item));
  }
  // kEnd is sticky.
  EXPECT_EQ(reader.next(payload).status, ReadStatus::kEnd);
  return items;
}

Bytes framed(const Bytes& payload) {
  Bytes out;
  frame_record(payload, out);
  return out;
}

// Writes the payloads with RecordWriter; returns the offsets it reported.
std::vector<std::uint64_t> write_records(const std::string& path,
                                         const std::vector<Bytes>& payloads) {
  RecordWriter writer(path);
  std::vector<std::uint64_t> offsets;
  offsets.reserve(payloads.size());
  for (const auto& p : payloads) offsets.push_back(writer.write(p));
  writer.close();
  return offsets;
}

// ---- the real fixtures -------------------------------------------------------------------------

TEST(Fixtures, DmlcSampleReadsTenRecordsAsFactsSay) {
  const auto items = read_all(fixture("dmlc_sample.rec"));
  ASSERT_EQ(items.size(), 10U);
  std::uint64_t expected_offset = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const int k = static_cast<int>(i) + 1;
    SCOPED_TRACE("record " + std::to_string(k));
    ASSERT_TRUE(items[i].ok) << items[i].error;
    EXPECT_EQ(items[i].offset, expected_offset);
    ImageHeader header;
    std::vector<float> labels;
    const std::size_t image =
        parse_image_payload(items[i].payload, 1, items[i].offset, header, labels);
    EXPECT_EQ(header.flag, 0U);
    EXPECT_EQ(header.label, static_cast<float>(k % 2));
    EXPECT_EQ(labels, std::vector<float>{static_cast<float>(k % 2)});
    EXPECT_EQ(header.id, static_cast<std::uint64_t>(k));
    EXPECT_EQ(header.id2, 0U);
    std::string text;
    for (int r = 0; r < 10; ++r) text += std::to_string(k) + "\n";
    EXPECT_EQ(std::string(items[i].payload.begin() + static_cast<std::ptrdiff_t>(image),
                          items[i].payload.end()),
              text);
    // 8-byte part header, 24-byte image header, the text, padded to 4.
    expected_offset += 8 + align4(24 + text.size());
  }
  EXPECT_EQ(expected_offset, 532U);
}

TEST(Fixtures, AdafaceIndexListAndJpegsAgree) {
  const std::string rec = fixture("adaface.rec");
  const auto items = read_all(rec);
  ASSERT_EQ(items.size(), 8U);
  const auto index = read_index(fixture("adaface.idx"), read_bytes(rec).size());
  ASSERT_EQ(index.size(), 8U);
  const std::vector<std::uint64_t> keys_in_file_order{0, 4, 7, 5, 1, 6, 3, 2};
  std::map<std::uint64_t, float> list_labels;
  for (const auto& e : read_list(fixture("adaface.lst"))) {
    ASSERT_EQ(e.labels.size(), 1U);
    list_labels[e.index] = e.labels[0];
  }
  ASSERT_EQ(list_labels.size(), 8U);
  const Bytes file = read_bytes(rec);
  for (std::size_t i = 0; i < items.size(); ++i) {
    SCOPED_TRACE("record " + std::to_string(i));
    ASSERT_TRUE(items[i].ok) << items[i].error;
    EXPECT_EQ(index[i].key, keys_in_file_order[i]);
    EXPECT_EQ(index[i].offset, items[i].offset);
    ImageHeader header;
    std::vector<float> labels;
    const std::size_t image =
        parse_image_payload(items[i].payload, 1, items[i].offset, header, labels);
    EXPECT_EQ(header.flag, 0U);
    EXPECT_EQ(header.id, index[i].key);
    EXPECT_EQ(labels, std::vector<float>{list_labels.at(header.id)});
    const Bytes jpeg(items[i].payload.begin() + static_cast<long>(image), items[i].payload.end());
    const cv::Mat decoded = cv::imdecode(jpeg, cv::IMREAD_COLOR);
    ASSERT_FALSE(decoded.empty());
    EXPECT_EQ(decoded.rows, 112);
    EXPECT_EQ(decoded.cols, 112);
    // Reading by index (offset and size from the .idx) gives the same payload.
    Bytes payload;
    const std::span<const std::uint8_t> frame(file.data() + index[i].offset, index[i].size);
    const FrameInfo info = unframe_record(frame, index[i].offset, payload);
    EXPECT_EQ(info.frame_bytes, index[i].size);
    EXPECT_EQ(payload, items[i].payload);
  }
  EXPECT_EQ(index.back().offset + index.back().size, file.size());
}

// ---- framing -----------------------------------------------------------------------------------

TEST(Framing, SplitLayoutWorkedOutByHand) {
  // "ABCD", the magic at aligned offset 4, "EFGHIJ": two parts. Part 1: cflag 1, length 4 ->
  // lrec 0x20000004. Part 2: cflag 3, length 6 -> lrec 0x60000006, then 2 bytes of padding.
  Bytes payload = text_bytes("ABCD");
  payload.insert(payload.end(), kMagicLe.begin(), kMagicLe.end());
  const Bytes tail = text_bytes("EFGHIJ");
  payload.insert(payload.end(), tail.begin(), tail.end());
  const Bytes expected = {0x0A, 0x23, 0xD7, 0xCE, 0x04, 0x00, 0x00, 0x20, 'A',  'B',
                          'C',  'D',  0x0A, 0x23, 0xD7, 0xCE, 0x06, 0x00, 0x00, 0x60,
                          'E',  'F',  'G',  'H',  'I',  'J',  0x00, 0x00};
  EXPECT_EQ(framed(payload), expected);
}

TEST(Framing, EdgeCasesAsTheSpecSays) {
  // An empty record is a header alone.
  EXPECT_EQ(framed({}), (Bytes{0x0A, 0x23, 0xD7, 0xCE, 0, 0, 0, 0}));
  // Exactly the magic: (cflag 1, len 0), (cflag 3, len 0).
  EXPECT_EQ(framed(kMagicLe),
            (Bytes{0x0A, 0x23, 0xD7, 0xCE, 0, 0, 0, 0x20, 0x0A, 0x23, 0xD7, 0xCE, 0, 0, 0, 0x60}));
  // Starts with the magic: a 0-length first part.
  Bytes starts = kMagicLe;
  starts.push_back('x');
  EXPECT_EQ(framed(starts), (Bytes{0x0A, 0x23, 0xD7, 0xCE, 0, 0,    0,   0x20, 0x0A, 0x23,
                                   0xD7, 0xCE, 1,    0,    0, 0x60, 'x', 0,    0,    0}));
  // Unaligned magic is left alone: one part of 9 bytes, padded to 12.
  Bytes unaligned = text_bytes("a");
  unaligned.insert(unaligned.end(), kMagicLe.begin(), kMagicLe.end());
  unaligned.insert(unaligned.end(), {'b', 'c', 'd', 'e'});
  const Bytes f = framed(unaligned);
  ASSERT_EQ(f.size(), 8U + 12U);
  EXPECT_EQ(get_le32(f, 4), 9U);
  EXPECT_TRUE(std::equal(unaligned.begin(), unaligned.end(), f.begin() + 8));
  // A magic in the last, incomplete word is not at an aligned offset < floor(len/4)*4.
  Bytes tail = text_bytes("abcd");
  tail.insert(tail.end(), {0x0A, 0x23, 0xD7});
  EXPECT_EQ(get_le32(framed(tail), 4), 7U);
}

// Payloads that exercise the split rule: the magic at aligned and unaligned offsets, at the start
// and the end, back to back, and sizes that are not multiples of 4.
std::vector<Bytes> tricky_payloads() {
  std::vector<Bytes> p;
  p.push_back({});
  p.push_back(kMagicLe);
  p.push_back(pattern_bytes(1, 1));
  p.push_back(pattern_bytes(2, 2));
  p.push_back(pattern_bytes(3, 3));
  p.push_back(pattern_bytes(5, 4));
  p.push_back(pattern_bytes(13, 5, {0}));
  p.push_back(pattern_bytes(16, 6, {12}));
  p.push_back(pattern_bytes(16, 7, {0, 4, 8, 12}));
  p.push_back(pattern_bytes(23, 8, {1, 6, 11}));
  p.push_back(pattern_bytes(27, 9, {3, 8, 20}));
  p.push_back(pattern_bytes(4001, 10, {4, 8, 400, 1000, 1004, 2001, 3996}));
  p.push_back(pattern_bytes(70001, 11, {65536, 69996, 4096, 17}));
  Bytes two = kMagicLe;
  two.insert(two.end(), kMagicLe.begin(), kMagicLe.end());
  p.push_back(two);
  return p;
}

std::size_t aligned_magics(const Bytes& framed_bytes) {
  std::size_t n = 0;
  for (std::size_t i = 0; i + 4 <= framed_bytes.size(); i += 4) {
    n += std::equal(kMagicLe.begin(), kMagicLe.end(), framed_bytes.begin() + static_cast<long>(i));
  }
  return n;
}

TEST(Framing, SplitRecordsRoundTripInMemory) {
  for (const Bytes& payload : tricky_payloads()) {
    SCOPED_TRACE("payload of " + std::to_string(payload.size()) + " bytes");
    const Bytes f = framed(payload);
    EXPECT_EQ(f.size() % 4, 0U);
    // The invariant of a valid file: every aligned magic word is a part header. Count the parts
    // by walking the headers and compare.
    std::size_t parts = 0;
    for (std::size_t p = 0; p < f.size(); ++parts) {
      EXPECT_EQ(get_le32(f, p), kMagic);
      p += 8 + align4(get_le32(f, p + 4) & kMaxPartLength);
    }
    EXPECT_EQ(aligned_magics(f), parts);
    Bytes back;
    const FrameInfo info = unframe_record(f, 0, back);
    EXPECT_EQ(back, payload);
    EXPECT_EQ(info.frame_bytes, f.size());
    EXPECT_EQ(info.payload_bytes, payload.size());
    Bytes in_place = f;
    in_place.insert(in_place.end(), {1, 2, 3, 4});  // bytes after the record are ignored
    unframe_in_place(in_place, 0);
    EXPECT_EQ(in_place, payload);
  }
}

TEST(Framing, SplitRecordsRoundTripThroughFiles) {
  TempDir dir;
  const std::string path = dir.file("t.rec");
  const auto payloads = tricky_payloads();
  const auto offsets = write_records(path, payloads);
  EXPECT_EQ(read_bytes(path).size() % 4, 0U);
  // Small chunks put part headers and payloads across buffer boundaries.
  for (const std::size_t chunk :
       {std::size_t{64}, std::size_t{100}, std::size_t{4096}, kDefaultChunkBytes}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    const auto items = read_all(path, 0, kToEnd, chunk);
    ASSERT_EQ(items.size(), payloads.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
      ASSERT_TRUE(items[i].ok) << items[i].error;
      EXPECT_EQ(items[i].offset, offsets[i]);
      EXPECT_EQ(items[i].payload, payloads[i]) << "record " << i;
    }
  }
}

TEST(Framing, ScanFrameReportsOffsets) {
  Bytes f = framed(pattern_bytes(40, 3, {8, 16}));
  // Cut the last part off: the record is truncated.
  Bytes cut(f.begin(), f.begin() + 24);
  try {
    scan_frame(cut, 1000);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_EQ(e.offset(), 1000U);
    EXPECT_NE(std::string(e.what()).find("offset 1000"), std::string::npos) << e.what();
  }
  Bytes bad = f;
  bad[0] ^= 0xFF;
  EXPECT_THROW(scan_frame(bad, 0), FormatError);
  // A frame that starts with a middle part has no first part.
  Bytes middle(f.begin() + 16, f.end());
  try {
    scan_frame(middle, 16);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("no first part"), std::string::npos) << e.what();
  }
  EXPECT_THROW(scan_frame(Bytes{0x0A, 0x23}, 0), FormatError);
}

TEST(Framing, WriterReportsOffsetsAndSize) {
  TempDir dir;
  RecordWriter writer(dir.file("w.rec"));
  EXPECT_EQ(writer.write(text_bytes("abc")), 0U);     // 8 + 4
  EXPECT_EQ(writer.write(text_bytes("")), 12U);       // 8
  EXPECT_EQ(writer.write(text_bytes("abcde")), 20U);  // 8 + 8
  EXPECT_EQ(writer.size(), 36U);
  writer.close();
  writer.close();
  EXPECT_EQ(read_bytes(dir.file("w.rec")).size(), 36U);
  EXPECT_THROW(writer.write(text_bytes("x")), std::runtime_error);
  EXPECT_THROW(RecordWriter(dir.file("no/such/folder/x.rec")), std::runtime_error);
}

// ---- corruption --------------------------------------------------------------------------------

struct Built {
  std::vector<Bytes> payloads;
  std::vector<std::uint64_t> offsets;
  Bytes file;
};

Built build(const std::vector<Bytes>& payloads) {
  Built b;
  b.payloads = payloads;
  for (const auto& p : payloads) {
    b.offsets.push_back(b.file.size());
    frame_record(p, b.file);
  }
  return b;
}

std::vector<Bytes> five_records() {
  return {pattern_bytes(30, 1), pattern_bytes(41, 2, {8}), pattern_bytes(100, 3),
          pattern_bytes(64, 4, {0, 32, 60}), pattern_bytes(7, 5)};
}

void expect_records(const std::vector<Item>& items, std::size_t at, const Built& b,
                    std::size_t first, std::size_t last, std::uint64_t shift = 0) {
  for (std::size_t r = first; r < last; ++r, ++at) {
    ASSERT_LT(at, items.size());
    ASSERT_TRUE(items[at].ok) << items[at].error;
    EXPECT_EQ(items[at].offset, b.offsets[r] + shift);
    EXPECT_EQ(items[at].payload, b.payloads[r]);
  }
}

TEST(Corruption, BadMagicIsOneErrorAndTheRestIsRead) {
  TempDir dir;
  Built b = build(five_records());
  put_le32(b.file, b.offsets[2], 0x12345678);
  write_bytes(dir.file("c.rec"), b.file);
  const auto items = read_all(dir.file("c.rec"));
  ASSERT_EQ(items.size(), 5U);
  expect_records(items, 0, b, 0, 2);
  EXPECT_FALSE(items[2].ok);
  EXPECT_EQ(items[2].offset, b.offsets[2]);
  EXPECT_NE(items[2].error.find("0x12345678"), std::string::npos) << items[2].error;
  EXPECT_NE(items[2].error.find("offset " + std::to_string(b.offsets[2])), std::string::npos);
  expect_records(items, 3, b, 3, 5);
}

TEST(Corruption, BadMagicOfASplitRecordSkipsItsOtherParts) {
  TempDir dir;
  Built b = build(five_records());
  put_le32(b.file, b.offsets[3], 0);  // record 3 has four parts
  write_bytes(dir.file("c.rec"), b.file);
  const auto items = read_all(dir.file("c.rec"));
  ASSERT_EQ(items.size(), 5U);
  expect_records(items, 0, b, 0, 3);
  EXPECT_FALSE(items[3].ok);
  EXPECT_EQ(items[3].offset, b.offsets[3]);
  expect_records(items, 4, b, 4, 5);
}

TEST(Corruption, LengthPastTheEndOfTheFile) {
  TempDir dir;
  Built b = build(five_records());
  put_le32(b.file, b.offsets[1] + 4, make_lrec(0, 1U << 20));
  write_bytes(dir.file("c.rec"), b.file);
  const auto items = read_all(dir.file("c.rec"));
  ASSERT_EQ(items.size(), 5U);
  expect_records(items, 0, b, 0, 1);
  EXPECT_FALSE(items[1].ok);
  EXPECT_EQ(items[1].offset, b.offsets[1]);
  EXPECT_NE(items[1].error.find("past the end of the file"), std::string::npos) << items[1].error;
  expect_records(items, 2, b, 2, 5);
}

TEST(Corruption, TruncatedFinalRecord) {
  TempDir dir;
  const Built b = build(five_records());
  // Cut inside the last record's payload, and right after its part header.
  for (const std::size_t keep : {b.offsets[4] + 10, b.offsets[4] + 8}) {
    Bytes cut(b.file.begin(), b.file.begin() + static_cast<long>(keep));
    write_bytes(dir.file("c.rec"), cut);
    const auto items = read_all(dir.file("c.rec"));
    ASSERT_EQ(items.size(), 5U);
    expect_records(items, 0, b, 0, 4);
    EXPECT_FALSE(items[4].ok);
    EXPECT_EQ(items[4].offset, b.offsets[4]);
  }
  Built split = build({pattern_bytes(20, 1), pattern_bytes(64, 4, {0, 32, 60})});
  // Parts at +0, +8, +44, +76: cut where the third part header should be.
  Bytes cut(split.file.begin(), split.file.begin() + static_cast<long>(split.offsets[1] + 44));
  write_bytes(dir.file("s.rec"), cut);
  const auto items = read_all(dir.file("s.rec"));
  ASSERT_EQ(items.size(), 2U);
  expect_records(items, 0, split, 0, 1);
  EXPECT_FALSE(items[1].ok);
  EXPECT_EQ(items[1].offset, split.offsets[1]);
  EXPECT_NE(items[1].error.find("truncated"), std::string::npos) << items[1].error;
  // A lone trailing word (less than a part header) is reported too.
  Bytes trailing = split.file;
  trailing.insert(trailing.end(), kMagicLe.begin(), kMagicLe.end());
  write_bytes(dir.file("t.rec"), trailing);
  const auto t = read_all(dir.file("t.rec"));
  ASSERT_EQ(t.size(), 3U);
  EXPECT_FALSE(t[2].ok);
  EXPECT_EQ(t[2].offset, split.file.size());
}

TEST(Corruption, AFileThatShrinksWhileItIsReadEndsWithOneError) {
  TempDir dir;
  const Built b = build(five_records());
  const std::string path = dir.file("c.rec");
  // Inside record 3, and exactly at its head (no record is cut: the loss is reported all the same).
  for (const std::uint64_t cut : {b.offsets[3] + 10, b.offsets[3]}) {
    // Small chunks, so that the reader has not buffered the later records before the cut.
    for (const std::size_t chunk : {std::size_t{64}, std::size_t{16}}) {
      SCOPED_TRACE("cut at " + std::to_string(cut) + ", chunk " + std::to_string(chunk));
      write_bytes(path, b.file);
      RecordReader reader(path, 0, kToEnd, chunk);
      Bytes payload;
      ReadResult first = reader.next(payload);
      ASSERT_EQ(first.status, ReadStatus::kRecord) << first.error;
      EXPECT_EQ(payload, b.payloads[0]);
      std::filesystem::resize_file(path, cut);
      std::vector<Item> items;
      for (int guard = 0; guard < 100; ++guard) {
        ReadResult r = reader.next(payload);
        if (r.status == ReadStatus::kEnd) break;
        Item item;
        item.ok = r.status == ReadStatus::kRecord;
        item.offset = r.offset;
        if (item.ok) item.payload = payload;
        item.error = r.error;
        items.push_back(std::move(item));
      }
      EXPECT_EQ(reader.next(payload).status, ReadStatus::kEnd);
      // Records 1 and 2 end before the cut; then one error; nothing after it is read.
      ASSERT_EQ(items.size(), 3U);
      expect_records(items, 0, b, 1, 3);
      EXPECT_FALSE(items[2].ok);
      EXPECT_EQ(items[2].offset, b.offsets[3]);
      EXPECT_NE(items[2].error.find("shrank from " + std::to_string(b.file.size()) + " to " +
                                    std::to_string(cut) + " bytes"),
                std::string::npos)
          << items[2].error;
    }
  }
}

TEST(Corruption, GarbageBetweenRecords) {
  TempDir dir;
  const Built b = build(five_records());
  Bytes file(b.file.begin(), b.file.begin() + static_cast<long>(b.offsets[2]));
  const Bytes garbage = pattern_bytes(24, 99);
  file.insert(file.end(), garbage.begin(), garbage.end());
  file.insert(file.end(), b.file.begin() + static_cast<long>(b.offsets[2]), b.file.end());
  write_bytes(dir.file("c.rec"), file);
  const auto items = read_all(dir.file("c.rec"));
  ASSERT_EQ(items.size(), 6U);
  expect_records(items, 0, b, 0, 2);
  EXPECT_FALSE(items[2].ok);
  EXPECT_EQ(items[2].offset, b.offsets[2]);  // where the garbage starts
  expect_records(items, 3, b, 2, 5, garbage.size());
}

TEST(Corruption, PartsWithoutAFirstPartAndRecordsThatBreakOff) {
  TempDir dir;
  // Parts at 0 (cflag 1, empty), 8 (cflag 2, 28 bytes), 44 (cflag 2, 24 bytes), 76 (cflag 3).
  const Built a = build({pattern_bytes(64, 4, {0, 32, 60})});
  ASSERT_EQ(a.file.size(), 84U);
  ASSERT_EQ(get_le32(a.file, 44 + 4) >> 29, 2U);
  ASSERT_EQ(get_le32(a.file, 76 + 4) >> 29, 3U);
  const Built b = build(five_records());
  // Record 0 of `b`, then the middle and last parts of `a` alone, then `a`'s first two parts
  // without its last one, then records 1.. of `b`.
  Bytes file(b.file.begin(), b.file.begin() + static_cast<long>(b.offsets[1]));
  const std::uint64_t orphan = file.size();
  file.insert(file.end(), a.file.begin() + 44, a.file.end());
  const std::uint64_t broken = file.size();
  file.insert(file.end(), a.file.begin(), a.file.begin() + 44);
  const std::uint64_t shift = file.size() - b.offsets[1];
  file.insert(file.end(), b.file.begin() + static_cast<long>(b.offsets[1]), b.file.end());
  write_bytes(dir.file("c.rec"), file);
  const auto items = read_all(dir.file("c.rec"));
  ASSERT_EQ(items.size(), 7U);
  expect_records(items, 0, b, 0, 1);
  EXPECT_FALSE(items[1].ok);
  EXPECT_EQ(items[1].offset, orphan);
  EXPECT_NE(items[1].error.find("no first part"), std::string::npos) << items[1].error;
  EXPECT_FALSE(items[2].ok);
  EXPECT_EQ(items[2].offset, broken);
  EXPECT_NE(items[2].error.find("last part is missing"), std::string::npos) << items[2].error;
  expect_records(items, 3, b, 1, 5, shift);
}

TEST(Corruption, GarbageAtTheStartOfTheFile) {
  TempDir dir;
  const Built b = build(five_records());
  Bytes file = pattern_bytes(16, 7);
  file.insert(file.end(), b.file.begin(), b.file.end());
  write_bytes(dir.file("c.rec"), file);
  const auto items = read_all(dir.file("c.rec"));
  ASSERT_EQ(items.size(), 6U);
  EXPECT_FALSE(items[0].ok);
  EXPECT_EQ(items[0].offset, 0U);
  expect_records(items, 1, b, 0, 5, 16);
}

// ---- byte ranges -------------------------------------------------------------------------------

// A file with split records of many sizes and, optionally, damage in several places.
Bytes range_test_file(bool damaged) {
  std::vector<Bytes> payloads;
  for (int i = 0; i < 30; ++i) {
    const std::size_t size = 3 + static_cast<std::size_t>(i * 37 % 200);
    std::vector<std::size_t> magic;
    if (i % 3 == 0 && size >= 8) magic = {0, size / 8 * 4};
    payloads.push_back(pattern_bytes(size, static_cast<std::uint32_t>(i), magic));
  }
  Built b = build(payloads);
  if (!damaged) return b.file;
  put_le32(b.file, b.offsets[4], 0xDEADBEEF);
  put_le32(b.file, b.offsets[9] + 4, make_lrec(0, 1U << 24));
  Bytes file(b.file.begin(), b.file.begin() + static_cast<long>(b.offsets[20]));
  const Bytes garbage = pattern_bytes(40, 3);
  file.insert(file.end(), garbage.begin(), garbage.end());
  file.insert(file.end(), b.file.begin() + static_cast<long>(b.offsets[20]), b.file.end());
  return file;
}

std::string describe(const Item& item) {
  return (item.ok ? "record@" : "error@") + std::to_string(item.offset);
}

TEST(ByteRanges, TwoRangesReadWhatOneReaderReadsAtEverySplitPoint) {
  TempDir dir;
  for (const bool damaged : {false, true}) {
    SCOPED_TRACE(damaged ? "damaged" : "clean");
    const std::string path = dir.file(damaged ? "d.rec" : "c.rec");
    const Bytes file = range_test_file(damaged);
    write_bytes(path, file);
    const auto whole = read_all(path);
    std::size_t errors = 0;
    for (const auto& item : whole) errors += item.ok ? 0 : 1;
    EXPECT_EQ(errors, damaged ? 3U : 0U);
    for (std::uint64_t split = 0; split <= file.size(); split += 4) {
      auto first = read_all(path, 0, split, 64);
      const auto second = read_all(path, split, kToEnd, 64);
      first.insert(first.end(), second.begin(), second.end());
      ASSERT_EQ(first.size(), whole.size()) << "split at " << split;
      for (std::size_t i = 0; i < whole.size(); ++i) {
        ASSERT_EQ(describe(first[i]), describe(whole[i])) << "split at " << split;
        EXPECT_EQ(first[i].payload, whole[i].payload);
      }
    }
  }
}

TEST(ByteRanges, UnalignedBoundariesAndRangesPastTheEnd) {
  TempDir dir;
  const std::string path = dir.file("c.rec");
  write_bytes(path, range_test_file(false));
  const auto whole = read_all(path);
  const std::uint64_t size = read_bytes(path).size();
  for (const std::uint64_t split : {std::uint64_t{1}, std::uint64_t{6}, size - 1, size + 100}) {
    auto first = read_all(path, 0, split);
    const auto second = read_all(path, split, kToEnd);
    first.insert(first.end(), second.begin(), second.end());
    ASSERT_EQ(first.size(), whole.size()) << split;
    for (std::size_t i = 0; i < whole.size(); ++i) EXPECT_EQ(first[i].offset, whole[i].offset);
  }
  // A range that ends where it begins holds no record head.
  EXPECT_TRUE(read_all(path, 100, 100).empty());
  EXPECT_TRUE(read_all(path, size, kToEnd).empty());
}

TEST(ByteRanges, MXNetPartsCoverEveryRecordOnce) {
  TempDir dir;
  const std::string path = dir.file("c.rec");
  write_bytes(path, range_test_file(false));
  const auto whole = read_all(path);
  const std::uint64_t size = read_bytes(path).size();
  for (std::uint64_t parts = 1; parts <= 5; ++parts) {
    const std::uint64_t step = align4((size + parts - 1) / parts);
    std::vector<std::uint64_t> offsets;
    for (std::uint64_t k = 0; k < parts; ++k) {
      const std::uint64_t begin = std::min(size, k * step);
      const std::uint64_t end = k + 1 == parts ? kToEnd : std::min(size, (k + 1) * step);
      for (const auto& item : read_all(path, begin, end)) {
        ASSERT_TRUE(item.ok);
        // A record belongs to the part whose byte range holds its head.
        EXPECT_GE(item.offset, begin);
        if (end != kToEnd) {
          EXPECT_LT(item.offset, end);
        }
        offsets.push_back(item.offset);
      }
    }
    ASSERT_EQ(offsets.size(), whole.size()) << parts << " parts";
    for (std::size_t i = 0; i < whole.size(); ++i) EXPECT_EQ(offsets[i], whole[i].offset);
  }
}

// ---- the image-record payload ------------------------------------------------------------------

TEST(ImagePayload, BuildLayoutByHand) {
  Bytes out;
  const std::vector<float> one{2.5F};  // 0x40200000
  build_image_payload(0x0102030405060708ULL, one, text_bytes("IMG"), out);
  const Bytes expected = {0, 0, 0, 0, 0, 0, 0x20, 0x40, 8, 7, 6,   5,   4,  3,
                          2, 1, 0, 0, 0, 0, 0,    0,    0, 0, 'I', 'M', 'G'};
  EXPECT_EQ(out, expected);
  const std::vector<float> three{1.0F, -2.0F, 0.5F};  // 0x3F800000, 0xC0000000, 0x3F000000
  build_image_payload(9, three, text_bytes("J"), out);
  ASSERT_EQ(out.size(), 24U + 12U + 1U);
  EXPECT_EQ(get_le32(out, 0), 3U);  // flag = number of labels
  EXPECT_EQ(get_le32(out, 4), 0U);  // header label 0, as MXNet's pack writes it
  EXPECT_EQ(get_le32(out, 8), 9U);
  EXPECT_EQ(get_le32(out, 24), 0x3F800000U);
  EXPECT_EQ(get_le32(out, 28), 0xC0000000U);
  EXPECT_EQ(get_le32(out, 32), 0x3F000000U);
  EXPECT_EQ(out.back(), 'J');
}

TEST(ImagePayload, ParseFlagsAndLabelWidth) {
  Bytes payload;
  const std::vector<float> three{1.0F, 2.0F, 3.0F};
  build_image_payload(77, three, text_bytes("jpeg"), payload);
  put_le32(payload, 4, 0x41200000);  // a header label of 10 is ignored when flag > 0
  ImageHeader h;
  std::vector<float> labels;
  EXPECT_EQ(parse_image_payload(payload, 3, 0, h, labels), 36U);
  EXPECT_EQ(h.flag, 3U);
  EXPECT_EQ(h.id, 77U);
  EXPECT_EQ(labels, three);
  EXPECT_EQ(parse_image_payload(payload, 0, 0, h, labels), 36U);
  try {
    parse_image_payload(payload, 1, 480, h, labels);
    FAIL() << "flag 3 accepted with label_width 1";
  } catch (const FormatError& e) {
    EXPECT_EQ(e.offset(), 480U);
    EXPECT_NE(std::string(e.what()).find("label_width is 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_image_payload(payload, 2, 0, h, labels), FormatError);
  // A flag-0 record carries one label: label_width 2 refuses it.
  const std::vector<float> one{4.0F};
  build_image_payload(5, one, text_bytes("x"), payload);
  EXPECT_EQ(parse_image_payload(payload, 1, 0, h, labels), 24U);
  EXPECT_EQ(labels, one);
  EXPECT_THROW(parse_image_payload(payload, 2, 0, h, labels), FormatError);
  // Too short for the header, or for the labels the flag announces.
  EXPECT_THROW(parse_image_payload(Bytes(23), 1, 0, h, labels), FormatError);
  Bytes lying(28);
  put_le32(lying, 0, 2);
  EXPECT_THROW(parse_image_payload(lying, 0, 0, h, labels), FormatError);
}

// ---- .idx and .lst -----------------------------------------------------------------------------

TEST(IndexFile, SortsByOffsetAndTakesSizesFromDifferences) {
  TempDir dir;
  write_text(dir.file("a.idx"), "7\t100\n3\t0\n\n5\t40\r\n");
  const auto e = read_index(dir.file("a.idx"), 160);
  ASSERT_EQ(e.size(), 3U);
  EXPECT_EQ(e[0].key, 3U);
  EXPECT_EQ(e[0].offset, 0U);
  EXPECT_EQ(e[0].size, 40U);
  EXPECT_EQ(e[1].key, 5U);
  EXPECT_EQ(e[1].size, 60U);
  EXPECT_EQ(e[2].key, 7U);
  EXPECT_EQ(e[2].size, 60U);
  write_index(dir.file("b.idx"), {{4, 8}, {1, 0}});
  EXPECT_EQ(read_bytes(dir.file("b.idx")), text_bytes("4\t8\n1\t0\n"));
}

TEST(IndexFile, MalformedFilesNameTheLine) {
  TempDir dir;
  auto error_of = [&](const std::string& text) {
    write_text(dir.file("x.idx"), text);
    try {
      read_index(dir.file("x.idx"), 100);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of("0\t0\nx\t4\n").find("x.idx:2: "), std::string::npos);
  EXPECT_NE(error_of("0\t0\n1\t6\n").find("not a multiple of 4"), std::string::npos);
  EXPECT_NE(error_of("0\t0\n1\t100\n").find("past the end"), std::string::npos);
  EXPECT_NE(error_of("0\t0\n1\t8\n2\t8\n").find("x.idx:3: offset 8 is listed twice (also line 2)"),
            std::string::npos);
  EXPECT_NE(error_of("0\t0\t4\n").find("x.idx:1: "), std::string::npos);
  EXPECT_THROW(read_index(dir.file("missing.idx"), 10), std::runtime_error);
}

TEST(ListFile, LabelsAsFloatsOrIntegersAndSeveralColumns) {
  TempDir dir;
  write_text(dir.file("a.lst"),
             "0\t1.000000\ta/x.jpg\n12.0\t3\tb c.jpg\r\n\n5\t-0.500000\t/abs/y.png\n");
  const auto e = read_list(dir.file("a.lst"));
  ASSERT_EQ(e.size(), 3U);
  EXPECT_EQ(e[0].index, 0U);
  EXPECT_EQ(e[0].labels, std::vector<float>{1.0F});
  EXPECT_EQ(e[0].path, "a/x.jpg");
  EXPECT_EQ(e[1].index, 12U);
  EXPECT_EQ(e[1].labels, std::vector<float>{3.0F});
  EXPECT_EQ(e[1].path, "b c.jpg");
  EXPECT_EQ(e[2].labels, std::vector<float>{-0.5F});
  write_text(dir.file("m.lst"), "4\t1\t2.5\t3\tp.jpg\n9\t0\t0\t1e2\tq.jpg\n");
  const auto m = read_list(dir.file("m.lst"));
  ASSERT_EQ(m.size(), 2U);
  EXPECT_EQ(m[1].index, 9U);
  EXPECT_EQ(m[1].labels, (std::vector<float>{0.0F, 0.0F, 100.0F}));
}

TEST(ListFile, MalformedListsNameTheLine) {
  TempDir dir;
  auto error_of = [&](const std::string& text) {
    write_text(dir.file("x.lst"), text);
    try {
      read_list(dir.file("x.lst"));
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of("0\t1\ta.jpg\n1\t2\t3\tb.jpg\n").find("x.lst:2: 2 label(s), line 1 has 1"),
            std::string::npos);
  EXPECT_NE(error_of("0\ta.jpg\n").find("x.lst:1: "), std::string::npos);
  EXPECT_NE(error_of("1.5\t1\ta.jpg\n").find("index '1.5'"), std::string::npos);
  EXPECT_NE(error_of("1\tcat\ta.jpg\n").find("label 'cat'"), std::string::npos);
  EXPECT_NE(error_of("1\t1\t\n").find("empty path"), std::string::npos);
}

// A part header that claims more than the limit, in a (sparse) file that really is that long: the
// record is refused without its bytes being copied, and the reader goes on after it.
TEST(RecordReader, ARecordAboveTheLimitIsSkippedWithoutHoldingIt) {
  TempDir dir;
  const std::string path = dir.file("big.rec");
  const std::uint32_t length = (std::uint32_t{300} << 20);  // above the 256 MiB default
  Bytes head(8);
  put_le32(head, 0, kMagic);
  put_le32(head, 4, make_lrec(0, length));
  write_bytes(path, head);
  Bytes next;
  frame_record(text_bytes("after"), next);
  {
    std::filesystem::resize_file(path, 8 + std::uint64_t{length});
    std::ofstream out(path, std::ios::binary | std::ios::app);
    out.write(reinterpret_cast<const char*>(next.data()),
              static_cast<std::streamsize>(next.size()));
  }
  RecordReader reader(path);
  std::vector<std::uint8_t> payload;
  const ReadResult big = reader.next(payload);
  EXPECT_EQ(big.status, ReadStatus::kCorrupt);
  EXPECT_EQ(big.offset, 0U);
  EXPECT_EQ(big.error,
            "record at offset 0 holds 314572800 bytes, above max_record_bytes 268435456 "
            "(raise recordio's max_record_bytes to read it)");
  EXPECT_LT(payload.capacity(), std::size_t{1} << 20);
  const ReadResult after = reader.next(payload);
  EXPECT_EQ(after.status, ReadStatus::kRecord);
  EXPECT_EQ(after.offset, 8 + std::uint64_t{length});
  EXPECT_EQ(payload, text_bytes("after"));
  EXPECT_EQ(reader.next(payload).status, ReadStatus::kEnd);
}

// A record split in parts is counted whole, the magics between its parts included.
TEST(RecordReader, SplitRecordsCountTheirWholePayloadAgainstTheLimit) {
  TempDir dir;
  const std::string path = dir.file("split.rec");
  Bytes payload_in = pattern_bytes(100, 3, {0, 40, 96});
  Bytes file;
  frame_record(payload_in, file);
  write_bytes(path, file);
  for (std::uint64_t limit : {std::uint64_t{99}, std::uint64_t{100}}) {
    RecordReader reader(path, 0, kToEnd, kDefaultChunkBytes, limit);
    std::vector<std::uint8_t> payload;
    const ReadResult r = reader.next(payload);
    EXPECT_EQ(r.status, limit >= 100 ? ReadStatus::kRecord : ReadStatus::kCorrupt) << r.error;
    if (limit >= 100) EXPECT_EQ(payload, payload_in);
    EXPECT_EQ(reader.next(payload).status, ReadStatus::kEnd);
  }
}

}  // namespace
}  // namespace millrace::recordio
