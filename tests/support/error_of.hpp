// What a call threw, as text: the tests compare error messages whole or by part, and a call that
// did not throw gives "". Test code only; not installed.
#pragma once

#include <exception>
#include <functional>
#include <string>

namespace millrace::testing {

// The message of the std::exception `f` threw, or "" when it returned.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace millrace::testing
