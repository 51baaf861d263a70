// Helpers shared by the RecordIO tests: temporary folders, whole-file I/O, the real fixtures'
// location and synthetic record contents. Test code only.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/support/temp_dir.hpp"

namespace millrace::recordio::testing {

namespace fs = std::filesystem;

// The conformance files written by MXNet's tools (tests/data/recordio/README.md).
inline std::string fixture(const std::string& name) {
  return std::string(MILLRACE_SOURCE_DIR) + "/tests/data/recordio/" + name;
}

using millrace::testing::TempDir;

using Bytes = std::vector<std::uint8_t>;

inline Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const Bytes& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error(path + ": cannot write");
}

inline void write_text(const std::string& path, const std::string& text) {
  write_bytes(path, Bytes(text.begin(), text.end()));
}

inline Bytes text_bytes(const std::string& text) { return Bytes(text.begin(), text.end()); }

// The magic as it lies in a file (little-endian 0xCED7230A).
inline const Bytes kMagicLe = {0x0A, 0x23, 0xD7, 0xCE};

inline void put_le32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i)
    b[at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(v >> (8 * i));
}

inline std::uint32_t get_le32(const Bytes& b, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8U) | b[at + static_cast<std::size_t>(i)];
  return v;
}

// Deterministic pseudo-random bytes (a linear congruential generator: the tests need variety,
// not quality) in which the magic appears at the given offsets.
inline Bytes pattern_bytes(std::size_t size, std::uint32_t seed,
                           const std::vector<std::size_t>& magic_at = {}) {
  Bytes b(size);
  std::uint32_t x = seed * 2654435761U + 1U;
  for (auto& v : b) {
    x = x * 1664525U + 1013904223U;
    v = static_cast<std::uint8_t>(x >> 24U);
  }
  for (const std::size_t at : magic_at) std::memcpy(b.data() + at, kMagicLe.data(), 4);
  return b;
}

}  // namespace millrace::recordio::testing
