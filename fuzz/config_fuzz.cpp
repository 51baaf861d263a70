// A pipeline configuration: YAML text through the one yaml-cpp wrapper, then the whole schema
// (pipeline section, every built-in stage's parameters and cross-checks). Bad input must come
// back as diagnostics: nothing here may throw. Anchors and aliases: the document, each alias
// expanded where it is used, stays within the loader's limits (kMaxConfigNodes nodes,
// kMaxConfigDepth levels), however the aliases nest; the same text is also tried as the value of
// an anchor used several times over, so that every input is fuzzed through aliases too.
#include <string>
#include <string_view>
#include <vector>

#include "engine/config.hpp"
#include "engine/config_node.hpp"
#include "fuzz/fuzz_targets.hpp"

namespace millrace::fuzz {

namespace {

std::size_t count_nodes(const ConfigNode& root) {
  std::size_t n = 0;
  std::vector<std::pair<const ConfigNode*, int>> stack{{&root, 1}};
  while (!stack.empty()) {
    const auto [node, depth] = stack.back();
    stack.pop_back();
    if (depth > kMaxConfigDepth) __builtin_trap();
    ++n;
    for (const auto& item : node->items) stack.emplace_back(&item, depth + 1);
    for (const auto& [k, v] : node->entries) {
      stack.emplace_back(&k, depth + 1);
      stack.emplace_back(&v, depth + 1);
    }
  }
  return n;
}

void check(std::string_view text) {
  Diagnostics diagnostics;
  ConfigNode root = load_config_document(text, "fuzz.yaml", diagnostics);
  if (count_nodes(root) > kMaxConfigNodes) __builtin_trap();
  if (!diagnostics.has_errors()) {
    (void)parse_pipeline(std::move(root), {}, Registry::builtin(), diagnostics);
  }
  for (const Diagnostic& d : diagnostics.all()) {
    if (d.message.empty()) __builtin_trap();
  }
}

}  // namespace

int config(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check(text);
  // The input as a flow value behind an anchor, used ten times at two levels of aliases.
  if (text.find_first_of("\n\r") == std::string_view::npos) {
    std::string nested =
        "a: &a " + std::string(text) + "\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n";
    nested += "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n";
    check(nested);
  }
  return 0;
}

}  // namespace millrace::fuzz

MILLRACE_FUZZ_ENTRY(config)
