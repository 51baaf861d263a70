// A parsed configuration document: a small tree with 1-based source locations on every node.
//
// Contract: built once from YAML text by load_config_document() (the only place that sees
// yaml-cpp), then read-only; safe to share between threads. Duplicate mapping keys are kept in
// order so that validation can name both lines (yaml-cpp itself accepts them silently).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "millrace/errors.hpp"

namespace millrace {

struct Location {
  std::string file;
  int line = 0;
  int column = 0;
  // The node was read from the config file `file`: a relative path written in it is relative to
  // that file's folder. Otherwise (YAML text, a Python dict, a `--set` override) `file` only names
  // the source in messages and a relative path is relative to the current directory.
  bool in_file = false;
};

// Where a file or folder path written at `where` lies: `value` itself when it is absolute or was
// not written in a config file, else `value` joined to the config file's folder (kept as a path
// the user can open from the current directory; `..` is not folded, so symbolic links stay right).
std::string resolve_config_path(const Location& where, const std::string& value);

class ConfigNode {
 public:
  enum class Kind { kNull, kScalar, kSequence, kMap };

  // Declared here, defined where the class is complete: `entries` holds pairs of ConfigNode, and
  // clang with libstdc++ rejects the implicit members, which it instantiates while the class is
  // still incomplete.
  ConfigNode();
  ConfigNode(const ConfigNode&);
  ConfigNode(ConfigNode&&) noexcept;
  ConfigNode& operator=(const ConfigNode&);
  ConfigNode& operator=(ConfigNode&&) noexcept;
  ~ConfigNode();

  Kind kind = Kind::kNull;
  Location where;
  std::string scalar;             // for kScalar (and the text of a null: "~", "null" or "")
  bool quoted = false;            // a quoted scalar is always a string
  std::vector<ConfigNode> items;  // kSequence
  std::vector<std::pair<ConfigNode, ConfigNode>> entries;  // kMap: key node, value node

  bool is_null() const { return kind == Kind::kNull; }
  bool is_scalar() const { return kind == Kind::kScalar; }
  bool is_sequence() const { return kind == Kind::kSequence; }
  bool is_map() const { return kind == Kind::kMap; }
  // First entry with this key, or nullptr.
  const ConfigNode* find(std::string_view key) const;
  ConfigNode* find(std::string_view key);
  std::string_view kind_name() const;  // "a number", "a list", ... for messages
};

// Collects diagnostics; stages and the loader append, the caller throws once at the end.
class Diagnostics {
 public:
  void error(const Location& where, std::string message);
  void warning(const Location& where, std::string message);
  bool has_errors() const;
  std::size_t error_count() const;
  const std::vector<Diagnostic>& all() const { return items_; }
  std::vector<Diagnostic> warnings() const;
  void throw_if_errors() const;  // throws ConfigError with every diagnostic

 private:
  std::vector<Diagnostic> items_;
};

// Limits on a config document, aliases expanded (each use of an alias counts as a copy): far
// above any real pipeline, far below what would cost real memory. yaml-cpp itself refuses nesting
// deeper than kMaxConfigDepth.
inline constexpr std::size_t kMaxConfigNodes = 100'000;
inline constexpr std::size_t kMaxConfigScalarBytes = 16U << 20U;
inline constexpr int kMaxConfigDepth = 500;
// A config file larger than this is refused before it is parsed.
inline constexpr std::uint64_t kMaxConfigFileBytes = 16U << 20U;

// Where a document's text came from: a config file (relative paths in it resolve against its
// folder) or text with no folder of its own (relative paths resolve against the current directory).
enum class ConfigOrigin { kText, kFile };

// Parses YAML text: one document. Syntax errors, a second document and a document above the
// limits become diagnostics (the document is then null).
ConfigNode load_config_document(std::string_view text, const std::string& file, Diagnostics& out,
                                ConfigOrigin origin = ConfigOrigin::kText);

// Parses a YAML value written inline (an override's right-hand side, a builder's value).
ConfigNode parse_inline_value(std::string_view text, const Location& where, Diagnostics& out);

std::string nearest(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace millrace
