// Running a shell command from a test, the command line's own binary among them, and reading back
// what it printed and how it exited: the one such runner of the tests. Test code only; not
// installed.
//
// Contract: run() blocks until the command exits and captures its whole stdout (a command whose
// stderr matters says `2>&1`).
#pragma once

#include <stdio.h>
#include <sys/wait.h>

#include <cstddef>
#include <cstdio>
#include <string>

namespace millrace::testing {

struct Command {
  int status = -1;  // exit code, or -1 when it did not exit normally (or did not start)
  std::string out;
};

// Runs `command` through /bin/sh, capturing its stdout.
inline Command run(const std::string& command) {
  Command c;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return c;
  char buffer[4096];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) c.out.append(buffer, n);
  const int status = ::pclose(pipe);
  c.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return c;
}

// `s` as one shell word (the tests' paths hold no single quote).
inline std::string quoted(const std::string& s) { return "'" + s + "'"; }

// The millrace command line of this build tree (built before the tests that run it).
inline std::string millrace_binary() { return std::string(MILLRACE_BINARY_DIR) + "/millrace"; }

}  // namespace millrace::testing
