#include "engine/config_node.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <sstream>

namespace millrace {

ConfigNode::ConfigNode() = default;
ConfigNode::ConfigNode(const ConfigNode&) = default;
ConfigNode::ConfigNode(ConfigNode&&) noexcept = default;
ConfigNode& ConfigNode::operator=(const ConfigNode&) = default;
ConfigNode& ConfigNode::operator=(ConfigNode&&) noexcept = default;
ConfigNode::~ConfigNode() = default;

std::string Diagnostic::to_string() const {
  std::ostringstream out;
  if (!file.empty()) {
    out << file << ':';
    if (line > 0) out << line << ':' << column << ':';
    out << ' ';
  }
  out << (warning ? "warning: " : "error: ") << message;
  return out.str();
}

namespace {
std::string join_diagnostics(const std::vector<Diagnostic>& diagnostics) {
  std::string text;
  for (const auto& d : diagnostics) {
    if (!text.empty()) text += '\n';
    text += d.to_string();
  }
  return text;
}
}  // namespace

ConfigError::ConfigError(std::vector<Diagnostic> diagnostics)
    : std::runtime_error(join_diagnostics(diagnostics)), diagnostics_(std::move(diagnostics)) {}

const ConfigNode* ConfigNode::find(std::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k.scalar == key) return &v;
  }
  return nullptr;
}

ConfigNode* ConfigNode::find(std::string_view key) {
  for (auto& [k, v] : entries) {
    if (k.scalar == key) return &v;
  }
  return nullptr;
}

std::string_view ConfigNode::kind_name() const {
  switch (kind) {
    case Kind::kNull:
      return "nothing";
    case Kind::kScalar:
      return quoted ? "a string" : "a scalar";
    case Kind::kSequence:
      return "a list";
    case Kind::kMap:
      return "a mapping";
  }
  return "?";
}

void Diagnostics::error(const Location& where, std::string message) {
  items_.push_back({where.file, where.line, where.column, std::move(message), false});
}

void Diagnostics::warning(const Location& where, std::string message) {
  items_.push_back({where.file, where.line, where.column, std::move(message), true});
}

bool Diagnostics::has_errors() const {
  return std::any_of(items_.begin(), items_.end(), [](const Diagnostic& d) { return !d.warning; });
}

std::size_t Diagnostics::error_count() const {
  return static_cast<std::size_t>(
      std::count_if(items_.begin(), items_.end(), [](const Diagnostic& d) { return !d.warning; }));
}

std::vector<Diagnostic> Diagnostics::warnings() const {
  std::vector<Diagnostic> out;
  for (const auto& d : items_) {
    if (d.warning) out.push_back(d);
  }
  return out;
}

void Diagnostics::throw_if_errors() const {
  if (!has_errors()) return;
  std::vector<Diagnostic> errors = items_;
  // Order by place so that a file's problems read top to bottom.
  std::stable_sort(errors.begin(), errors.end(), [](const Diagnostic& a, const Diagnostic& b) {
    return std::tie(a.file, a.line, a.column) < std::tie(b.file, b.line, b.column);
  });
  throw ConfigError(std::move(errors));
}

namespace {

// yaml-cpp marks are 0-based; every location millrace prints is 1-based.
Location location_of(const YAML::Mark& mark, const std::string& file) {
  if (mark.line < 0) return {file, 0, 0};
  return {file, mark.line + 1, mark.column + 1};
}

ConfigNode convert(const YAML::Node& node, const std::string& file) {
  ConfigNode out;
  out.where = location_of(node.Mark(), file);
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      out.kind = ConfigNode::Kind::kNull;
      break;
    case YAML::NodeType::Scalar:
      out.kind = ConfigNode::Kind::kScalar;
      out.scalar = node.Scalar();
      // yaml-cpp tags plain scalars "?" and quoted ones "!".
      out.quoted = node.Tag() == "!";
      break;
    case YAML::NodeType::Sequence:
      out.kind = ConfigNode::Kind::kSequence;
      for (const auto& item : node) out.items.push_back(convert(item, file));
      break;
    case YAML::NodeType::Map:
      out.kind = ConfigNode::Kind::kMap;
      for (auto it = node.begin(); it != node.end(); ++it) {
        out.entries.emplace_back(convert(it->first, file), convert(it->second, file));
      }
      break;
  }
  return out;
}

}  // namespace

ConfigNode load_config_document(std::string_view text, const std::string& file, Diagnostics& out) {
  try {
    YAML::Node root = YAML::Load(std::string(text));
    ConfigNode node = convert(root, file);
    if (node.is_null() && node.where.line == 0) node.where = {file, 1, 1};
    return node;
  } catch (const YAML::ParserException& e) {
    out.error(location_of(e.mark, file), "invalid YAML: " + e.msg);
  } catch (const YAML::Exception& e) {
    out.error(location_of(e.mark, file), std::string("invalid YAML: ") + e.what());
  }
  ConfigNode empty;
  empty.where = {file, 1, 1};
  return empty;
}

ConfigNode parse_inline_value(std::string_view text, const Location& where, Diagnostics& out) {
  try {
    YAML::Node value = YAML::Load(std::string(text));
    ConfigNode node = convert(value, where.file);
    // The value has no line of its own in the file: point every part of it at the override.
    std::vector<ConfigNode*> stack{&node};
    while (!stack.empty()) {
      ConfigNode* n = stack.back();
      stack.pop_back();
      n->where = where;
      for (auto& item : n->items) stack.push_back(&item);
      for (auto& [k, v] : n->entries) {
        stack.push_back(&k);
        stack.push_back(&v);
      }
    }
    return node;
  } catch (const YAML::Exception& e) {
    out.error(where, "invalid value '" + std::string(text) + "': " + e.msg);
  }
  ConfigNode empty;
  empty.where = where;
  return empty;
}

std::string nearest(std::string_view word, const std::vector<std::string>& candidates) {
  auto distance = [](std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
      std::size_t diagonal = row[0];
      row[0] = i;
      for (std::size_t j = 1; j <= b.size(); ++j) {
        std::size_t above = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diagonal = above;
      }
    }
    return row[b.size()];
  };
  std::string best;
  std::size_t best_distance = std::max<std::size_t>(3, word.size() / 2) + 1;
  for (const auto& c : candidates) {
    std::size_t d = distance(word, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  return best;
}

}  // namespace millrace
