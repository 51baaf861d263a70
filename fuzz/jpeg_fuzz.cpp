// JPEG decoding: the header read, the whole-image decode (strict and lenient, both IDCTs) and the
// reduced decode of a window at a reduced DCT scale (libjpeg's crop and skip), on any bytes.
#include "fuzz/fuzz_targets.hpp"

namespace millrace::fuzz {

int jpeg(const std::uint8_t* data, std::size_t size) { return decode_three_ways(data, size); }

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(jpeg)
