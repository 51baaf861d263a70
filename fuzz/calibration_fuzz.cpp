// A calibration table (JSON) read back for a quantized network.
#include <string_view>

#include "fuzz/fuzz_targets.hpp"
#include "stages/infer/calibration.hpp"

namespace millrace::fuzz {

int calibration(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const infer::CalibrationTable table = infer::calibration_from_json(text, "fuzz.json");
    // What was read writes back and reads again to the same table.
    const infer::CalibrationTable again =
        infer::calibration_from_json(infer::calibration_to_json(table), "again.json");
    if (again.values.size() != table.values.size()) __builtin_trap();
  } catch (const infer::CalibrationError&) {
  }
  return 0;
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(calibration)
