// Errors that millrace reports to its users.
//
// Contract: ConfigError carries every problem found in a configuration, each with a location, so
// a user fixes them all in one pass; it is thrown before any thread starts. RunError is a failed
// run: it names the stage, the stage's place in the config and, when one was being processed, the
// sample. Both are ordinary exceptions, safe to copy and to rethrow on another thread.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace millrace {

// One problem in a configuration, formatted like a compiler's: `file:line:col: error: message`.
struct Diagnostic {
  std::string file;
  int line = 0;    // 1-based; 0 when the problem has no place in a file
  int column = 0;  // 1-based
  std::string message;
  bool warning = false;

  std::string to_string() const;
};

class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(std::vector<Diagnostic> diagnostics);
  const std::vector<Diagnostic>& diagnostics() const { return diagnostics_; }

 private:
  std::vector<Diagnostic> diagnostics_;
};

class RunError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace millrace
