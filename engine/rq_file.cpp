// .rq container: mapping and header validation (see rq_file.h).
#include "rq_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "errors.h"
#include "half.h"
#include "json.h"

#include <optional>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the .rq loader reads little-endian tensors in place; big-endian hosts are not supported"
#endif

namespace robuq {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::U8: return "U8";
    case DType::I32: return "I32";
  }
  return "?";
}

int64_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::U8: return 1;
    case DType::I32: return 4;
  }
  return 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorEntry::shape_str() const { return robuq::shape_str(shape); }

namespace {

// Closes a descriptor on scope exit.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

[[noreturn]] void io_fail(const std::string& path, const char* what) {
  const int err = errno;
  throw IoError(err, path, std::string(what) + " '" + path + "': " + std::strerror(err));
}

}  // namespace

RqFile::RqFile(const std::string& path) : path_(path) {
  open_file();
  parse_header();
}

RqFile::RqFile(FromMemory, const void* data, size_t size, const std::string& name) : path_(name) {
  size_ = static_cast<uint64_t>(size);
  check_size();
  buffer_.reset(new uint8_t[size]);
  std::memcpy(buffer_.get(), data, size);
  base_ = buffer_.get();
  mapped_ = false;
  parse_header();
}

std::unique_ptr<RqFile> RqFile::from_memory(const void* data, size_t size, const std::string& name) {
  if (data == nullptr && size != 0) throw std::invalid_argument("RqFile::from_memory: null data");
  return std::unique_ptr<RqFile>(new RqFile(FromMemory{}, data, size, name));
}

void RqFile::check_size() const {
  if (size_ < 8)
    throw FormatError("file is " + std::to_string(size_) + " bytes, too short for the 8-byte header length");
  if (size_ > static_cast<uint64_t>(std::numeric_limits<size_t>::max()))
    throw FormatError("file is too large to map on this platform");
}

RqFile::~RqFile() {
  if (mapped_ && base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), static_cast<size_t>(size_));
}

void RqFile::open_file() {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever (the regular-file
  // check below refuses it); it changes nothing for regular files.
  Fd f{::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (f.fd < 0) io_fail(path_, "cannot open");
  struct stat st;
  if (::fstat(f.fd, &st) != 0) io_fail(path_, "cannot stat");
  if (S_ISDIR(st.st_mode)) {
    errno = EISDIR;
    io_fail(path_, "cannot read");
  }
  if (!S_ISREG(st.st_mode)) throw FormatError("'" + path_ + "' is not a regular file");
  size_ = static_cast<uint64_t>(st.st_size);
  check_size();

  // ROBUQ_NO_MMAP=1 forces the read fallback (for tests and file systems where mapping misbehaves).
  const char* no_mmap = std::getenv("ROBUQ_NO_MMAP");
  void* p = MAP_FAILED;
  if (no_mmap == nullptr || *no_mmap == '\0' || *no_mmap == '0')
    p = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_PRIVATE, f.fd, 0);
  if (p != MAP_FAILED) {
    base_ = static_cast<const uint8_t*>(p);
    mapped_ = true;
    return;
  }
  // Fallback: read the whole file (e.g. a file system without mmap support). new[] of uint8_t gives
  // at least the alignment of max_align_t; misaligned tensors are copied anyway.
  buffer_.reset(new uint8_t[static_cast<size_t>(size_)]);
  size_t done = 0;
  while (done < size_) {
    const ssize_t r = ::pread(f.fd, buffer_.get() + done, static_cast<size_t>(size_ - done), static_cast<off_t>(done));
    if (r < 0) {
      if (errno == EINTR) continue;
      io_fail(path_, "cannot read");
    }
    if (r == 0) throw FormatError("file '" + path_ + "' shrank while being read");
    done += static_cast<size_t>(r);
  }
  base_ = buffer_.get();
  mapped_ = false;
}

void RqFile::parse_header() {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base_[i];
  if (n > kMaxHeaderBytes)
    throw FormatError("header length " + std::to_string(n) + " exceeds the limit of " +
                      std::to_string(kMaxHeaderBytes) + " bytes (not a .rq/safetensors file?)");
  if (n > size_ - 8)
    throw FormatError("header length " + std::to_string(n) + " exceeds the file size (" + std::to_string(size_) +
                      " bytes, so at most " + std::to_string(size_ - 8) + "): truncated file?");
  if (n < 2) throw FormatError("header length " + std::to_string(n) + " is too small for a JSON object");
  header_size_ = n;

  json::Value header;
  try {
    json::Limits lim;
    lim.max_size = static_cast<size_t>(kMaxHeaderBytes);
    lim.max_depth = 8;
    header = json::parse(reinterpret_cast<const char*>(base_ + 8), static_cast<size_t>(n), lim);
  } catch (const json::ParseError& e) {
    throw FormatError(std::string("header: ") + e.what());
  }
  if (header.type != json::Type::Object)
    throw FormatError(std::string("header: expected a JSON object, got ") + json::type_name(header.type));

  const uint64_t data_size = size_ - 8 - n;
  const uint8_t* data = base_ + 8 + n;

  tensors_.reserve(header.size());  // one scan of the text; no doubling peak for a header of many entries
  for (const auto& kv : header.items()) {
    const std::string& name = kv.first;
    const json::Value& v = kv.second;
    if (name == "__metadata__") {
      if (v.type != json::Type::Object) throw FormatError("header: __metadata__ must be an object of strings");
      for (const auto& m : v.items()) {
        if (m.second.type != json::Type::String)
          throw FormatError("__metadata__." + m.first + ": expected a string, got " + json::type_name(m.second.type));
        metadata_[m.first] = m.second.string;
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (name.empty()) throw FormatError("header: a tensor has an empty name");
    if (v.type != json::Type::Object) throw FormatError(where + ": entry must be an object");
    for (const auto& m : v.items())
      if (m.first != "dtype" && m.first != "shape" && m.first != "data_offsets")
        throw FormatError(where + ": unexpected field '" + m.first + "'");
    const std::optional<json::Value> dt = v.find("dtype");
    const std::optional<json::Value> sh = v.find("shape");
    const std::optional<json::Value> off = v.find("data_offsets");
    if (!dt || !sh || !off) throw FormatError(where + ": entry needs dtype, shape and data_offsets");

    TensorEntry t;
    t.name = name;
    if (dt->type != json::Type::String) throw FormatError(where + ": dtype must be a string");
    if (dt->string == "F32")
      t.dtype = DType::F32;
    else if (dt->string == "F16")
      t.dtype = DType::F16;
    else if (dt->string == "U8")
      t.dtype = DType::U8;
    else if (dt->string == "I32")
      t.dtype = DType::I32;
    else
      throw FormatError(where + ": unsupported dtype '" + dt->string + "' (a .rq file uses F32, F16, U8, I32)");

    if (sh->type != json::Type::Array) throw FormatError(where + ": shape must be an array");
    // Element count x item size, with overflow checks against the data size (which bounds everything).
    uint64_t bytes = static_cast<uint64_t>(dtype_size(t.dtype));
    bool zero = false;
    for (const json::Value& d : sh->elements()) {
      if (t.shape.size() == 8) throw FormatError(where + ": shape has more than 8 dimensions");
      if (d.type != json::Type::Number || !d.is_int || d.integer < 0)
        throw FormatError(where + ": shape entries must be non-negative integers");
      t.shape.push_back(d.integer);
      if (d.integer == 0) zero = true;
    }
    if (zero) {
      bytes = 0;
    } else {
      for (int64_t d : t.shape) {
        if (bytes > data_size / static_cast<uint64_t>(d))
          throw FormatError(where + ": shape " + t.shape_str() + " is larger than the data section (" +
                            std::to_string(data_size) + " bytes)");
        bytes *= static_cast<uint64_t>(d);
      }
    }

    std::vector<uint64_t> offsets;
    if (off->type == json::Type::Array)
      for (const json::Value& o : off->elements()) {
        if (offsets.size() == 2) break;
        if (o.type != json::Type::Number || !o.is_int || o.integer < 0)
          throw FormatError(where + ": data_offsets must be non-negative integers");
        offsets.push_back(static_cast<uint64_t>(o.integer));
      }
    if (off->type != json::Type::Array || offsets.size() != 2 || off->size() != 2)
      throw FormatError(where + ": data_offsets must be [begin, end]");
    t.begin = offsets[0];
    t.end = offsets[1];
    if (t.begin > t.end)
      throw FormatError(where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                        "] end before they begin");
    if (t.end > data_size)
      throw FormatError(where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                        "] run past the end of the data section (" + std::to_string(data_size) +
                        " bytes): truncated file?");
    if (t.end - t.begin != bytes)
      throw FormatError(where + ": data_offsets span " + std::to_string(t.end - t.begin) + " bytes but " +
                        dtype_name(t.dtype) + " " + t.shape_str() + " needs " + std::to_string(bytes));
    t.data = data + t.begin;
    tensors_.push_back(std::move(t));
  }
  // Names are unique (the JSON parser refuses duplicate keys), so the sorted order is strict.
  if (tensors_.size() > std::numeric_limits<uint32_t>::max()) throw FormatError("header: too many tensors");
  by_name_.resize(tensors_.size());
  for (size_t i = 0; i < by_name_.size(); ++i) by_name_[i] = static_cast<uint32_t>(i);
  std::sort(by_name_.begin(), by_name_.end(),
            [this](uint32_t a, uint32_t b) { return tensors_[a].name < tensors_[b].name; });

  // Sorted by offset, the tensors must cover the data section exactly: no overlaps, no gaps, nothing
  // after the last one (docs/rq-format.md; the safetensors library refuses anything else).
  std::vector<const TensorEntry*> order;
  for (const auto& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorEntry* a, const TensorEntry* b) {
    if (a->begin != b->begin) return a->begin < b->begin;
    return a->end != b->end ? a->end < b->end : a->name < b->name;
  });
  uint64_t covered = 0;
  const TensorEntry* prev = nullptr;
  auto span = [](const TensorEntry* t) {
    return "(bytes " + std::to_string(t->begin) + ".." + std::to_string(t->end) + ")";
  };
  for (const TensorEntry* t : order) {
    if (t->begin < covered)
      throw FormatError("tensor '" + t->name + "' " + span(t) + " overlaps tensor '" + prev->name + "' " + span(prev));
    if (t->begin > covered)
      throw FormatError("tensor '" + t->name + "' " + span(t) + " leaves a gap of " +
                        std::to_string(t->begin - covered) +
                        " bytes before it (tensors must cover the data section without gaps)");
    if (t->end > t->begin || prev == nullptr) prev = t;
    covered = std::max(covered, t->end);
  }
  if (covered != data_size)
    throw FormatError("the data section has " + std::to_string(data_size - covered) +
                      " bytes after the last tensor (tensors must cover it exactly)");
}

const TensorEntry* RqFile::find(const std::string& name) const {
  const auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                                   [this](uint32_t i, const std::string& key) { return tensors_[i].name < key; });
  return it != by_name_.end() && tensors_[*it].name == name ? &tensors_[*it] : nullptr;
}

const float* RqFile::f32(const TensorEntry& t) {
  const size_t n = static_cast<size_t>(t.numel());
  if (t.dtype == DType::F32) {
    if (reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) return reinterpret_cast<const float*>(t.data);
    owned_f32_.emplace_back(new float[n]);
    std::memcpy(owned_f32_.back().get(), t.data, n * sizeof(float));
    return owned_f32_.back().get();
  }
  if (t.dtype == DType::F16) {
    owned_f32_.emplace_back(new float[n]);
    half_to_float(t.data, static_cast<int64_t>(n), owned_f32_.back().get());
    return owned_f32_.back().get();
  }
  throw std::logic_error("RqFile::f32 on a " + std::string(dtype_name(t.dtype)) + " tensor");
}

const int32_t* RqFile::i32(const TensorEntry& t) {
  if (t.dtype != DType::I32) throw std::logic_error("RqFile::i32 on a " + std::string(dtype_name(t.dtype)) + " tensor");
  if (reinterpret_cast<uintptr_t>(t.data) % alignof(int32_t) == 0) return reinterpret_cast<const int32_t*>(t.data);
  const size_t n = static_cast<size_t>(t.numel());
  owned_i32_.emplace_back(new int32_t[n]);
  std::memcpy(owned_i32_.back().get(), t.data, n * sizeof(int32_t));
  return owned_i32_.back().get();
}

const uint8_t* RqFile::u8(const TensorEntry& t) const {
  if (t.dtype != DType::U8) throw std::logic_error("RqFile::u8 on a " + std::string(dtype_name(t.dtype)) + " tensor");
  return t.data;
}

}  // namespace robuq
