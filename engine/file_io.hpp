// Reading and writing the files a user names (a config, a calibration table, a list, a trace, a
// summary), so that no path can hang a run or cost more than a limit.
//
// Contract: plain functions, safe to call from any thread on different paths. Reads open without
// blocking (a FIFO never waits for a writer) and take only a regular file no larger than the
// limit the caller gives (`/dev/zero`, a folder, a FIFO or a device is refused by what it is,
// before any byte is read). Writes go to a hidden temporary file beside the target, renamed into
// place when whole: the target is whole or as it was, never cut off by a full disk or a signal.
// Every error is a FileError whose message names the path, what it was for and the reason.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace millrace {

class FileError : public std::runtime_error {
 public:
  // what(): "PATH: DETAIL", DETAIL being e.g. "cannot read the config file: a FIFO, not a regular
  // file", for callers that name the path in a place of their own (a config diagnostic).
  FileError(const std::string& path, std::string detail)
      : std::runtime_error(path + ": " + detail), path_(path), detail_(std::move(detail)) {}
  const std::string& path() const { return path_; }
  const std::string& detail() const { return detail_; }

 private:
  std::string path_;
  std::string detail_;
};

// "a folder", "a FIFO", "a device", ... for a mode that is not a regular file's.
const char* file_kind_name(unsigned mode);

// The whole of a regular file. `what` names the file's role in messages ("config file").
// Throws FileError: "PATH: cannot read the WHAT: a FIFO, not a regular file", "...: N bytes, above
// the limit of M bytes", "...: No such file or directory".
std::string read_regular_file(const std::string& path, std::uint64_t max_bytes,
                              std::string_view what);

// Empty when `path` can be written by write_file_atomically (absent with a folder that exists or
// can be made, or a regular file); otherwise the reason, to report before any work is done.
std::string output_file_problem(const std::string& path);

// Writes `text` to `path` through a hidden temporary file renamed into place, making the folder
// when missing. Throws FileError naming the path and the system's reason ("No space left on
// device"); the temporary file is removed on failure.
void write_file_atomically(const std::string& path, std::string_view text,
                           std::string_view what = "file");

// Text from a file as a message shows it: bytes outside printable ASCII escaped (\xNN), cut at
// `max_chars`, so that binary data or a terminal escape sequence never reaches a terminal raw.
std::string printable(std::string_view text, std::size_t max_chars = 64);
// Text for a terminal: control bytes (below 0x20, 0x7F) escaped as \xNN, everything else (UTF-8
// included) as it is. For paths and messages that carry bytes of a data set (a file name, a
// decoder's message) into the summary.
std::string without_controls(std::string_view text);

// The lines of a text file, for list and index formats written by many tools: a UTF-8 byte-order
// mark at the start is dropped, and a line ends at LF, CRLF or a lone CR (old Mac tools). Calls
// `line(text, number)` with 1-based line numbers, empty lines included.
template <class Fn>
void for_each_line(std::string_view text, Fn&& line) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  int number = 0;
  while (!text.empty()) {
    const std::size_t end = text.find_first_of("\r\n");
    ++number;
    line(text.substr(0, end), number);
    if (end == std::string_view::npos) break;
    const bool crlf = text[end] == '\r' && end + 1 < text.size() && text[end + 1] == '\n';
    text.remove_prefix(end + (crlf ? 2 : 1));
  }
}

// Lists and indexes are read whole: far above ImageNet's 1.28 million lines (about 50 MB).
inline constexpr std::uint64_t kMaxListFileBytes = std::uint64_t{4} << 30U;

}  // namespace millrace
