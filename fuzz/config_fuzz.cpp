// A pipeline configuration: YAML text through the one yaml-cpp wrapper, then the whole schema
// (pipeline section, every built-in stage's parameters and cross-checks). Bad input must come
// back as diagnostics: nothing here may throw.
#include <string_view>

#include "engine/config.hpp"
#include "fuzz/fuzz_targets.hpp"

namespace millrace::fuzz {

int config(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Diagnostics diagnostics;
  ConfigNode root = load_config_document(text, "fuzz.yaml", diagnostics);
  if (!diagnostics.has_errors()) {
    (void)parse_pipeline(std::move(root), {}, Registry::builtin(), diagnostics);
  }
  for (const Diagnostic& d : diagnostics.all()) {
    if (d.message.empty()) __builtin_trap();
  }
  return 0;
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(config)
