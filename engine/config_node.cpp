#include "engine/config_node.hpp"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <climits>
#include <filesystem>
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

// An alias is a reference in yaml-cpp's tree but a copy in ours, so a few hundred bytes of nested
// aliases ("billion laughs") would expand to gigabytes. The expansion is bounded as it is made.
class ExpansionTooLarge : public std::exception {
 public:
  explicit ExpansionTooLarge(const YAML::Mark& mark) : mark(mark) {}
  YAML::Mark mark;
};

struct ExpansionBudget {
  std::size_t nodes = 0;
  std::size_t scalar_bytes = 0;
  int depth = 0;  // an alias inside its own anchor (`&a [*a]`) makes a cycle in yaml-cpp's tree
};

class DepthScope {
 public:
  DepthScope(ExpansionBudget& budget, const YAML::Mark& mark) : budget_(budget) {
    if (++budget_.depth > kMaxConfigDepth) {
      --budget_.depth;
      throw ExpansionTooLarge(mark);
    }
  }
  ~DepthScope() { --budget_.depth; }
  DepthScope(const DepthScope&) = delete;
  DepthScope& operator=(const DepthScope&) = delete;

 private:
  ExpansionBudget& budget_;
};

ConfigNode convert(const YAML::Node& node, const std::string& file, ExpansionBudget& budget) {
  if (++budget.nodes > kMaxConfigNodes) throw ExpansionTooLarge(node.Mark());
  const DepthScope scope(budget, node.Mark());
  ConfigNode out;
  out.where = location_of(node.Mark(), file);
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      out.kind = ConfigNode::Kind::kNull;
      break;
    case YAML::NodeType::Scalar:
      budget.scalar_bytes += node.Scalar().size();
      if (budget.scalar_bytes > kMaxConfigScalarBytes) throw ExpansionTooLarge(node.Mark());
      out.kind = ConfigNode::Kind::kScalar;
      out.scalar = node.Scalar();
      // yaml-cpp tags plain scalars "?" and quoted ones "!".
      out.quoted = node.Tag() == "!";
      break;
    case YAML::NodeType::Sequence:
      out.kind = ConfigNode::Kind::kSequence;
      for (const auto& item : node) out.items.push_back(convert(item, file, budget));
      break;
    case YAML::NodeType::Map:
      out.kind = ConfigNode::Kind::kMap;
      for (auto it = node.begin(); it != node.end(); ++it) {
        ConfigNode key = convert(it->first, file, budget);
        try {
          out.entries.emplace_back(std::move(key), convert(it->second, file, budget));
        } catch (const ExpansionTooLarge&) {
          // An alias's node carries its anchor's place: name the top-level key that grew instead.
          if (budget.depth == 1) throw ExpansionTooLarge(it->first.Mark());
          throw;
        }
      }
      break;
  }
  return out;
}

// Counts a stream's documents (the start of the second one kept) without building them.
class DocumentCounter final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++count == 2) second = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  int count = 0;
  YAML::Mark second;
};

std::string expansion_message() {
  return "the document expands to more than " + std::to_string(kMaxConfigNodes) + " nodes, " +
         std::to_string(kMaxConfigScalarBytes) + " bytes of text or " +
         std::to_string(kMaxConfigDepth) +
         " levels, each alias counted where it is used; a config is refused above that";
}

// yaml-cpp refuses nesting deeper than its own limit with the bare message "bad file".
std::string deep_nesting_message() {
  return "invalid YAML: nesting too deep (yaml-cpp accepts at most " +
         std::to_string(kMaxConfigDepth) + " levels of nested lists and mappings)";
}

}  // namespace

ConfigNode load_config_document(std::string_view text, const std::string& file, Diagnostics& out,
                                ConfigOrigin origin) {
  try {
    const std::string owned(text);
    YAML::Node root = YAML::Load(owned);
    // A config is one document; whatever follows a `---` would be silently ignored otherwise.
    // Counted by events, never past the second: YAML::LoadAll loops without end on some inputs.
    std::istringstream stream(owned);
    YAML::Parser parser(stream);
    DocumentCounter counter;
    while (counter.count < 2 && parser.HandleNextDocument(counter)) {
    }
    if (counter.count > 1) {
      out.error(location_of(counter.second, file),
                "a config is one YAML document; this is a second one (remove the '---' before it)");
    }
    ExpansionBudget budget;
    ConfigNode node = convert(root, file, budget);
    if (node.is_null() && node.where.line == 0) node.where = {file, 1, 1};
    if (origin == ConfigOrigin::kFile) {
      std::vector<ConfigNode*> stack{&node};
      while (!stack.empty()) {
        ConfigNode* n = stack.back();
        stack.pop_back();
        n->where.in_file = true;
        for (auto& item : n->items) stack.push_back(&item);
        for (auto& [k, v] : n->entries) {
          stack.push_back(&k);
          stack.push_back(&v);
        }
      }
    }
    if (counter.count <= 1) return node;
  } catch (const ExpansionTooLarge& e) {
    out.error(location_of(e.mark, file), expansion_message());
  } catch (const YAML::DeepRecursion& e) {
    // yaml-cpp marks the place it had read to, which can be past the line's end.
    Location where = location_of(e.mark, file);
    std::size_t start = 0;
    for (int l = 1; l < where.line && start != std::string_view::npos; ++l) {
      start = text.find('\n', start);
      if (start != std::string_view::npos) ++start;
    }
    if (start != std::string_view::npos) {
      const std::size_t end = std::min(text.find('\n', start), text.size());
      where.column = std::clamp(
          where.column, 1,
          static_cast<int>(std::max<std::size_t>(1, std::min<std::size_t>(end - start, INT_MAX))));
    }
    out.error(where, deep_nesting_message());
  } catch (const YAML::ParserException& e) {
    out.error(location_of(e.mark, file), "invalid YAML: " + e.msg);
  } catch (const YAML::Exception& e) {
    out.error(location_of(e.mark, file), std::string("invalid YAML: ") + e.what());
  }
  ConfigNode empty;
  empty.where = {file, 1, 1};
  return empty;
}

std::string resolve_config_path(const Location& where, const std::string& value) {
  if (!where.in_file || value.empty()) return value;
  const std::filesystem::path path(value);
  if (path.is_absolute()) return value;
  const std::filesystem::path folder = std::filesystem::path(where.file).parent_path();
  if (folder.empty()) return value;
  // "./x" and "x" name the same file: drop the leading "." so messages stay short.
  std::filesystem::path rest;
  for (const auto& part : path) {
    if (rest.empty() && part == ".") continue;
    rest /= part;
  }
  return rest.empty() ? folder.string() : (folder / rest).string();
}

ConfigNode parse_inline_value(std::string_view text, const Location& where, Diagnostics& out) {
  try {
    YAML::Node value = YAML::Load(std::string(text));
    ExpansionBudget budget;
    ConfigNode node = convert(value, where.file, budget);
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
  } catch (const ExpansionTooLarge&) {
    out.error(where, "invalid value: " + expansion_message());
  } catch (const YAML::DeepRecursion&) {
    out.error(where, "invalid value: " + deep_nesting_message());
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
