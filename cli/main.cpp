// The millrace command line: a thin shell over the library (see cli/commands.cpp).
#include <unistd.h>

#include <cstdlib>

#include "cli/commands.hpp"

int main(int argc, char** argv) {
  // oneDNN runs on OpenMP here, and libgomp reads its wait policy once, when it is loaded, before
  // main(). Its default spins for hundreds of thousands of iterations after every parallel
  // region, stealing the cores that TBB's workers need; fully passive (every wait a futex sleep)
  // makes each region's start a wake-up system call, which kernels with many short regions (the
  // int8 Winograd convolution runs hundreds per call) pay for dearly. So the first time through,
  // bound the spin to 1000 pause iterations (about 25 microseconds on the reference machine)
  // and start again (once: the variable is then set). A policy the user set is left alone.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr &&  // NOLINT(concurrency-mt-unsafe): one thread
      std::getenv("GOMP_SPINCOUNT") == nullptr) {   // NOLINT(concurrency-mt-unsafe)
    setenv("GOMP_SPINCOUNT", "1000", 1);            // NOLINT(concurrency-mt-unsafe)
    execv("/proc/self/exe", argv);
    // If re-executing is impossible, run with the default policy.
  }
  return millrace::cli::main(argc, argv);
}
