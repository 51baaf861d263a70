// MXNet RecordIO (docs: shared/docs/recordio-format.md): the record framing, the image-record
// payload, and the .idx / .lst text files beside a .rec file. A plain library with no engine
// dependency.
//
// Contract:
// - RecordWriter and RecordReader each own one file descriptor and one buffer; an instance is used
//   by one thread at a time. Instances are independent: any number of readers may read one file
//   at once (each has its own descriptor and position).
// - The free functions are pure or touch only the files they name; they may be called from any
//   number of threads at once.
// - Buffers passed in by the caller (`payload`, `out`) are owned by the caller; the functions
//   resize them and keep their capacity, so a reused buffer stops allocating once it is large
//   enough.
// - Ill-formed side files (a .idx or .lst line) and I/O failures throw std::runtime_error naming
//   the file (and line). Corrupt record data is data, not a failure: RecordReader::next() reports
//   it as ReadStatus::kCorrupt with the byte offset and resynchronises at the next record head,
//   searched at every byte offset (inserted or lost bytes shift the rest of the file), so a
//   damaged record costs that record and nothing after it; the message says how many bytes were
//   skipped. Functions that decode one record from
//   memory throw FormatError, which carries the offset.
// - Reading blocks on file I/O only; the reader issues large sequential reads (chunk_bytes at a
//   time), never one system call per record.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace millrace::recordio {

inline constexpr std::uint32_t kMagic = 0xCED7230AU;
inline constexpr std::uint32_t kMaxPartLength = (1U << 29) - 1;
inline constexpr std::uint64_t kToEnd = std::numeric_limits<std::uint64_t>::max();
inline constexpr std::size_t kDefaultChunkBytes = std::size_t{4} << 20;
inline constexpr std::size_t kImageHeaderBytes = 24;
// The largest record payload read by default, 256 MiB: an uncompressed RGB image at Pillow's
// default MAX_IMAGE_PIXELS (89,478,485 pixels) fits, any compressed one far below max_pixels does.
// A record is held in memory whole.
inline constexpr std::uint64_t kDefaultMaxRecordBytes = std::uint64_t{256} << 20;

// The second word of a part header: continuation flag in the top 3 bits, length in the rest.
constexpr std::uint32_t make_lrec(std::uint32_t cflag, std::uint32_t length) {
  return (cflag << 29U) | length;
}
constexpr std::uint32_t cflag_of(std::uint32_t lrec) { return lrec >> 29U; }
constexpr std::uint32_t length_of(std::uint32_t lrec) { return lrec & kMaxPartLength; }
constexpr std::uint64_t align4(std::uint64_t n) { return (n + 3U) & ~std::uint64_t{3}; }

// Malformed record data; offset() is the byte position in the file where the problem is.
class FormatError : public std::runtime_error {
 public:
  FormatError(std::uint64_t offset, const std::string& message)
      : std::runtime_error(message), offset_(offset) {}
  std::uint64_t offset() const { return offset_; }

 private:
  std::uint64_t offset_;
};

// ---- framing -----------------------------------------------------------------------------------

// Appends `payload` to `out` framed as one record: split at every 4-aligned occurrence of the
// magic (which is dropped), parts flagged 1, 2, ..., 3 (or a single part flagged 0), each part
// padded with zeros to a multiple of 4. Throws std::length_error if a part would exceed
// kMaxPartLength bytes.
void frame_record(std::span<const std::uint8_t> payload, std::vector<std::uint8_t>& out);

struct FrameInfo {
  std::size_t frame_bytes = 0;    // bytes the record occupies, part headers and padding included
  std::size_t payload_bytes = 0;  // length of the reassembled payload
};

// Checks that `frame` starts with one complete record (bytes after it are ignored) and measures
// it. `offset` is the frame's position in its file, used in errors. Throws FormatError.
FrameInfo scan_frame(std::span<const std::uint8_t> frame, std::uint64_t offset);
// Reassembles the record at the start of `frame` into `payload` (parts joined with the magic put
// back between them). Returns what scan_frame() returns. Throws FormatError.
FrameInfo unframe_record(std::span<const std::uint8_t> frame, std::uint64_t offset,
                         std::vector<std::uint8_t>& payload);
// The same in place: `bytes` holds the frame on entry and exactly the payload on return.
FrameInfo unframe_in_place(std::vector<std::uint8_t>& bytes, std::uint64_t offset);

// ---- writing -----------------------------------------------------------------------------------

class RecordWriter {
 public:
  // Creates or truncates `path`. Throws std::runtime_error when it cannot.
  explicit RecordWriter(const std::string& path);
  // Closes the file; a write error at this point is lost, so call close() to see it.
  ~RecordWriter();
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;

  // Appends one record; returns the offset of its first part header. Throws std::length_error
  // (see frame_record) or std::runtime_error on a write error.
  std::uint64_t write(std::span<const std::uint8_t> payload);
  // Bytes in the file once everything written so far is flushed.
  std::uint64_t size() const { return size_; }
  // Flushes and closes; throws std::runtime_error on a write error. Idempotent.
  void close();

 private:
  void flush();

  std::string path_;
  int fd_ = -1;
  std::vector<std::uint8_t> buffer_;
  std::uint64_t size_ = 0;
};

// ---- reading -----------------------------------------------------------------------------------

enum class ReadStatus { kRecord, kCorrupt, kEnd };

struct ReadResult {
  ReadStatus status = ReadStatus::kEnd;
  // kRecord: the record's first part header. kCorrupt: where the damaged data starts (the record
  // head for a record that breaks off or is above the size limit, the first bad word for data
  // that is no record at all).
  std::uint64_t offset = 0;
  std::string error;  // kCorrupt: what is wrong, with the byte offsets involved
};

// Reads the records of one .rec file sequentially, or those of a byte range of it.
//
// Range semantics (sharding without an index, MXNet's InputSplit): a reader for [begin, end)
// starts at the first record head at or after `begin` and stops at the first record head at or
// after `end`; a record head is an aligned magic whose next word has cflag 0 or 1. After damage,
// a reader resynchronises at any byte offset and reads on through records shifted off the
// alignment until it meets an aligned head at or after `end`. So the readers
// of consecutive ranges [b0, b1), [b1, b2), ... read every record exactly once, whatever the
// boundaries, and damaged data is reported by exactly one of them: a reader that starts at 0
// reports anything before the first head, one that starts later skips it silently because the
// reader of the range before it reports it.
class RecordReader {
 public:
  // Opens `path` (throws std::runtime_error if it cannot). `chunk_bytes` is the size of each read.
  // A record whose payload exceeds `max_record_bytes` is reported as kCorrupt (naming the limit)
  // and skipped whole; no more than the limit of it is ever held.
  explicit RecordReader(const std::string& path, std::uint64_t begin = 0,
                        std::uint64_t end = kToEnd, std::size_t chunk_bytes = kDefaultChunkBytes,
                        std::uint64_t max_record_bytes = kDefaultMaxRecordBytes);
  ~RecordReader();
  RecordReader(const RecordReader&) = delete;
  RecordReader& operator=(const RecordReader&) = delete;

  // The next record's reassembled payload goes to `payload` (its previous content is replaced).
  // On kCorrupt `payload` is unspecified and the reader has moved on to the next record head;
  // kEnd is returned from then on once the range is done. A file that shrinks while it is read
  // is one kCorrupt (the record at its new end, with both sizes), then kEnd. Throws
  // std::runtime_error only for an I/O error.
  ReadResult next(std::vector<std::uint8_t>& payload);

  const std::string& path() const { return path_; }
  std::uint64_t file_size() const { return size_; }

 private:
  struct Shrunk {};  // thrown by a read that finds the file shorter than when it was opened
  ReadResult read_next(std::vector<std::uint8_t>& payload);
  void shrank_to(std::uint64_t end);
  bool fill(std::uint64_t pos, std::size_t need);
  std::uint32_t word(std::uint64_t pos) const;
  bool head_at(std::uint64_t pos);
  std::uint64_t find_head(std::uint64_t from);
  std::uint64_t find_resync(std::uint64_t from);
  void copy_out(std::uint64_t pos, std::size_t length, std::uint8_t* dest);
  ReadResult corrupt(std::uint64_t offset, std::uint64_t resume_from, std::string message);

  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;         // the file's size: when opened, or where a read found its end
  std::uint64_t opened_size_ = 0;  // the size when opened, once the file was found to shrink
  bool shrink_reported_ = false;
  std::uint64_t begin_ = 0;
  std::uint64_t end_ = kToEnd;
  std::uint64_t pos_ = 0;
  std::uint64_t max_record_bytes_ = kDefaultMaxRecordBytes;
  bool started_ = false;
  std::vector<std::uint8_t> buffer_;
  std::uint64_t buffer_pos_ = 0;  // file offset of buffer_[0]
  std::size_t buffer_len_ = 0;    // valid bytes in buffer_
};

// ---- the image-record payload ------------------------------------------------------------------

struct ImageHeader {
  std::uint32_t flag = 0;  // 0: one label, `label`; k > 0: k float labels follow the header
  float label = 0;
  std::uint64_t id = 0;
  std::uint64_t id2 = 0;
};

// Replaces `out` with an image record's payload: the header, then the labels when there is not
// exactly one, then the encoded image. One label gives flag 0 with the label in the header; k != 1
// labels give flag k, header label 0, as MXNet's recordio.pack writes them (zero labels: flag 0,
// label 0).
void build_image_payload(std::uint64_t id, std::span<const float> labels,
                         std::span<const std::uint8_t> image, std::vector<std::uint8_t>& out);

// Parses the image-record header at the start of `payload` into `header` and `labels` (flag 0:
// the header's label; flag k > 0: the k labels after the header, whatever the header's label
// says). Returns the offset of the encoded image in `payload`. `label_width` > 0 requires exactly
// that many labels (a flag-0 record carries one), as MXNet's ImageRecordIter does; 0 accepts any
// count. Throws FormatError (offset = `record_offset`) for a payload shorter than its header and
// labels, or a label count that disagrees with label_width.
std::size_t parse_image_payload(std::span<const std::uint8_t> payload, int label_width,
                                std::uint64_t record_offset, ImageHeader& header,
                                std::vector<float>& labels);

// ---- .idx and .lst -----------------------------------------------------------------------------

struct IndexEntry {
  std::uint64_t key = 0;
  std::uint64_t offset = 0;  // of the record's first part header
  std::uint64_t size = 0;    // up to the next indexed record, or to the end of the file
};

// Reads a .idx (`key<TAB>offset` per line) for a .rec of `rec_size` bytes. Returns the entries
// sorted by offset with sizes taken from the differences. Throws std::runtime_error naming
// path:line for a malformed line, an offset that is not a multiple of 4 or not before the end of
// the .rec, or an offset listed twice.
std::vector<IndexEntry> read_index(const std::string& path, std::uint64_t rec_size);
// Writes `key<TAB>offset` lines in the order given. Throws std::runtime_error on failure.
void write_index(const std::string& path,
                 const std::vector<std::pair<std::uint64_t, std::uint64_t>>& key_offsets);

struct ListEntry {
  std::uint64_t index = 0;
  std::vector<float> labels;
  std::string path;  // as written in the list
};

// Reads an im2rec .lst: `index<TAB>label[<TAB>label...]<TAB>path` per line, labels as decimal
// numbers ("%f" or integers), the index an integer (or a float with a zero fraction, as some
// tools write it). Every line must have the same number of labels. Blank lines and a trailing CR
// are ignored. Throws std::runtime_error naming path:line.
std::vector<ListEntry> read_list(const std::string& path);

}  // namespace millrace::recordio
