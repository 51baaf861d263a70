// `--set NAME.key=value` overrides applied to a parsed config document, before it is validated,
// and the duplicate-key check that runs first. Both work on the document alone (ConfigNode), never
// on a plan: an override reaches any key the file could hold, and the schema then validates the
// result as if the file had said it, so a user sees one set of messages for both.
#include "engine/config_override.hpp"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace millrace {
namespace {}  // namespace

void check_duplicates(const ConfigNode& node, Diagnostics& d) {
  if (node.is_map()) {
    for (std::size_t i = 0; i < node.entries.size(); ++i) {
      const ConfigNode& key = node.entries[i].first;
      for (std::size_t j = 0; j < i; ++j) {
        const ConfigNode& first = node.entries[j].first;
        if (first.scalar == key.scalar) {
          d.error(key.where, "duplicate key '" + key.scalar + "' (first defined at line " +
                                 std::to_string(first.where.line) + ":" +
                                 std::to_string(first.where.column) + ")");
          break;
        }
      }
    }
    for (const auto& [k, v] : node.entries) check_duplicates(v, d);
  }
  for (const auto& item : node.items) check_duplicates(item, d);
}

namespace {

std::string stage_name_of(const ConfigNode& stage) {
  if (const ConfigNode* n = stage.find("name"); n != nullptr && n->is_scalar()) return n->scalar;
  if (const ConfigNode* t = stage.find("type"); t != nullptr && t->is_scalar()) return t->scalar;
  return "";
}

void set_key(ConfigNode& map, const std::string& key, ConfigNode value, const Location& where) {
  if (ConfigNode* existing = map.find(key)) {
    *existing = std::move(value);
    return;
  }
  ConfigNode k;
  k.kind = ConfigNode::Kind::kScalar;
  k.scalar = key;
  k.where = where;
  map.entries.emplace_back(std::move(k), std::move(value));
}

bool is_index(const std::string& step) {
  return !step.empty() && step.size() <= 9 &&
         std::all_of(step.begin(), step.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A list element addressed by an override step: its index, or its name (a mapping's `name`, else
// its `type`, as stages are named). nullptr, with the error reported, when there is none.
ConfigNode* list_element(ConfigNode& list, const std::string& step, const std::string& path,
                         const Location& where, Diagnostics& d) {
  std::vector<std::string> names;
  for (auto& item : list.items) {
    const std::string name = item.is_map() ? stage_name_of(item) : std::string();
    if (!is_index(step) && !name.empty() && name == step) return &item;
    if (!name.empty()) names.push_back(name);
  }
  if (is_index(step) && std::stoul(step) < list.items.size()) return &list.items[std::stoul(step)];
  const std::size_t n = list.items.size();
  std::string known = n == 0 ? "it is empty" : "index 0.." + std::to_string(n - 1);
  if (!names.empty()) {
    known += ", or a name:";
    for (std::size_t k = 0; k < names.size(); ++k) known += (k == 0 ? " " : ", ") + names[k];
  }
  const std::string hint = is_index(step) ? "" : nearest(step, names);
  d.error(where, "'" + path + "' is a list of " + std::to_string(n) + " with no element '" + step +
                     "'" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") + " (" + known +
                     ")");
  return nullptr;
}

// Sets the key path `steps` (["calibration", "table"], ["ops", "1", "p"]) inside `node`: a step
// into a mapping takes its key, creating the mappings on the way; a step into a list takes an
// element by index or name (never creating one). A step through a scalar is an error, never
// silently replaced. `path` is the override's left-hand side up to `node`, for messages.
void set_path(ConfigNode& node_in, const std::vector<std::string>& steps, ConfigNode value,
              const Location& where, Diagnostics& d) {
  ConfigNode* node = &node_in;
  std::string path;  // the steps taken so far, for messages
  for (std::size_t k = 0; k < steps.size(); ++k) {
    const std::string& step = steps[k];
    const bool last = k + 1 == steps.size();
    if (node->is_sequence()) {
      ConfigNode* element = list_element(*node, step, path, where, d);
      if (element == nullptr) return;
      if (last) {
        *element = std::move(value);
        return;
      }
      node = element;
    } else if (node->is_map()) {
      if (last) {
        set_key(*node, step, std::move(value), where);
        return;
      }
      ConfigNode* next = node->find(step);
      if (next == nullptr) {
        ConfigNode empty;
        empty.kind = ConfigNode::Kind::kMap;
        empty.where = where;
        set_key(*node, step, std::move(empty), where);
        next = node->find(step);
      }
      node = next;
    } else {
      std::string rest;
      for (std::size_t r = k; r < steps.size(); ++r) rest += (rest.empty() ? "" : ".") + steps[r];
      d.error(where, "'" + path + "' is " + std::string(node->kind_name()) +
                         ", not a mapping, so it has no key '" + rest + "'");
      return;
    }
    path += (path.empty() ? "" : ".") + step;
  }
}

std::vector<std::string> split_steps(const std::string& key) {
  std::vector<std::string> steps;
  std::size_t start = 0;
  for (std::size_t dot = key.find('.'); dot != std::string::npos;
       start = dot + 1, dot = key.find('.', start)) {
    steps.push_back(key.substr(start, dot - start));
  }
  steps.push_back(key.substr(start));
  return steps;
}

}  // namespace

void apply_override(ConfigNode& root, const std::string& assignment, Diagnostics& d) {
  const Location where{"--set " + assignment, 0, 0};
  const auto eq = assignment.find('=');
  const auto dot = assignment.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq) {
    d.error(where,
            "expected NAME.key=value (NAME is 'pipeline', a stage name, or stages.INDEX; a nested "
            "key by its path, a list element by its index or name)");
    return;
  }
  const std::string lhs = assignment.substr(0, eq);
  if (lhs.front() == '.' || lhs.back() == '.' || lhs.find("..") != std::string::npos) {
    d.error(where, "expected NAME.key=value or NAME.key.subkey=value, got an empty key");
    return;
  }
  std::vector<std::string> steps = split_steps(lhs);
  const std::size_t errors_before = d.error_count();
  ConfigNode value = parse_inline_value(assignment.substr(eq + 1), where, d);
  // A value that did not parse has been reported; applying its empty stand-in would only add a
  // second, misleading error.
  if (!root.is_map() || d.error_count() != errors_before) return;
  const std::string target = steps.front();
  if (target == "pipeline") {
    ConfigNode* section = root.find("pipeline");
    if (section != nullptr && !section->is_map()) return;  // the file's own error is reported
    if (section == nullptr) {
      ConfigNode empty;
      empty.kind = ConfigNode::Kind::kMap;
      empty.where = where;
      set_key(root, "pipeline", std::move(empty), where);
      section = root.find("pipeline");
    }
    set_path(*section, {steps.begin() + 1, steps.end()}, std::move(value), where, d);
    return;
  }
  ConfigNode* stages = root.find("stages");
  if (target == "stages") {
    // stages.INDEX.key or stages.NAME.key: a stage's own key, never a whole stage replaced.
    if (steps.size() < 3) {
      d.error(where, "expected stages.INDEX.key=value or stages.NAME.key=value");
      return;
    }
    if (stages == nullptr || !stages->is_sequence()) return;  // the file's own error is reported
    ConfigNode* stage = list_element(*stages, steps[1], "stages", where, d);
    if (stage == nullptr) return;
    if (!stage->is_map()) return;  // reported by the file's validation
    set_path(*stage, {steps.begin() + 2, steps.end()}, std::move(value), where, d);
    return;
  }
  std::vector<std::string> names;
  if (stages != nullptr && stages->is_sequence()) {
    for (auto& stage : stages->items) {
      if (!stage.is_map()) continue;
      const std::string name = stage_name_of(stage);
      if (name == target) {
        set_path(stage, {steps.begin() + 1, steps.end()}, std::move(value), where, d);
        return;
      }
      names.push_back(name);
    }
  }
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  std::string hint = nearest(target, names);
  d.error(where, "no stage named '" + target + "'" +
                     (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                     "; stages: pipeline, " + list);
}

}  // namespace millrace
