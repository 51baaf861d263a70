#include "engine/file_io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <system_error>

namespace millrace {

namespace fs = std::filesystem;

namespace {

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

}  // namespace

const char* file_kind_name(unsigned mode) {
  const auto m = static_cast<mode_t>(mode);
  if (S_ISREG(m)) return "a regular file";
  if (S_ISDIR(m)) return "a folder";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "a file of another kind";
}

std::string read_regular_file(const std::string& path, std::uint64_t max_bytes,
                              std::string_view what) {
  const std::string head = "cannot read the " + std::string(what) + ": ";
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) throw FileError(path, head + errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw FileError(path, head + errno_text(errno));
  if (!S_ISREG(st.st_mode)) {
    throw FileError(path, head + file_kind_name(st.st_mode) + ", not a regular file");
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > max_bytes) {
    throw FileError(path, head + std::to_string(size) + " bytes, above the limit of " +
                              std::to_string(max_bytes) + " bytes");
  }
  // One byte more than the size found, to see a file that grows while it is read.
  std::string text(static_cast<std::size_t>(size) + 1, '\0');
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw FileError(path, head + errno_text(errno));
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  if (done > size) throw FileError(path, head + "the file grew while it was read");
  text.resize(done);
  return text;
}

std::string output_file_problem(const std::string& path) {
  if (path.empty()) return "an empty path";
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISREG(st.st_mode)) {
      if (::access(path.c_str(), W_OK) != 0) return errno_text(errno);
      return {};
    }
    return std::string(file_kind_name(st.st_mode)) + " is in the way, not a regular file";
  }
  if (errno != ENOENT && errno != ENOTDIR) return errno_text(errno);
  // The nearest folder that exists must be a folder we may write in.
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) parent = ".";
  while (true) {
    if (::stat(parent.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        return "'" + parent.string() + "' is " + file_kind_name(st.st_mode) + ", not a folder";
      }
      if (::access(parent.c_str(), W_OK | X_OK) != 0) {
        return "cannot write in '" + parent.string() + "': " + errno_text(errno);
      }
      return {};
    }
    if ((errno != ENOENT && errno != ENOTDIR) || !parent.has_parent_path() ||
        parent.parent_path() == parent) {
      return "cannot reach '" + parent.string() + "': " + errno_text(errno);
    }
    parent = parent.parent_path();
  }
}

void write_file_atomically(const std::string& path, std::string_view text, std::string_view what) {
  const std::string head = "cannot write the " + std::string(what) + ": ";
  const std::string problem = output_file_problem(path);
  if (!problem.empty()) throw FileError(path, head + problem);
  const fs::path target(path);
  if (target.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    if (ec) throw FileError(path, head + ec.message());
  }
  const fs::path temp = target.parent_path() / ("." + target.filename().string() + "." +
                                                std::to_string(::getpid()) + ".tmp");
  Fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666));
  if (fd.get() < 0) throw FileError(path, head + errno_text(errno));
  auto fail = [&](int error) {
    ::close(fd.release());
    ::unlink(temp.c_str());
    throw FileError(path, head + errno_text(error));
  };
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(n < 0 ? errno : ENOSPC);
    done += static_cast<std::size_t>(n);
  }
  if (::close(fd.release()) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    throw FileError(path, head + errno_text(error));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    throw FileError(path,
                    head + "cannot rename its temporary file into place: " + errno_text(error));
  }
}

std::string printable(std::string_view text, std::size_t max_chars) {
  std::string out;
  for (const char c : text.substr(0, max_chars)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F && c != '\\') {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02X", u);
      out += hex;
    }
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

std::string without_controls(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7F) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02X", u);
      out += hex;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace millrace
