// Rounding shared by the kernels (augment's crop sizes, normalize's quantization).
//
// Contract: pure functions, callable from any thread.
#pragma once

#include <cmath>

namespace millrace {

// Ties to even (Python's round(), NumPy's rint in the default mode), written out so that the
// result does not depend on the floating-point environment's rounding mode, which a host
// application could have changed.
inline double round_half_to_even(double x) {
  const double lower = std::floor(x);
  const double diff = x - lower;
  if (diff > 0.5) return lower + 1.0;
  if (diff < 0.5) return lower;
  return std::fmod(lower, 2.0) == 0.0 ? lower : lower + 1.0;
}

}  // namespace millrace
