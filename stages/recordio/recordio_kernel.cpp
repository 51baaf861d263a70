#include "stages/recordio/recordio_kernel.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <system_error>

#include "engine/file_io.hpp"

namespace millrace::recordio {

namespace {

// The format is little-endian whatever the host: assemble words byte by byte (compilers turn this
// into one load on little-endian machines).
std::uint32_t load_le32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8U |
         static_cast<std::uint32_t>(p[2]) << 16U | static_cast<std::uint32_t>(p[3]) << 24U;
}

std::uint64_t load_le64(const std::uint8_t* p) {
  return static_cast<std::uint64_t>(load_le32(p)) | static_cast<std::uint64_t>(load_le32(p + 4))
                                                        << 32U;
}

void append_le32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v));
  out.push_back(static_cast<std::uint8_t>(v >> 8U));
  out.push_back(static_cast<std::uint8_t>(v >> 16U));
  out.push_back(static_cast<std::uint8_t>(v >> 24U));
}

void append_le64(std::vector<std::uint8_t>& out, std::uint64_t v) {
  append_le32(out, static_cast<std::uint32_t>(v));
  append_le32(out, static_cast<std::uint32_t>(v >> 32U));
}

constexpr std::uint8_t kMagicBytes[4] = {0x0A, 0x23, 0xD7, 0xCE};

bool is_magic(const std::uint8_t* p) { return std::memcmp(p, kMagicBytes, 4) == 0; }

std::string hex32(std::uint32_t v) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08X", v);
  return text;
}

std::string at_offset(std::uint64_t offset) { return "offset " + std::to_string(offset); }

std::string errno_text() { return std::error_code(errno, std::generic_category()).message(); }

// A part as laid out in a frame: its data's position and length, and its flag.
struct Part {
  std::size_t data = 0;
  std::uint32_t length = 0;
  std::uint32_t cflag = 0;
};

// Walks the parts of the record at the start of `frame`, validating as it goes, and calls
// `on_part` for each. Returns the frame bytes the record occupies.
template <class OnPart>
std::size_t walk_parts(std::span<const std::uint8_t> frame, std::uint64_t offset,
                       OnPart&& on_part) {
  // Built only when a message needs it: a valid record costs no string.
  const auto record = [offset] { return "record at " + at_offset(offset); };
  if (frame.size() < 8) {
    throw FormatError(offset, record() + ": " + std::to_string(frame.size()) +
                                  " byte(s), fewer than a part header's 8");
  }
  if (!is_magic(frame.data())) {
    throw FormatError(offset, record() + ": bad magic " + hex32(load_le32(frame.data())));
  }
  std::uint32_t lrec = load_le32(frame.data() + 4);
  if (cflag_of(lrec) >= 2) {
    throw FormatError(offset, record() + ": part with cflag " + std::to_string(cflag_of(lrec)) +
                                  " has no first part");
  }
  std::size_t p = 0;
  for (;;) {
    const Part part{p + 8, length_of(lrec), cflag_of(lrec)};
    if (part.data + part.length > frame.size()) {
      throw FormatError(offset, record() + ": part at " + at_offset(offset + p) + " claims " +
                                    std::to_string(part.length) + " bytes, past the end of the " +
                                    std::to_string(frame.size()) + " bytes available");
    }
    // The header of the next part is read before on_part runs: an in-place copy may overwrite
    // bytes before it, never it.
    p = static_cast<std::size_t>(
        std::min<std::uint64_t>(part.data + align4(part.length), frame.size()));
    const bool last = part.cflag == 0 || part.cflag == 3;
    if (!last) {
      if (p + 8 > frame.size()) {
        throw FormatError(offset, record() + " is truncated: the data ends at " +
                                      at_offset(offset + frame.size()) + " before its last part");
      }
      if (!is_magic(frame.data() + p)) {
        throw FormatError(offset, record() + ": expected its next part header at " +
                                      at_offset(offset + p) + ", found " +
                                      hex32(load_le32(frame.data() + p)));
      }
      lrec = load_le32(frame.data() + p + 4);
      if (cflag_of(lrec) < 2) {
        throw FormatError(offset, record() + " breaks off: its last part is missing and a new " +
                                      "record starts at " + at_offset(offset + p));
      }
    }
    on_part(part);
    if (last) return p;
  }
}

void write_all(int fd, const std::uint8_t* data, std::size_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(path + ": cannot write: " + errno_text());
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

std::vector<std::string> split_fields(const std::string& line, bool any_whitespace) {
  std::vector<std::string> fields;
  if (any_whitespace) {
    std::size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      if (i == line.size()) break;
      const std::size_t start = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      fields.push_back(line.substr(start, i - start));
    }
    return fields;
  }
  std::size_t start = 0;
  for (;;) {
    const std::size_t tab = line.find('\t', start);
    fields.push_back(
        line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) return fields;
    start = tab + 1;
  }
}

bool parse_u64(const std::string& text, std::uint64_t& out) {
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return !text.empty() && ec == std::errc() && p == text.data() + text.size();
}

// An integer, or a float with a zero fraction ("12.0"), parsed exactly: a double would lose ids
// above 2^53.
bool parse_index(const std::string& text, std::uint64_t& out) {
  const std::size_t dot = text.find('.');
  if (dot == std::string::npos) return parse_u64(text, out);
  const bool zero_fraction =
      dot + 1 < text.size() && text.find_first_not_of('0', dot + 1) == std::string::npos;
  return zero_fraction && parse_u64(text.substr(0, dot), out);
}

std::string read_text_file(const std::string& path, const char* what) {
  try {
    return read_regular_file(path, kMaxListFileBytes, what);
  } catch (const FileError& e) {
    throw std::runtime_error(e.what());
  }
}

bool parse_float(const std::string& text, float& out) {
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return !text.empty() && ec == std::errc() && p == text.data() + text.size();
}

}  // namespace

// ---- framing -----------------------------------------------------------------------------------

void frame_record(std::span<const std::uint8_t> payload, std::vector<std::uint8_t>& out) {
  auto emit = [&](std::uint32_t cflag, std::size_t from, std::size_t to) {
    const std::size_t length = to - from;
    if (length > kMaxPartLength) {
      throw std::length_error("RecordIO part of " + std::to_string(length) +
                              " bytes exceeds the format's limit of " +
                              std::to_string(kMaxPartLength));
    }
    append_le32(out, kMagic);
    append_le32(out, make_lrec(cflag, static_cast<std::uint32_t>(length)));
    out.insert(out.end(), payload.begin() + static_cast<std::ptrdiff_t>(from),
               payload.begin() + static_cast<std::ptrdiff_t>(to));
    out.resize(out.size() + (align4(length) - length), 0);
  };
  const std::size_t aligned_end = payload.size() / 4 * 4;
  std::size_t start = 0;
  bool split = false;
  for (std::size_t i = 0; i < aligned_end; i += 4) {
    if (is_magic(payload.data() + i)) {
      emit(split ? 2 : 1, start, i);
      split = true;
      start = i + 4;
    }
  }
  emit(split ? 3 : 0, start, payload.size());
}

FrameInfo scan_frame(std::span<const std::uint8_t> frame, std::uint64_t offset) {
  FrameInfo info;
  bool first = true;
  info.frame_bytes = walk_parts(frame, offset, [&](const Part& part) {
    info.payload_bytes += part.length + (first ? 0 : 4);
    first = false;
  });
  return info;
}

FrameInfo unframe_record(std::span<const std::uint8_t> frame, std::uint64_t offset,
                         std::vector<std::uint8_t>& payload) {
  const FrameInfo info = scan_frame(frame, offset);
  payload.resize(info.payload_bytes);
  std::size_t w = 0;
  bool first = true;
  walk_parts(frame, offset, [&](const Part& part) {
    if (!first) {
      std::memcpy(payload.data() + w, kMagicBytes, 4);
      w += 4;
    }
    first = false;
    if (part.length > 0) std::memcpy(payload.data() + w, frame.data() + part.data, part.length);
    w += part.length;
  });
  return info;
}

FrameInfo unframe_in_place(std::vector<std::uint8_t>& bytes, std::uint64_t offset) {
  const FrameInfo info = scan_frame(bytes, offset);
  // Each write lands at or before the bytes it copies and before the next part header.
  std::size_t w = 0;
  bool first = true;
  walk_parts(bytes, offset, [&](const Part& part) {
    if (!first) {
      std::memcpy(bytes.data() + w, kMagicBytes, 4);
      w += 4;
    }
    first = false;
    if (part.length > 0) std::memmove(bytes.data() + w, bytes.data() + part.data, part.length);
    w += part.length;
  });
  bytes.resize(info.payload_bytes);
  return info;
}

// ---- writing -----------------------------------------------------------------------------------

RecordWriter::RecordWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(path + ": cannot create: " + errno_text());
  buffer_.reserve(kDefaultChunkBytes + std::size_t{64} * 1024);
}

RecordWriter::~RecordWriter() {
  try {
    close();
  } catch (const std::exception&) {
    // Reported only through close(); a destructor must not throw.
  }
}

std::uint64_t RecordWriter::write(std::span<const std::uint8_t> payload) {
  if (fd_ < 0) throw std::runtime_error(path_ + ": write after close");
  const std::uint64_t offset = size_;
  const std::size_t before = buffer_.size();
  try {
    frame_record(payload, buffer_);
  } catch (...) {
    buffer_.resize(before);
    throw;
  }
  size_ += buffer_.size() - before;
  if (buffer_.size() >= kDefaultChunkBytes) flush();
  return offset;
}

void RecordWriter::flush() {
  write_all(fd_, buffer_.data(), buffer_.size(), path_);
  buffer_.clear();
}

void RecordWriter::close() {
  if (fd_ < 0) return;
  const int fd = fd_;
  try {
    flush();
  } catch (...) {
    ::close(fd);
    fd_ = -1;
    throw;
  }
  fd_ = -1;
  if (::close(fd) != 0) throw std::runtime_error(path_ + ": cannot close: " + errno_text());
}

// ---- reading -----------------------------------------------------------------------------------

RecordReader::RecordReader(const std::string& path, std::uint64_t begin, std::uint64_t end,
                           std::size_t chunk_bytes, std::uint64_t max_record_bytes)
    : path_(path), begin_(begin), end_(end), max_record_bytes_(max_record_bytes) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error(path + ": cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw std::runtime_error(path + ": not a regular file");
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
  buffer_.resize(std::max<std::size_t>(chunk_bytes, 64));
}

RecordReader::~RecordReader() {
  if (fd_ >= 0) ::close(fd_);
}

// Makes [pos, pos + need) resident, keeping the resident bytes from pos on and reading a chunk
// after them. False when the file ends before pos + need.
bool RecordReader::fill(std::uint64_t pos, std::size_t need) {
  if (pos + need > size_) return false;
  if (pos >= buffer_pos_ && pos + need <= buffer_pos_ + buffer_len_) return true;
  std::size_t keep = 0;
  if (pos >= buffer_pos_ && pos < buffer_pos_ + buffer_len_) {
    keep = static_cast<std::size_t>(buffer_pos_ + buffer_len_ - pos);
    std::memmove(buffer_.data(), buffer_.data() + (pos - buffer_pos_), keep);
  }
  if (buffer_.size() < need) buffer_.resize(need);
  buffer_pos_ = pos;
  buffer_len_ = keep;
  for (;;) {
    const auto want =
        static_cast<std::size_t>(std::min<std::uint64_t>(buffer_.size(), size_ - pos));
    if (buffer_len_ >= want) return true;
    const ssize_t n = ::pread(fd_, buffer_.data() + buffer_len_, want - buffer_len_,
                              static_cast<off_t>(pos + buffer_len_));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(path_ + ": cannot read: " + errno_text());
    if (n == 0) {
      shrank_to(pos + buffer_len_);
      if (pos + need > size_) return false;
      continue;
    }
    buffer_len_ += static_cast<std::size_t>(n);
  }
}

std::uint32_t RecordReader::word(std::uint64_t pos) const {
  return load_le32(buffer_.data() + (pos - buffer_pos_));
}

bool RecordReader::head_at(std::uint64_t pos) {
  return fill(pos, 8) && word(pos) == kMagic && cflag_of(word(pos + 4)) <= 1;
}

std::uint64_t RecordReader::find_head(std::uint64_t from) {
  std::uint64_t pos = align4(from);
  while (pos + 8 <= size_) {
    fill(pos, 8);
    const std::uint64_t resident_end = buffer_pos_ + buffer_len_;
    for (; pos + 8 <= resident_end; pos += 4) {
      if (word(pos) == kMagic && cflag_of(word(pos + 4)) <= 1) return pos;
    }
  }
  return size_;
}

// After damage the records that follow may sit at any byte offset (bytes inserted or lost shift
// the rest of the file), so the search for the next head goes byte by byte, taking the first magic
// whose next word has cflag 0 or 1 and whose part fits in the file. Shifted records past the
// range's end are still this reader's: the next range's reader starts at the first aligned head
// (find_head), where read_next() stops.
std::uint64_t RecordReader::find_resync(std::uint64_t from) {
  std::uint64_t pos = from;
  while (pos + 8 <= size_) {
    if (!fill(pos, 8)) break;
    const std::uint64_t resident_end = buffer_pos_ + buffer_len_;
    if (pos + 8 > resident_end) break;
    while (pos + 8 <= resident_end) {
      const auto* start = buffer_.data() + (pos - buffer_pos_);
      const auto* hit = static_cast<const std::uint8_t*>(
          std::memchr(start, kMagicBytes[0], static_cast<std::size_t>(resident_end - 7 - pos)));
      if (hit == nullptr) {
        pos = resident_end - 7;
        break;
      }
      pos += static_cast<std::uint64_t>(hit - start);
      const std::uint32_t lrec = word(pos + 4);
      if (word(pos) == kMagic && cflag_of(lrec) <= 1 && pos + 8 + length_of(lrec) <= size_) {
        return pos;
      }
      ++pos;
    }
  }
  return size_;
}

void RecordReader::copy_out(std::uint64_t pos, std::size_t length, std::uint8_t* dest) {
  if (length == 0) return;  // dest may be the null data() of an empty buffer
  std::size_t done = 0;
  if (pos >= buffer_pos_ && pos < buffer_pos_ + buffer_len_) {
    done =
        static_cast<std::size_t>(std::min<std::uint64_t>(length, buffer_pos_ + buffer_len_ - pos));
    std::memcpy(dest, buffer_.data() + (pos - buffer_pos_), done);
  }
  if (done == length) return;
  const std::uint64_t rest_pos = pos + done;
  const std::size_t rest = length - done;
  if (rest < buffer_.size() / 2) {
    if (!fill(rest_pos, rest)) throw Shrunk{};
    std::memcpy(dest + done, buffer_.data() + (rest_pos - buffer_pos_), rest);
    return;
  }
  // A large part goes straight into the caller's buffer, without passing through ours.
  std::size_t got = 0;
  while (got < rest) {
    const ssize_t n =
        ::pread(fd_, dest + done + got, rest - got, static_cast<off_t>(rest_pos + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(path_ + ": cannot read: " + errno_text());
    if (n == 0) {
      shrank_to(rest_pos + got);
      throw Shrunk{};
    }
    got += static_cast<std::size_t>(n);
  }
  buffer_len_ = 0;
}

ReadResult RecordReader::corrupt(std::uint64_t offset, std::uint64_t resume_from,
                                 std::string message) {
  pos_ = find_resync(std::min(resume_from, offset + 1));
  // What the damage cost, in bytes: nothing between here and the next head is delivered.
  message +=
      "; " + std::to_string(pos_ - offset) + " byte(s) skipped, from " + at_offset(offset) +
      (pos_ < size_ ? " to the next record head at " + at_offset(pos_) : " to the end of the file");
  return {ReadStatus::kCorrupt, offset, std::move(message)};
}

// A read found the end of the file at `end`, before the size it had when it was opened.
void RecordReader::shrank_to(std::uint64_t end) {
  if (opened_size_ == 0) opened_size_ = size_;
  size_ = std::min(size_, end);
}

// A file cut short while it is read (a copy still in progress, a disk that filled, a careless
// rewrite) ends where it now ends. The damage is reported once, with both sizes: on the record
// the cut falls in, or, when it falls between records, as the data missing after the last one;
// nothing after the cut is read, since nothing after it is there.
ReadResult RecordReader::next(std::vector<std::uint8_t>& payload) {
  ReadResult result;
  try {
    result = read_next(payload);
  } catch (const Shrunk&) {
    result = {ReadStatus::kCorrupt, pos_, "record at " + at_offset(pos_) + " is cut off"};
    pos_ = size_;
    buffer_len_ = 0;
  }
  if (opened_size_ == 0 || shrink_reported_) return result;
  if (result.status == ReadStatus::kRecord) return result;
  shrink_reported_ = true;
  const std::string shrank = "the file shrank from " + std::to_string(opened_size_) + " to " +
                             std::to_string(size_) + " bytes while it was read";
  if (result.status == ReadStatus::kEnd) {
    return {ReadStatus::kCorrupt, size_,
            shrank + ": the records after " + at_offset(size_) + " are gone"};
  }
  result.error += " (" + shrank + ")";
  return result;
}

ReadResult RecordReader::read_next(std::vector<std::uint8_t>& payload) {
  if (!started_) {
    started_ = true;
    pos_ = begin_ == 0 ? 0 : find_head(begin_);
  }
  if (pos_ >= size_) return {};
  if (!fill(pos_, 8)) {
    const std::uint64_t at = pos_;
    pos_ = size_;
    return {ReadStatus::kCorrupt, at,
            "truncated data at " + at_offset(at) + ": the file ends " + std::to_string(size_ - at) +
                " byte(s) later, before a part header's 8"};
  }
  if (word(pos_) != kMagic) {
    return corrupt(pos_, pos_ + 4,
                   "bad magic " + hex32(word(pos_)) + " at " + at_offset(pos_) +
                       " where a record should start");
  }
  std::uint32_t lrec = word(pos_ + 4);
  // The next range's reader starts at the first aligned head at or after the end (find_head);
  // records shifted off the alignment by damage before it are still this reader's.
  if (cflag_of(lrec) <= 1 && pos_ >= end_ && pos_ % 4 == 0) {
    pos_ = size_;
    return {};
  }
  if (cflag_of(lrec) >= 2) {
    return corrupt(pos_, pos_ + 4,
                   "part at " + at_offset(pos_) + " has cflag " + std::to_string(cflag_of(lrec)) +
                       " but no first part");
  }
  const std::uint64_t head = pos_;
  // Built only when a message needs it: a valid record costs no string.
  const auto record = [head] { return "record at " + at_offset(head); };
  payload.clear();
  std::uint64_t p = head;
  // Payload bytes of the record so far, counted on past the limit without being copied, so that a
  // record above it is skipped whole (its end found from its part headers) for the price of the
  // limit in memory at most.
  std::uint64_t total = 0;
  for (;;) {
    const std::uint32_t length = length_of(lrec);
    const std::uint32_t cflag = cflag_of(lrec);
    const std::uint64_t data = p + 8;
    if (data + length > size_) {
      return corrupt(head, head + 4,
                     record() + ": part at " + at_offset(p) + " claims " + std::to_string(length) +
                         " bytes, past the end of the file (" + std::to_string(size_) + " bytes)");
    }
    total += length + (p == head ? 0 : 4);
    if (total <= max_record_bytes_) {
      const std::size_t old = payload.size();
      payload.resize(old + length);
      copy_out(data, length, payload.data() + old);
    }
    p = data + align4(length);
    if (cflag == 0 || cflag == 3) break;
    if (!fill(p, 8)) {
      return corrupt(head, head + 4,
                     record() + " is truncated: the file ends before its last part");
    }
    if (word(p) != kMagic) {
      return corrupt(head, head + 4,
                     record() + ": expected its next part header at " + at_offset(p) + ", found " +
                         hex32(word(p)));
    }
    lrec = word(p + 4);
    if (cflag_of(lrec) <= 1) {
      return corrupt(head, head + 4,
                     record() +
                         " breaks off: its last part is missing and a new record starts at " +
                         at_offset(p));
    }
    if (total + 4 <= max_record_bytes_) {
      payload.insert(payload.end(), std::begin(kMagicBytes), std::end(kMagicBytes));
    }
  }
  pos_ = std::min(p, size_);
  if (total > max_record_bytes_) {
    payload.clear();
    return {ReadStatus::kCorrupt, head,
            record() + " holds " + std::to_string(total) + " bytes, above max_record_bytes " +
                std::to_string(max_record_bytes_) +
                " (raise recordio's max_record_bytes to read it)"};
  }
  return {ReadStatus::kRecord, head, {}};
}

// ---- the image-record payload ------------------------------------------------------------------

void build_image_payload(std::uint64_t id, std::span<const float> labels,
                         std::span<const std::uint8_t> image, std::vector<std::uint8_t>& out) {
  out.clear();
  const bool one = labels.size() == 1;
  append_le32(out, one ? 0U : static_cast<std::uint32_t>(labels.size()));
  append_le32(out, one ? std::bit_cast<std::uint32_t>(labels[0]) : 0U);
  append_le64(out, id);
  append_le64(out, 0);
  if (!one) {
    for (const float label : labels) append_le32(out, std::bit_cast<std::uint32_t>(label));
  }
  out.insert(out.end(), image.begin(), image.end());
}

std::size_t parse_image_payload(std::span<const std::uint8_t> payload, int label_width,
                                std::uint64_t record_offset, ImageHeader& header,
                                std::vector<float>& labels) {
  // Built only when a message needs it: a valid record costs no string.
  const auto record = [record_offset] { return "record at " + at_offset(record_offset); };
  if (payload.size() < kImageHeaderBytes) {
    throw FormatError(record_offset, record() + ": its " + std::to_string(payload.size()) +
                                         "-byte payload is shorter than the 24-byte image header");
  }
  const std::uint8_t* p = payload.data();
  header.flag = load_le32(p);
  header.label = std::bit_cast<float>(load_le32(p + 4));
  header.id = load_le64(p + 8);
  header.id2 = load_le64(p + 16);
  labels.clear();
  std::size_t image = kImageHeaderBytes;
  if (header.flag == 0) {
    labels.push_back(header.label);
  } else {
    const std::uint64_t label_bytes = std::uint64_t{4} * header.flag;
    if (kImageHeaderBytes + label_bytes > payload.size()) {
      throw FormatError(record_offset, record() + " (id " + std::to_string(header.id) + "): flag " +
                                           std::to_string(header.flag) + " announces " +
                                           std::to_string(label_bytes) +
                                           " bytes of labels, the payload has " +
                                           std::to_string(payload.size() - kImageHeaderBytes) +
                                           " after its header");
    }
    labels.resize(header.flag);
    for (std::uint32_t i = 0; i < header.flag; ++i) {
      labels[i] = std::bit_cast<float>(load_le32(p + kImageHeaderBytes + 4 * std::size_t{i}));
    }
    image += static_cast<std::size_t>(label_bytes);
  }
  if (label_width > 0 && labels.size() != static_cast<std::size_t>(label_width)) {
    throw FormatError(record_offset, record() + " (id " + std::to_string(header.id) + ") carries " +
                                         std::to_string(labels.size()) + " label(s) (flag " +
                                         std::to_string(header.flag) + ") but label_width is " +
                                         std::to_string(label_width));
  }
  return image;
}

// ---- .idx and .lst -----------------------------------------------------------------------------

std::vector<IndexEntry> read_index(const std::string& path, std::uint64_t rec_size) {
  const std::string text = read_text_file(path, "index");
  std::vector<std::pair<IndexEntry, int>> entries;  // with the line each came from
  for_each_line(text, [&](std::string_view view, int line_number) {
    const std::string line(view);
    const auto fields = split_fields(line, true);
    if (fields.empty()) return;
    const std::string where = path + ":" + std::to_string(line_number) + ": ";
    IndexEntry e;
    if (fields.size() != 2 || !parse_index(fields[0], e.key) || !parse_u64(fields[1], e.offset)) {
      throw std::runtime_error(where +
                               "expected 'key<TAB>offset' with non-negative integers, "
                               "found '" +
                               printable(line) + "'");
    }
    if (e.offset % 4 != 0 || e.offset >= rec_size) {
      throw std::runtime_error(where + "offset " + std::to_string(e.offset) +
                               (e.offset % 4 != 0 ? " is not a multiple of 4"
                                                  : " is past the end of the .rec (" +
                                                        std::to_string(rec_size) + " bytes)"));
    }
    entries.emplace_back(e, line_number);
  });
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.first.offset < b.first.offset; });
  std::vector<IndexEntry> out;
  out.reserve(entries.size());
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (i > 0 && entries[i].first.offset == entries[i - 1].first.offset) {
      const auto [first, second] = std::minmax(entries[i - 1].second, entries[i].second);
      throw std::runtime_error(path + ":" + std::to_string(second) + ": offset " +
                               std::to_string(entries[i].first.offset) +
                               " is listed twice (also line " + std::to_string(first) + ")");
    }
    IndexEntry e = entries[i].first;
    e.size = (i + 1 < entries.size() ? entries[i + 1].first.offset : rec_size) - e.offset;
    out.push_back(e);
  }
  return out;
}

void write_index(const std::string& path,
                 const std::vector<std::pair<std::uint64_t, std::uint64_t>>& key_offsets) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(path + ": cannot create");
  for (const auto& [key, offset] : key_offsets) out << key << '\t' << offset << '\n';
  out.close();
  if (!out) throw std::runtime_error(path + ": cannot write");
}

std::vector<ListEntry> read_list(const std::string& path) {
  const std::string text = read_text_file(path, "list");
  std::vector<ListEntry> entries;
  std::vector<std::pair<std::uint64_t, int>> id_lines;  // to find an index used twice
  std::size_t width = 0;
  int width_line = 0;
  for_each_line(text, [&](std::string_view view, int line_number) {
    if (view.empty()) return;
    const std::string line(view);
    const std::string where = path + ":" + std::to_string(line_number) + ": ";
    const auto fields = split_fields(line, false);
    if (fields.size() < 3) {
      throw std::runtime_error(where +
                               "expected index, label(s) and a path separated by tabs, "
                               "found " +
                               std::to_string(fields.size()) + " field(s)");
    }
    if (width == 0) {
      width = fields.size() - 2;
      width_line = line_number;
    } else if (fields.size() - 2 != width) {
      throw std::runtime_error(where + std::to_string(fields.size() - 2) + " label(s), line " +
                               std::to_string(width_line) + " has " + std::to_string(width));
    }
    ListEntry e;
    if (!parse_index(fields.front(), e.index)) {
      throw std::runtime_error(where + "index '" + printable(fields.front()) +
                               "' is not a non-negative integer");
    }
    e.labels.resize(width);
    for (std::size_t k = 0; k < width; ++k) {
      if (!parse_float(fields[k + 1], e.labels[k])) {
        throw std::runtime_error(where + "label '" + printable(fields[k + 1]) +
                                 "' is not a number");
      }
      if (!std::isfinite(e.labels[k])) {
        throw std::runtime_error(where + "label '" + printable(fields[k + 1]) +
                                 "' is not a finite number");
      }
    }
    e.path = fields.back();
    if (e.path.empty()) throw std::runtime_error(where + "empty path");
    // The system would open the path up to the NUL: another file than the line names.
    if (e.path.find('\0') != std::string::npos) {
      throw std::runtime_error(where + "path '" + printable(e.path) + "' holds a NUL byte");
    }
    id_lines.emplace_back(e.index, line_number);
    entries.push_back(std::move(e));
  });
  // One index is one record key and one sample id: a second line with it would shadow the first.
  std::sort(id_lines.begin(), id_lines.end());
  for (std::size_t i = 1; i < id_lines.size(); ++i) {
    if (id_lines[i].first == id_lines[i - 1].first) {
      throw std::runtime_error(path + ":" + std::to_string(id_lines[i].second) + ": index " +
                               std::to_string(id_lines[i].first) + " is used twice (also line " +
                               std::to_string(id_lines[i - 1].second) + ")");
    }
  }
  return entries;
}

}  // namespace millrace::recordio
