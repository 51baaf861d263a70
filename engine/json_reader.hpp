// The project's one JSON reader, beside its writer (engine/json.hpp): a whole document parsed into
// a tree of values, for the small files millrace reads back (calibration tables).
//
// Contract: pure functions over a string; nothing is shared. The reader accepts objects, arrays,
// strings (the escapes \n \t \r \b \f \" \\ \/; not \u), numbers, true, false and null, at most 32
// levels deep, and throws JsonError on anything else, naming the origin, the line and what it
// expected: "ORIGIN:LINE: error: SUBJECT: what". Its input is bounded by the caller (a file read
// with a size limit); the tree costs a few times the text.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace millrace {

struct JsonValue {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = Kind::kNull;
  double number = 0.0;  // kNumber; kBool: 1 for true
  std::string text;     // kString
  std::vector<JsonValue> items;
  std::vector<std::string> keys;  // an object's members: keys[i] names items[i]

  // The object's member `name` (the first, if listed twice), or nullptr.
  const JsonValue* member(std::string_view name) const {
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == name) return &items[i];
    }
    return nullptr;
  }
};

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The message a JsonError carries for `what` at byte `at` of `text`: "ORIGIN:LINE: error:
// SUBJECT: what". For a reader of the tree that finds a value it cannot use.
std::string json_error_text(std::string_view text, std::size_t at, const std::string& origin,
                            const std::string& subject, const std::string& what);

// Parses `text` as one JSON value (white space around it allowed, nothing else). `subject` names
// the document in messages ("calibration table").
JsonValue parse_json(std::string_view text, const std::string& origin, const std::string& subject);

}  // namespace millrace
