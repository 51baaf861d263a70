// The millrace command line: a thin shell over the library (see cli/commands.cpp).
#include <unistd.h>

#include <cstdlib>

#include "cli/commands.hpp"

int main(int argc, char** argv) {
  // oneDNN runs on OpenMP here, and libgomp reads its wait policy once, when it is loaded, before
  // main(). Its default spins after every parallel region, stealing the cores that TBB's workers
  // need; the infer stage's threads must sleep instead. So the first time through, set the
  // passive policy and start again (once: the variable is then set).
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {  // NOLINT(concurrency-mt-unsafe): one thread
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);        // NOLINT(concurrency-mt-unsafe)
    execv("/proc/self/exe", argv);
    // If re-executing is impossible, run with the default policy.
  }
  return millrace::cli::main(argc, argv);
}
