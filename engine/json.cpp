// Strict recursive-descent JSON parser; see json.h for what is accepted.
#include "json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <system_error>

namespace robuq {
namespace json {

const char* type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

class Parser {
 public:
  Parser(const char* s, size_t n, const Limits& lim) : s_(s), n_(n), lim_(lim) {}

  // Validates the whole text (one pass, no tree), then returns the top value read from it.
  Value document() {
    if (n_ > lim_.max_size)
      fail("input is " + std::to_string(n_) + " bytes, more than the limit of " + std::to_string(lim_.max_size), 0);
    skip_ws();
    const size_t start = p_;
    validate(0);
    skip_ws();
    if (p_ != n_) fail("unexpected data after the JSON value");
    p_ = start;
    return read();
  }

  // ---- reading a validated text (Value's lazy accessors)
  // The value at p_ (after whitespace); p_ moves past it. Containers become views (their contents skipped).
  Value read() {
    skip_ws();
    Value v;
    const char c = peek();
    if (c == '{' || c == '[') {
      v.type = c == '{' ? Type::Object : Type::Array;
      v.text_ = s_;
      v.size_ = n_;
      v.pos_ = p_;
      v.keep_ = keep_text_;
      skip_container();
      return v;
    }
    if (c == '"') {
      v.type = Type::String;
      v.string = string();
      return v;
    }
    if (c == 't') {
      p_ += 4;
      v.type = Type::Bool;
      v.boolean = true;
      return v;
    }
    if (c == 'f') {
      p_ += 5;
      v.type = Type::Bool;
      return v;
    }
    if (c == 'n') {
      p_ += 4;
      return v;
    }
    return number();
  }

  // From a member / element start (or the container's opening bracket when first): the position of the next
  // member or element, or npos at the container's end.
  size_t next_item(bool first) {
    if (first) {
      ++p_;  // '{' or '['
    } else {
      skip_ws();
      if (peek() == ',') ++p_;
    }
    skip_ws();
    if (peek() == '}' || peek() == ']') return std::string::npos;
    return p_;
  }

  // Reads a member (object: key, ':' value) or an element at p_.
  void read_item(bool object, Member& out) {
    if (object) {
      out.first = string();
      skip_ws();
      ++p_;  // ':'
    } else {
      out.first.clear();
    }
    out.second = read();
  }

  void set_pos(size_t p) { p_ = p; }
  // Containers read from an owned text keep it alive (the values read from them share it).
  void keep(const std::shared_ptr<const std::string>& k) { keep_text_ = k; }
  size_t pos() const { return p_; }

 private:
  const char* s_;
  size_t n_;
  Limits lim_;
  size_t p_ = 0;
  // Duplicate detection: (hash of the decoded key, its offset) of every key of the objects being validated,
  // a stack shared by the nesting levels (12 bytes per key).
#pragma pack(push, 4)
  struct KeyRef {
    uint64_t hash;
    uint32_t at;
  };
#pragma pack(pop)
  std::vector<KeyRef> keys_;
  std::string scratch_;
  std::shared_ptr<const std::string> keep_text_;

  // Skips a valid container starting at p_ (its bracket) by counting brackets outside strings.
  void skip_container() {
    int depth = 0;
    while (p_ < n_) {
      const char c = s_[p_++];
      if (c == '"') {
        while (p_ < n_ && s_[p_] != '"') p_ += s_[p_] == '\\' ? 2 : 1;
        ++p_;
      } else if (c == '{' || c == '[') {
        ++depth;
      } else if (c == '}' || c == ']') {
        if (--depth == 0) return;
      }
    }
  }

  static uint64_t fnv1a(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return h;
  }

  [[noreturn]] void fail(const std::string& what) const { fail(what, p_); }
  [[noreturn]] void fail(const std::string& what, size_t at) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < n_; ++i) {
      if (s_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw ParseError("invalid JSON at byte " + std::to_string(at) + " (line " + std::to_string(line) + ", column " +
                         std::to_string(col) + "): " + what,
                     at);
  }

  bool at_end() const { return p_ >= n_; }
  char peek() const { return s_[p_]; }

  void skip_ws() {
    while (p_ < n_ && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\n' || s_[p_] == '\r')) ++p_;
  }

  static std::string describe(char c) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%02x", u);
    return std::string("byte ") + buf;
  }

  void expect(char c) {
    if (at_end()) fail(std::string("unexpected end of input, expected '") + c + "'");
    if (peek() != c) fail(std::string("expected '") + c + "', got " + describe(peek()));
    ++p_;
  }

  void literal(const char* word) {
    const size_t len = std::strlen(word);
    if (n_ - p_ < len || std::memcmp(s_ + p_, word, len) != 0)
      fail("invalid literal (expected '" + std::string(word) + "')");
    p_ += len;
  }

  void validate(int depth) {
    if (at_end()) fail("unexpected end of input, expected a value");
    switch (peek()) {
      case '{': return validate_object(depth + 1);
      case '[': return validate_array(depth + 1);
      case '"': string_into(scratch_); return;
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) {
          (void)number();
          return;
        }
        fail("unexpected " + describe(peek()) + ", expected a value");
    }
  }

  void check_depth(int depth) {
    if (depth > lim_.max_depth) fail("nesting deeper than the limit of " + std::to_string(lim_.max_depth));
  }

  // The key decoded at offset `at` of the (validated) text.
  std::string key_at(size_t at) {
    const size_t save = p_;
    p_ = at;
    std::string k = string();
    p_ = save;
    return k;
  }

  // Keys keys_[from..] of one object: sorted by hash, equal hashes compared exactly; the duplicate that comes
  // first in the input (its second occurrence) is reported.
  void check_duplicates(size_t from) {
    if (keys_.size() - from < 2) return;
    std::sort(keys_.begin() + static_cast<std::ptrdiff_t>(from), keys_.end(),
              [](const KeyRef& a, const KeyRef& b) { return a.hash != b.hash ? a.hash < b.hash : a.at < b.at; });
    size_t worst = std::string::npos;
    for (size_t i = from; i + 1 < keys_.size();) {
      size_t j = i + 1;
      while (j < keys_.size() && keys_[j].hash == keys_[i].hash) ++j;
      for (size_t a = i; a < j; ++a)  // a run of equal hashes (almost always one key or true duplicates)
        for (size_t b = a + 1; b < j; ++b)
          if (keys_[b].at < worst && key_at(keys_[a].at) == key_at(keys_[b].at)) worst = keys_[b].at;
      i = j;
    }
    if (worst != std::string::npos) fail("duplicate key \"" + key_at(worst) + "\"", worst);
  }

  void validate_object(int depth) {
    check_depth(depth);
    ++p_;  // '{'
    skip_ws();
    if (!at_end() && peek() == '}') {
      ++p_;
      return;
    }
    const size_t from = keys_.size();
    while (true) {
      skip_ws();
      if (at_end()) fail("unexpected end of input in an object");
      if (peek() != '"') fail("expected a string key, got " + describe(peek()));
      const size_t key_at = p_;
      string_into(scratch_);
      keys_.push_back({fnv1a(scratch_), static_cast<uint32_t>(key_at)});
      skip_ws();
      expect(':');
      skip_ws();
      validate(depth);
      skip_ws();
      if (at_end()) fail("unexpected end of input in an object");
      if (peek() == ',') {
        ++p_;
        continue;
      }
      if (peek() == '}') {
        ++p_;
        check_duplicates(from);
        keys_.resize(from);
        return;
      }
      fail("expected ',' or '}' in an object, got " + describe(peek()));
    }
  }

  void validate_array(int depth) {
    check_depth(depth);
    ++p_;  // '['
    skip_ws();
    if (!at_end() && peek() == ']') {
      ++p_;
      return;
    }
    while (true) {
      skip_ws();
      validate(depth);
      skip_ws();
      if (at_end()) fail("unexpected end of input in an array");
      if (peek() == ',') {
        ++p_;
        continue;
      }
      if (peek() == ']') {
        ++p_;
        return;
      }
      fail("expected ',' or ']' in an array, got " + describe(peek()));
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  Value number() {
    const size_t start = p_;
    bool integral = true;
    if (peek() == '-') ++p_;
    if (at_end() || !is_digit(peek())) fail("invalid number: expected a digit");
    if (peek() == '0') {
      ++p_;
      if (!at_end() && is_digit(peek())) fail("invalid number: leading zero");
    } else {
      while (!at_end() && is_digit(peek())) ++p_;
    }
    if (!at_end() && peek() == '.') {
      integral = false;
      ++p_;
      if (at_end() || !is_digit(peek())) fail("invalid number: expected a digit after '.'");
      while (!at_end() && is_digit(peek())) ++p_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integral = false;
      ++p_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++p_;
      if (at_end() || !is_digit(peek())) fail("invalid number: expected a digit in the exponent");
      while (!at_end() && is_digit(peek())) ++p_;
    }
    Value v;
    v.type = Type::Number;
    const char* b = s_ + start;
    const char* e = s_ + p_;
    // from_chars: correctly rounded and locale independent. It does not accept a leading '+', which
    // JSON does not allow either.
    const auto rd = std::from_chars(b, e, v.number);
    if (rd.ec == std::errc::result_out_of_range) {
      // Overflow is an error. A negative exponent means underflow, which is a legitimate value; it is
      // read as (signed) zero, the nearest double up to the subnormal range.
      const char* ex = b;
      while (ex < e && *ex != 'e' && *ex != 'E') ++ex;
      if (!(ex + 1 < e && ex[1] == '-')) fail("number out of range", start);
      v.number = *b == '-' ? -0.0 : 0.0;
    } else if (rd.ec != std::errc() || rd.ptr != e) {
      fail("invalid number", start);
    }
    if (integral) {
      int64_t iv = 0;
      const auto ri = std::from_chars(b, e, iv);
      if (ri.ec == std::errc() && ri.ptr == e) {
        v.is_int = true;
        v.integer = iv;
      }
    }
    return v;
  }

  unsigned hex4() {
    if (n_ - p_ < 4) fail("truncated \\u escape");
    unsigned cp = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[p_ + static_cast<size_t>(i)];
      unsigned d;
      if (c >= '0' && c <= '9')
        d = static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f')
        d = static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        d = static_cast<unsigned>(c - 'A' + 10);
      else
        fail("invalid hex digit in \\u escape", p_ + static_cast<size_t>(i));
      cp = cp * 16 + d;
    }
    p_ += 4;
    return cp;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // One UTF-8 encoded code point starting at p_ (first byte >= 0x80); validated and copied.
  void utf8_sequence(std::string& out) {
    const size_t at = p_;
    const unsigned char b0 = static_cast<unsigned char>(s_[p_]);
    int len;
    unsigned cp, min;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, cp = b0 & 0x07, min = 0x10000;
    } else {
      fail("invalid UTF-8 in a string", at);
    }
    if (n_ - p_ < static_cast<size_t>(len)) fail("truncated UTF-8 sequence in a string", at);
    for (int i = 1; i < len; ++i) {
      const unsigned char b = static_cast<unsigned char>(s_[p_ + static_cast<size_t>(i)]);
      if ((b & 0xC0) != 0x80) fail("invalid UTF-8 in a string", at);
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8 in a string", at);
    out.append(s_ + p_, static_cast<size_t>(len));
    p_ += static_cast<size_t>(len);
  }

  std::string string() {
    std::string out;
    string_into(out);
    return out;
  }

  void string_into(std::string& out) {
    ++p_;  // opening quote
    out.clear();
    while (true) {
      if (at_end()) fail("unterminated string");
      const char c = peek();
      const unsigned char u = static_cast<unsigned char>(c);
      if (c == '"') {
        ++p_;
        return;
      }
      if (u < 0x20) fail("raw control character " + describe(c) + " in a string (must be escaped)");
      if (u >= 0x80) {
        utf8_sequence(out);
        continue;
      }
      if (c != '\\') {  // a run of plain characters at once
        size_t e = p_ + 1;
        while (e < n_ && s_[e] != '"' && s_[e] != '\\' && static_cast<unsigned char>(s_[e]) >= 0x20 &&
               static_cast<unsigned char>(s_[e]) < 0x80)
          ++e;
        out.append(s_ + p_, e - p_);
        p_ = e;
        continue;
      }
      ++p_;
      if (at_end()) fail("unterminated escape in a string");
      const char e = peek();
      ++p_;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const size_t at = p_ - 2;
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in a \\u escape", at);
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (n_ - p_ < 6 || s_[p_] != '\\' || s_[p_ + 1] != 'u')
              fail("high surrogate not followed by a low surrogate escape", at);
            p_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate not followed by a low surrogate", at);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("invalid escape \\" + std::string(1, e) + " in a string", p_ - 2);
      }
    }
  }
};

// ---------------------------------------------------------------------------------- Value's lazy accessors
void MemberIter::load() {
  Parser r(owner_->text_, owner_->size_, Limits());
  r.keep(owner_->keep_);
  r.set_pos(pos_);
  r.read_item(owner_->type == Type::Object, cur_);
  after_ = r.pos();
}

MemberIter& MemberIter::operator++() {
  Parser r(owner_->text_, owner_->size_, Limits());
  r.set_pos(after_);  // past the current member (a container was skipped whole)
  pos_ = r.next_item(false);
  if (pos_ != std::string::npos) load();
  return *this;
}

Members Value::items() const { return Members{this}; }
Elements Value::elements() const { return Elements{this}; }

MemberIter Members::begin() const {
  MemberIter it;
  it.owner_ = v;
  it.pos_ = std::string::npos;
  if (v->type != Type::Object && v->type != Type::Array) return it;
  Parser r(v->text_, v->size_, Limits());
  r.set_pos(v->pos_);
  it.pos_ = r.next_item(true);
  if (it.pos_ != std::string::npos) it.load();
  return it;
}

MemberIter Members::end() const {
  MemberIter it;
  it.owner_ = v;
  it.pos_ = std::string::npos;
  return it;
}

ElemIter Elements::begin() const {
  ElemIter e;
  e.it_ = Members{v}.begin();
  return e;
}

ElemIter Elements::end() const {
  ElemIter e;
  e.it_ = Members{v}.end();
  return e;
}

std::optional<Value> Value::find(const std::string& key) const {
  if (type != Type::Object) return std::nullopt;
  for (const Member& m : items())
    if (m.first == key) return m.second;
  return std::nullopt;
}

size_t Value::size() const {
  if (type != Type::Object && type != Type::Array) return 0;
  size_t n = 0;
  Parser r(text_, size_, Limits());
  r.set_pos(pos_);
  Member skip;
  for (size_t p = r.next_item(true); p != std::string::npos; p = r.next_item(false)) {
    r.read_item(type == Type::Object, skip);
    ++n;
  }
  return n;
}

Value parse(const char* text, size_t size, const Limits& limits) { return Parser(text, size, limits).document(); }

Value parse(const std::string& text, const Limits& limits) {
  auto keep = std::make_shared<const std::string>(text);
  Parser p(keep->data(), keep->size(), limits);
  p.keep(keep);
  return p.document();
}

}  // namespace json
}  // namespace robuq
