// What the configuration tests share: running from a chosen folder (relative paths in a config
// resolve against the current directory or the file's folder, and the tests tell them apart) and
// diagnostics as the lines the command line prints. Test code only; not installed.
//
// Contract: an InFolder changes the process's current directory until it goes out of scope, so
// no other thread of the test may depend on the current directory meanwhile. One owner; not
// copyable.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "millrace/errors.hpp"

namespace millrace::testing {

class InFolder {
 public:
  explicit InFolder(const std::filesystem::path& dir) : previous_(std::filesystem::current_path()) {
    std::filesystem::current_path(dir);
  }
  ~InFolder() { std::filesystem::current_path(previous_); }
  InFolder(const InFolder&) = delete;
  InFolder& operator=(const InFolder&) = delete;

 private:
  std::filesystem::path previous_;
};

// Each diagnostic as `file:line:col: error: message`.
inline std::vector<std::string> diagnostic_lines(const std::vector<Diagnostic>& diagnostics) {
  std::vector<std::string> out;
  for (const auto& d : diagnostics) out.push_back(d.to_string());
  return out;
}

}  // namespace millrace::testing
