// Typed parameter schemas: the one source of truth for a stage's YAML keys.
//
// Contract: a stage declares `static const Schema<Params>& schema()`, binding each YAML key to a
// member of its Params struct with a type, a range and a line of documentation. The default shown
// to users is read from a default-constructed Params, so it can never drift from the code. A
// schema is built once (function-local static) and is then immutable and thread-safe.
// parse() reports every problem to Diagnostics and never throws for bad input.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/config_node.hpp"

namespace millrace {

struct ParamDoc {
  std::string key;
  std::string type;
  std::string default_value;
  std::string doc;
  bool required = false;
};

// Scalar readers shared by schemas and the pipeline loader. Each reports a located diagnostic
// (prefixed with `context`, e.g. "stage 'decode' (decode): 'max_pixels'") and returns false.
bool read_int(const ConfigNode& node, std::int64_t& out, const std::string& context,
              Diagnostics& diagnostics);
bool read_number(const ConfigNode& node, double& out, const std::string& context,
                 Diagnostics& diagnostics);
bool read_bool(const ConfigNode& node, bool& out, const std::string& context,
               Diagnostics& diagnostics);
bool read_string(const ConfigNode& node, std::string& out, const std::string& context,
                 Diagnostics& diagnostics);
// A file or folder path: a string, resolved by resolve_config_path (a relative path written in a
// config file is relative to the file's folder, one from YAML text, a dict or `--set` to the
// current directory). Every key that names a path reads it here, so the rule holds for all.
bool read_path(const ConfigNode& node, std::string& out, const std::string& context,
               Diagnostics& diagnostics);
std::string format_number(double value);

class SchemaBase {
 public:
  virtual ~SchemaBase() = default;
  virtual std::vector<ParamDoc> docs() const = 0;
};

template <class P>
class Schema : public SchemaBase {
 public:
  using Parser = std::function<void(P&, const ConfigNode&, const std::string&, Diagnostics&)>;

  Schema& integer(const char* key, int P::*member, std::string doc,
                  std::int64_t lo = std::numeric_limits<int>::min(),
                  std::int64_t hi = std::numeric_limits<int>::max()) {
    return add(
        key, "integer", std::move(doc), [member](const P& p) { return std::to_string(p.*member); },
        [member, lo, hi](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          std::int64_t v = 0;
          if (read_int(n, v, c, d) && in_range(v, lo, hi, n, c, d)) p.*member = static_cast<int>(v);
        });
  }
  Schema& integer64(const char* key, std::int64_t P::*member, std::string doc,
                    std::int64_t lo = std::numeric_limits<std::int64_t>::min(),
                    std::int64_t hi = std::numeric_limits<std::int64_t>::max()) {
    return add(
        key, "integer", std::move(doc), [member](const P& p) { return std::to_string(p.*member); },
        [member, lo, hi](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          std::int64_t v = 0;
          if (read_int(n, v, c, d) && in_range(v, lo, hi, n, c, d)) p.*member = v;
        });
  }
  Schema& number(const char* key, double P::*member, std::string doc,
                 double lo = -std::numeric_limits<double>::infinity(),
                 double hi = std::numeric_limits<double>::infinity()) {
    return add(
        key, "number", std::move(doc), [member](const P& p) { return format_number(p.*member); },
        [member, lo, hi](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          double v = 0;
          if (read_number(n, v, c, d) && in_range(v, lo, hi, n, c, d)) p.*member = v;
        });
  }
  Schema& boolean(const char* key, bool P::*member, std::string doc) {
    return add(
        key, "boolean", std::move(doc),
        [member](const P& p) { return std::string(p.*member ? "true" : "false"); },
        [member](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          bool v = false;
          if (read_bool(n, v, c, d)) p.*member = v;
        });
  }
  Schema& string(const char* key, std::string P::*member, std::string doc) {
    return add(
        key, "string", std::move(doc),
        [member](const P& p) { return (p.*member).empty() ? std::string("(none)") : p.*member; },
        [member](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          std::string v;
          if (read_string(n, v, c, d)) p.*member = std::move(v);
        });
  }
  // A file or folder path (read_path): shown as type "path".
  Schema& path(const char* key, std::string P::*member, std::string doc) {
    return add(
        key, "path", std::move(doc),
        [member](const P& p) { return (p.*member).empty() ? std::string("(none)") : p.*member; },
        [member](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          std::string v;
          if (read_path(n, v, c, d)) p.*member = std::move(v);
        });
  }
  template <class E>
  Schema& choice(const char* key, E P::*member, std::string doc,
                 std::vector<std::pair<std::string, E>> choices) {
    std::string type;
    for (const auto& [name, value] : choices) type += (type.empty() ? "" : " | ") + name;
    return add(
        key, type, std::move(doc),
        [member, choices](const P& p) {
          for (const auto& [name, value] : choices)
            if (value == p.*member) return name;
          return std::string("?");
        },
        [member, choices, type](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          std::string v;
          if (!read_string(n, v, c, d)) return;
          for (const auto& [name, value] : choices) {
            if (name == v) {
              p.*member = value;
              return;
            }
          }
          d.error(n.where, c + " expects one of " + type + ", got '" + v + "'");
        });
  }
  // A list of numbers whose length is one of `sizes` (empty: any length >= 1).
  Schema& numbers(const char* key, std::vector<double> P::*member, std::string doc,
                  const std::vector<std::size_t>& sizes,
                  double lo = -std::numeric_limits<double>::infinity(),
                  double hi = std::numeric_limits<double>::infinity()) {
    std::string type = "list of numbers";
    return add(
        key, type, std::move(doc),
        [member](const P& p) {
          if ((p.*member).empty()) return std::string("(none)");
          std::string s = "[";
          for (double v : p.*member) s += (s.size() > 1 ? ", " : "") + format_number(v);
          return s + "]";
        },
        [member, sizes, lo, hi](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          std::vector<double> values;
          if (n.is_scalar() && !n.quoted) {
            double v = 0;
            if (!read_number(n, v, c, d)) return;
            values.push_back(v);
          } else if (n.is_sequence()) {
            bool ok = true;
            for (const auto& item : n.items) {
              double v = 0;
              ok = read_number(item, v, c, d) && in_range(v, lo, hi, item, c, d) && ok;
              values.push_back(v);
            }
            if (!ok) return;
          } else {
            d.error(n.where, c + " expects a list of numbers, got " + std::string(n.kind_name()));
            return;
          }
          if (!sizes.empty() &&
              std::find(sizes.begin(), sizes.end(), values.size()) == sizes.end()) {
            std::string want;
            for (auto s : sizes) want += (want.empty() ? "" : " or ") + std::to_string(s);
            d.error(n.where,
                    c + " expects " + want + " numbers, got " + std::to_string(values.size()));
            return;
          }
          p.*member = std::move(values);
        });
  }
  // Two numbers [a, b] with lo <= a <= b <= hi.
  Schema& range(const char* key, std::array<double, 2> P::*member, std::string doc, double lo,
                double hi) {
    return add(
        key, "[min, max]", std::move(doc),
        [member](const P& p) {
          return "[" + format_number((p.*member)[0]) + ", " + format_number((p.*member)[1]) + "]";
        },
        [member, lo, hi](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          if (!n.is_sequence() || n.items.size() != 2) {
            d.error(n.where, c + " expects [min, max]");
            return;
          }
          double a = 0;
          double b = 0;
          if (!read_number(n.items[0], a, c, d) || !read_number(n.items[1], b, c, d)) return;
          if (!(a <= b)) {
            d.error(n.where, c + " expects min <= max, got [" + format_number(a) + ", " +
                                 format_number(b) + "]");
            return;
          }
          if (!in_range(a, lo, hi, n, c, d) || !in_range(b, lo, hi, n, c, d)) return;
          p.*member = {a, b};
        });
  }
  // [height, width], or one integer for a square.
  Schema& extent(const char* key, std::array<int, 2> P::*member, std::string doc, int lo, int hi) {
    return add(
        key, "[height, width] | integer", std::move(doc),
        [member](const P& p) {
          if ((p.*member)[0] == 0) return std::string("(none)");
          return "[" + std::to_string((p.*member)[0]) + ", " + std::to_string((p.*member)[1]) + "]";
        },
        [member, lo, hi](P& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          std::int64_t h = 0;
          std::int64_t w = 0;
          if (n.is_scalar()) {
            if (!read_int(n, h, c, d)) return;
            w = h;
          } else if (n.is_sequence() && n.items.size() == 2) {
            if (!read_int(n.items[0], h, c, d) || !read_int(n.items[1], w, c, d)) return;
          } else {
            d.error(n.where, c + " expects [height, width] or one integer, got " +
                                 std::string(n.kind_name()) +
                                 (n.is_sequence() ? " of " + std::to_string(n.items.size()) : ""));
            return;
          }
          if (!in_range<std::int64_t>(h, lo, hi, n, c, d) ||
              !in_range<std::int64_t>(w, lo, hi, n, c, d))
            return;
          p.*member = {static_cast<int>(h), static_cast<int>(w)};
        });
  }
  // Any other shape of value: the stage parses it itself.
  Schema& custom(const char* key, std::string type, std::string doc, std::string default_text,
                 Parser parser) {
    return add(
        key, std::move(type), std::move(doc), [default_text](const P&) { return default_text; },
        std::move(parser));
  }
  // Shows `text` as the default of the field declared last, for a default whose plain value does
  // not say what it means (threads 0: all cores).
  Schema& shown_default(const std::string& text) {
    fields_.back().doc.default_value = text;
    return *this;
  }
  // Marks the field declared last as required.
  Schema& required() {
    fields_.back().doc.required = true;
    fields_.back().doc.default_value = "(required)";
    return *this;
  }

  // Parses every key of `map` into `params`. Keys in `engine_keys` belong to the engine and are
  // skipped here; any other unknown key is an error naming the nearest known one.
  void parse(P& params, const ConfigNode& map, const std::string& context,
             const std::vector<std::string>& engine_keys, Diagnostics& d) const {
    for (const auto& [key, value] : map.entries) {
      if (std::find(engine_keys.begin(), engine_keys.end(), key.scalar) != engine_keys.end()) {
        continue;
      }
      const Field* field = nullptr;
      for (const auto& f : fields_) {
        if (f.doc.key == key.scalar) field = &f;
      }
      if (field == nullptr) {
        std::vector<std::string> known = engine_keys;
        for (const auto& f : fields_) known.push_back(f.doc.key);
        std::string suggestion = nearest(key.scalar, known);
        std::string list;
        for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
        d.error(key.where, context + ": unknown key '" + key.scalar + "'" +
                               (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)") +
                               "; known keys: " + list);
        continue;
      }
      field->parse(params, value, context + ": '" + key.scalar + "'", d);
    }
    for (const auto& f : fields_) {
      if (f.doc.required && map.find(f.doc.key) == nullptr) {
        d.error(map.where, context + ": missing required key '" + f.doc.key + "'");
      }
    }
  }

  // Parses the keys of `map` that this schema has and leaves every other key alone: for keys that
  // share a mapping with another schema's (the engine's keys of a stage, beside the stage's own).
  void parse_known(P& params, const ConfigNode& map, const std::string& context,
                   Diagnostics& d) const {
    for (const auto& [key, value] : map.entries) {
      for (const auto& f : fields_) {
        if (f.doc.key == key.scalar) f.parse(params, value, context + ": '" + key.scalar + "'", d);
      }
    }
  }

  std::vector<ParamDoc> docs() const override {
    std::vector<ParamDoc> out;
    out.reserve(fields_.size());
    for (const auto& f : fields_) out.push_back(f.doc);
    return out;
  }

 private:
  struct Field {
    ParamDoc doc;
    Parser parse;
  };

  template <class T>
  static bool in_range(T v, T lo, T hi, const ConfigNode& n, const std::string& c, Diagnostics& d) {
    if (v >= lo && v <= hi) return true;
    std::string range;
    if constexpr (std::is_floating_point_v<T>) {
      range =
          (lo == -std::numeric_limits<T>::infinity() ? std::string("-inf") : format_number(lo)) +
          ".." +
          (hi == std::numeric_limits<T>::infinity() ? std::string("inf") : format_number(hi));
      d.error(n.where, c + " is out of range: " + format_number(v) + " not in " + range);
    } else {
      range = (lo == std::numeric_limits<T>::min() ? std::string("-inf") : std::to_string(lo)) +
              ".." +
              (hi == std::numeric_limits<T>::max() ? std::string("inf") : std::to_string(hi));
      d.error(n.where, c + " is out of range: " + std::to_string(v) + " not in " + range);
    }
    return false;
  }

  template <class Show>
  Schema& add(const char* key, const std::string& type, const std::string& doc, Show show,
              Parser parser) {
    Field f;
    f.doc.key = key;
    f.doc.type = type;
    f.doc.doc = doc;
    f.doc.default_value = show(P{});
    f.parse = std::move(parser);
    fields_.push_back(std::move(f));
    return *this;
  }

  std::vector<Field> fields_;
};

}  // namespace millrace
