// The JSON reader (engine/json_reader.hpp): the values it builds, and the errors it names with
// the origin and line, in the form calibration tables have always reported.
#include "engine/json_reader.hpp"

#include <gtest/gtest.h>

#include <string>

namespace millrace {
namespace {

std::string error_of(const std::string& text) {
  try {
    parse_json(text, "t.json", "calibration table");
  } catch (const JsonError& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << text;
  return "";
}

TEST(JsonReader, BuildsTheTree) {
  const JsonValue v = parse_json(
      " {\"mode\": \"mse\", \"values\": [{\"id\": 3, \"min\": -1.5e1, \"ok\": true}, null],"
      " \"s\": \"a\\\"b\\\\c\\/\\n\", \"f\": false}\n",
      "t.json", "table");
  ASSERT_EQ(v.kind, JsonValue::Kind::kObject);
  EXPECT_EQ(v.member("mode")->text, "mse");
  EXPECT_EQ(v.member("s")->text, "a\"b\\c/\n");
  EXPECT_EQ(v.member("f")->kind, JsonValue::Kind::kBool);
  EXPECT_EQ(v.member("f")->number, 0.0);
  EXPECT_EQ(v.member("nothing"), nullptr);
  const JsonValue& values = *v.member("values");
  ASSERT_EQ(values.kind, JsonValue::Kind::kArray);
  ASSERT_EQ(values.items.size(), 2U);
  EXPECT_EQ(values.items[0].member("id")->number, 3.0);
  EXPECT_EQ(values.items[0].member("min")->number, -15.0);
  EXPECT_EQ(values.items[0].member("ok")->number, 1.0);
  EXPECT_EQ(values.items[1].kind, JsonValue::Kind::kNull);
  EXPECT_TRUE(parse_json("[]", "t", "x").items.empty());
  EXPECT_TRUE(parse_json("{}", "t", "x").keys.empty());
}

TEST(JsonReader, ErrorsNameTheOriginTheLineAndWhat) {
  EXPECT_EQ(error_of("{\n\"a\" 1}"), "t.json:2: error: calibration table: expected ':'");
  EXPECT_EQ(error_of("{\"a\": 1} x"),
            "t.json:1: error: calibration table: unexpected text after the JSON value");
  EXPECT_EQ(error_of("[1,\n\n"), "t.json:3: error: calibration table: unexpected end of text");
  EXPECT_EQ(error_of("\"abc"), "t.json:1: error: calibration table: unterminated string");
  EXPECT_EQ(error_of("[\"\\u0041\"]"),
            "t.json:1: error: calibration table: \\u escapes are not supported in a calibration "
            "table");
  EXPECT_EQ(error_of("[1.2.3]"), "t.json:1: error: calibration table: malformed number '1.2.3'");
  EXPECT_EQ(error_of("[tru]"), "t.json:1: error: calibration table: expected a value");
  EXPECT_EQ(error_of("{1: 2}"), "t.json:1: error: calibration table: expected a string");
  EXPECT_EQ(error_of(std::string(40, '[') + std::string(40, ']')),
            "t.json:1: error: calibration table: nesting too deep");
  EXPECT_EQ(json_error_text("a\nb\nc", 4, "f", "s", "w"), "f:3: error: s: w");
}

}  // namespace
}  // namespace millrace
