// ONNX model import: protobuf parsing, then every check and lowering of the importer (shapes,
// attributes, initializers, folding), on any bytes. External data names resolve in a folder of
// the scratch space that holds only the model itself.
#include <string_view>

#include "fuzz/fuzz_targets.hpp"
#include "stages/infer/onnx_import.hpp"

namespace millrace::fuzz {

// A model the importer accepts may still be large (a few MB of weights is ordinary); this bounds
// what one input can make it hold.
constexpr std::uint64_t kFuzzMaxModelBytes = std::uint64_t{64} << 20;

int onnx(const std::uint8_t* data, std::size_t size) {
  static const std::string path = scratch_file("onnx/model.onnx", nullptr, 0);
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    (void)infer::import_onnx_bytes(bytes, path, kFuzzMaxModelBytes);
  } catch (const infer::ModelError&) {
  }
  return 0;
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(onnx)
