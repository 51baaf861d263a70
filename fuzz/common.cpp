// What several targets share: scratch files for the parsers that read a path, and the image
// decoder driven three ways (see fuzz_targets.hpp).
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "fuzz/fuzz_targets.hpp"
#include "stages/decode/decode_kernel.hpp"

namespace millrace::fuzz {

namespace {

// One folder per process, removed when the process exits normally (a crash leaves it behind, next
// to the crasher it belongs to).
class ScratchFolder {
 public:
  ScratchFolder() {
    std::error_code ec;
    path_ = std::filesystem::temp_directory_path(ec);
    if (ec) path_ = "/tmp";
    path_ /= "millrace-fuzz-" + std::to_string(::getpid());
    std::filesystem::create_directories(path_, ec);
    if (ec) throw std::runtime_error("cannot create " + path_.string() + ": " + ec.message());
  }
  ~ScratchFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchFolder(const ScratchFolder&) = delete;
  ScratchFolder& operator=(const ScratchFolder&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace

std::string scratch_file(const std::string& name, const std::uint8_t* data, std::size_t size) {
  static const ScratchFolder folder;
  const std::filesystem::path path = folder.path() / name;
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error("cannot write " + path.string());
  const bool ok = size == 0 || std::fwrite(data, 1, size, f) == size;
  if (std::fclose(f) != 0 || !ok) throw std::runtime_error("cannot write " + path.string());
  return path.string();
}

namespace {

// Picks a window from the image's size and a few bytes of the input, as an augment stage picks a
// random crop: any window inside the image, any output size up to 256.
class BytesWindowChooser final : public decode::WindowChooser {
 public:
  BytesWindowChooser(const std::uint8_t* data, std::size_t size) {
    for (std::size_t i = 0; i < size && i < 64; ++i) seed_ = seed_ * 131 + data[size - 1 - i];
  }
  std::optional<WindowRequest> choose(int width, int height) const noexcept override {
    if (width <= 0 || height <= 0) return std::nullopt;
    std::uint64_t s = seed_;
    const auto take = [&s](std::uint64_t n) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      return n == 0 ? 0 : (s >> 33) % n;
    };
    WindowRequest r;
    r.x = static_cast<double>(take(static_cast<std::uint64_t>(width)));
    r.y = static_cast<double>(take(static_cast<std::uint64_t>(height)));
    r.width = 1 + static_cast<double>(take(static_cast<std::uint64_t>(width - r.x)));
    r.height = 1 + static_cast<double>(take(static_cast<std::uint64_t>(height - r.y)));
    r.out_width = 1 + static_cast<int>(take(256));
    r.out_height = 1 + static_cast<int>(take(256));
    r.allow_scale = take(4) != 0;
    return r;
  }

 private:
  std::uint64_t seed_ = 0;
};

}  // namespace

// Below the default limit, so that one input costs at most about 50 MB of pixels and a
// decompression bomb under the limit does not exhaust the fuzzer's memory; the limit's own check
// is the same at any value.
constexpr std::int64_t kFuzzMaxPixels = std::int64_t{1} << 24;

int decode_three_ways(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> out;
  try {
    (void)decode::peek(data, size);
  } catch (const decode::DecodeError&) {
  }
  decode::Options strict;
  strict.max_pixels = kFuzzMaxPixels;
  try {
    const decode::Info info = decode::decode(data, size, strict, out);
    if (out.size() != static_cast<std::size_t>(info.width) * info.height * 3) __builtin_trap();
    // The pixels must not depend on what the buffer held before: decode again into a buffer of
    // the same size holding other bytes, as a recycled buffer would.
    std::vector<std::uint8_t> again(out.size());
    for (std::size_t i = 0; i < again.size(); ++i) again[i] = static_cast<std::uint8_t>(~out[i]);
    (void)decode::decode(data, size, strict, again);
    if (again != out) __builtin_trap();
  } catch (const decode::DecodeError&) {
  }
  decode::Options lenient = strict;
  lenient.strict = false;
  lenient.fast_dct = true;
  const BytesWindowChooser chooser(data, size);
  try {
    const decode::Info info = decode::decode(data, size, lenient, out, &chooser);
    if (out.size() != static_cast<std::size_t>(info.width) * info.height * 3) __builtin_trap();
  } catch (const decode::DecodeError&) {
  }
  return 0;
}

}  // namespace millrace::fuzz
