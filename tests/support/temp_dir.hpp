// A fresh folder under the system temp folder, removed with everything in it at scope exit: the
// one scratch-folder helper of the tests and benchmarks (a function-local static one lives until
// the process exits). Test and benchmark code only; not installed.
//
// Contract: the constructor creates the folder (mkdtemp, so concurrent processes never share
// one) or throws std::runtime_error; the destructor never throws. One owner; not copyable.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace millrace::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "millrace_test") {
    std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "_XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  std::filesystem::path operator/(const std::string& relative) const { return path_ / relative; }
  std::string file(const std::string& relative) const { return (path_ / relative).string(); }

  // Writes `content` (text or bytes) to `relative`, creating parent folders.
  std::filesystem::path write(const std::string& relative, const std::string& content) const {
    const std::filesystem::path file = path_ / relative;
    std::filesystem::create_directories(file.parent_path());
    std::ofstream out(file, std::ios::binary);
    out << content;
    return file;
  }
  std::filesystem::path write(const std::string& relative,
                              const std::vector<std::uint8_t>& content) const {
    return write(relative, std::string(content.begin(), content.end()));
  }

 private:
  std::filesystem::path path_;
};

}  // namespace millrace::testing
