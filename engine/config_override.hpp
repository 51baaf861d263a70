// Edits and checks of a config document before it is read into a plan (engine/config.cpp).
#pragma once

#include <string>

#include "engine/config_node.hpp"

namespace millrace {

// Reports every key that appears twice in one mapping, anywhere in the document, naming where it
// was first defined.
void check_duplicates(const ConfigNode& node, Diagnostics& d);

// Applies one `NAME.key=value` assignment to `root`. NAME is `pipeline`, a stage's name (its
// `name`, else its `type`) or `stages.INDEX`; the key is a path into nested mappings (created on
// the way) and lists (elements by index or name, never created). A malformed assignment or a path
// that names nothing is reported, with the nearest name; `root` is then left as it was.
void apply_override(ConfigNode& root, const std::string& assignment, Diagnostics& d);

}  // namespace millrace
