// A small strict JSON parser (RFC 8259) for .rq headers and metadata.
//
// Accepts exactly one value surrounded by optional whitespace (space, tab, CR, LF). Strings must be
// valid UTF-8 with no raw control characters; escapes \" \\ \/ \b \f \n \r \t and \uXXXX (surrogate
// pairs combined, lone surrogates rejected) are decoded to UTF-8. Numbers follow the JSON grammar; an
// integer literal (no fraction or exponent) that fits int64 is kept exactly. Duplicate object keys are
// rejected. Limits on nesting depth and input size keep hostile input cheap.
//
// Cost (issue 14): parse() validates the whole text in one pass, O(n log k) for objects of k keys (the
// duplicate check sorts 12-byte key hashes per object, then compares equal hashes exactly), and keeps no
// tree: a Value is a scalar or a view of a container in the validated text, whose members and elements are
// read on demand (items(), elements(), find()). So memory is the text plus at most 12 bytes per object key
// while parsing (a 64 MiB header of any shape parses in well under a second per MB and < 4x its size),
// instead of ~110 bytes per value.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
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

struct Value;
class Parser;
class MemberIter;
class ElemIter;
struct Members;
struct Elements;

// One value of a validated document. Scalars are held; arrays and objects are views of the text (which must
// outlive the Value: parse(const std::string&) keeps its own copy alive, parse(const char*, size_t) does not).
struct Value {
  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;  // every number, as the nearest double
  bool is_int = false;  // an integer literal that fits int64 ...
  int64_t integer = 0;  // ... and its exact value
  std::string string;

  bool is_null() const { return type == Type::Null; }
  // Member of an object (nullopt when absent or not an object).
  std::optional<Value> find(const std::string& key) const;
  // Elements of an array / members of an object (0 for scalars); counts by reading the text.
  size_t size() const;
  // Forward ranges over a container, read from the text as they advance (each step materialises one member
  // or element; nested containers stay views): object members in input order as (key, value), array
  // elements in order.
  Members items() const;
  Elements elements() const;

 private:
  friend class Parser;
  friend class MemberIter;
  friend struct Members;
  std::shared_ptr<const std::string> keep_;  // the text, when the document owns it
  const char* text_ = nullptr;               // containers: the document's text ...
  size_t size_ = 0;
  size_t pos_ = 0;  // ... and the offset of '[' or '{'
};

using Member = std::pair<std::string, Value>;

class MemberIter {
 public:
  bool operator!=(const MemberIter& o) const { return pos_ != o.pos_; }
  MemberIter& operator++();
  const Member& operator*() const { return cur_; }
  const Member* operator->() const { return &cur_; }

 private:
  friend struct Members;
  const Value* owner_ = nullptr;
  size_t pos_ = 0;    // the text position of the current member / element, or npos at the end
  size_t after_ = 0;  // the position just after it
  Member cur_;
  void load();
};

struct Members {
  const Value* v;
  MemberIter begin() const;
  MemberIter end() const;
};

class ElemIter {
 public:
  bool operator!=(const ElemIter& o) const { return it_ != o.it_; }
  ElemIter& operator++() {
    ++it_;
    return *this;
  }
  const Value& operator*() const { return it_->second; }
  const Value* operator->() const { return &it_->second; }

 private:
  friend struct Elements;
  MemberIter it_;
};

struct Elements {
  const Value* v;
  ElemIter begin() const;
  ElemIter end() const;
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
