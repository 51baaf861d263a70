// RecordIO records: a .rec file read whole through RecordReader (with 4096-byte reads and
// with 64-byte reads, which must agree exactly), read in two byte ranges, each record's
// image-record header parsed, and the in-memory unframing used for indexed reads.
#include <span>
#include <vector>

#include "fuzz/fuzz_targets.hpp"
#include "stages/recordio/recordio_kernel.hpp"

namespace millrace::fuzz {

namespace {

struct Read {
  recordio::ReadStatus status;
  std::uint64_t offset;
  std::vector<std::uint8_t> payload;
  std::string error;
  bool operator==(const Read&) const = default;
};

std::vector<Read> read_all(const std::string& path, std::uint64_t begin, std::uint64_t end,
                           std::size_t chunk_bytes) {
  recordio::RecordReader reader(path, begin, end, chunk_bytes);
  std::vector<Read> out;
  std::vector<std::uint8_t> payload;
  for (;;) {
    recordio::ReadResult r = reader.next(payload);
    if (r.status == recordio::ReadStatus::kEnd) break;
    out.push_back(
        {r.status, r.offset,
         r.status == recordio::ReadStatus::kRecord ? payload : std::vector<std::uint8_t>{},
         r.error});
    // Every call moves on: a file of n bytes holds fewer than n/4 + 1 records and damaged spans.
    if (out.size() > path.size() + 1 + reader.file_size() / 4) __builtin_trap();
  }
  return out;
}

void parse_payload(const std::vector<std::uint8_t>& payload, std::uint64_t offset) {
  recordio::ImageHeader header;
  std::vector<float> labels;
  for (int label_width : {0, 1, 3}) {
    try {
      const std::size_t image =
          recordio::parse_image_payload(payload, label_width, offset, header, labels);
      if (image > payload.size()) __builtin_trap();
    } catch (const recordio::FormatError&) {
    }
  }
}

}  // namespace

int recordio(const std::uint8_t* data, std::size_t size) {
  const std::string path = scratch_file("fuzz.rec", data, size);
  const std::vector<Read> whole = read_all(path, 0, recordio::kToEnd, 4096);
  if (read_all(path, 0, recordio::kToEnd, 64) != whole) __builtin_trap();
  for (const Read& r : whole) {
    if (r.status == recordio::ReadStatus::kRecord) parse_payload(r.payload, r.offset);
  }
  const std::uint64_t middle = (size / 2) & ~std::uint64_t{3};
  (void)read_all(path, 0, middle, 64);
  (void)read_all(path, middle, recordio::kToEnd, 64);

  const std::span<const std::uint8_t> frame(data, size);
  std::vector<std::uint8_t> payload;
  try {
    const recordio::FrameInfo info = recordio::unframe_record(frame, 0, payload);
    if (info.frame_bytes > size || info.payload_bytes != payload.size()) __builtin_trap();
    std::vector<std::uint8_t> in_place(data, data + size);
    (void)recordio::unframe_in_place(in_place, 0);
    if (in_place != payload) __builtin_trap();
  } catch (const recordio::FormatError&) {
  }
  return 0;
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(recordio)
