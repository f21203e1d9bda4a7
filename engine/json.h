// A small strict JSON parser (RFC 8259) for .rq headers and metadata.
//
// Accepts exactly one value surrounded by optional whitespace (space, tab, CR, LF). Strings must be
// valid UTF-8 with no raw control characters; escapes \" \\ \/ \b \f \n \r \t and \uXXXX (surrogate
// pairs combined, lone surrogates rejected) are decoded to UTF-8. Numbers follow the JSON grammar; an
// integer literal (no fraction or exponent) that fits int64 is kept exactly. Duplicate object keys are
// rejected. Limits on nesting depth and input size keep hostile input cheap.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace robuq {
namespace json {

class ParseError : public std::runtime_error {
 public:
  ParseError(const std::string& what, size_t offset) : std::runtime_error(what), offset_(offset) {}
  size_t offset() const { return offset_; }  // byte offset of the problem in the input

 private:
  size_t offset_;
};

enum class Type { Null, Bool, Number, String, Array, Object };
const char* type_name(Type t);

struct Value {
  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;     // every number, as the nearest double
  bool is_int = false;     // an integer literal that fits int64 ...
  int64_t integer = 0;     // ... and its exact value
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  // in input order, keys unique

  bool is_null() const { return type == Type::Null; }
  // Member of an object (null when absent or not an object).
  const Value* find(const std::string& key) const;
};

struct Limits {
  size_t max_size = size_t(64) << 20;  // bytes of input
  int max_depth = 64;                  // nesting of arrays / objects
};

// Throws ParseError (message: what went wrong and where, "at byte N (line L, column C)").
Value parse(const char* text, size_t size, const Limits& limits = Limits());
Value parse(const std::string& text, const Limits& limits = Limits());

}  // namespace json
}  // namespace robuq
