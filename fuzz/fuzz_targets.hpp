// The fuzz targets: one entry point per parser of outside bytes.
//
// Contract: each function takes any bytes, runs them through the same entry points a run uses, and
// returns 0. It catches only the error types its parser documents for bad input; anything else
// escaping (a logic_error, bad_alloc, an unknown exception) is a defect, as are crashes and
// sanitizer reports. Each keeps no state between calls except per-process scratch files, so calls
// on one thread may follow each other in any order; calls are not meant to run concurrently.
//
// Built two ways from the same sources (fuzz/CMakeLists.txt): with -DMILLRACE_FUZZ=ON under clang,
// each <name>_fuzz.cpp becomes a libFuzzer binary (MILLRACE_LIBFUZZER defines
// LLVMFuzzerTestOneInput); in the normal build, all of them link into fuzz_regression_test, which
// replays every file kept under tests/data/fuzz/<name>/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace millrace::fuzz {

int jpeg(const std::uint8_t* data, std::size_t size);
int image(const std::uint8_t* data, std::size_t size);
int recordio(const std::uint8_t* data, std::size_t size);
int idx(const std::uint8_t* data, std::size_t size);
int lst(const std::uint8_t* data, std::size_t size);
int config(const std::uint8_t* data, std::size_t size);
int onnx(const std::uint8_t* data, std::size_t size);
int calibration(const std::uint8_t* data, std::size_t size);

// A file of this process's own in a scratch folder, holding `size` bytes: for the parsers that
// read a path rather than memory. `name` keeps each parser's file apart (the .lst parser reads a
// name ending in .lst, ...). Throws std::runtime_error when it cannot be written.
std::string scratch_file(const std::string& name, const std::uint8_t* data, std::size_t size);

// The image decoder on `data`: peek, a strict whole-image decode, and a lenient decode with the
// fast IDCT through a window chosen from the input's last bytes (the reduced path for JPEGs).
// Images above 2^24 pixels are refused by max_pixels. Traps when a decode's output size is not
// the size it reports, or when a second decode into a buffer holding other bytes differs.
int decode_three_ways(const std::uint8_t* data, std::size_t size);

}  // namespace millrace::fuzz

#ifdef MILLRACE_LIBFUZZER
#define MILLRACE_FUZZ_ENTRY(function)                                                 \
  extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) { \
    return millrace::fuzz::function(data, size);                                      \
  }
#else
#define MILLRACE_FUZZ_ENTRY(function)
#endif
