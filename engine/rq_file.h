// The .rq container (safetensors; docs/rq-format.md, "Container"): the file mapped read-only, its
// header parsed and every tensor entry validated. Knows nothing about models; rq_spec.h does.
//
// Checks: 8-byte header length within limits (<= 64 MiB and <= file size - 8), the header a JSON object
// of tensor entries plus "__metadata__" (string -> string), each entry exactly {dtype, shape,
// data_offsets} with a known dtype (F32, F16, U8, I32), non-negative shape, end - begin == element count
// x dtype size, offsets within the data section, and the tensors covering the data section exactly (no
// overlaps, no gaps, nothing after the last one: the safetensors rule).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace robuq {

enum class DType { F32, F16, U8, I32 };
const char* dtype_name(DType t);
int64_t dtype_size(DType t);

struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;    // offsets relative to the data section
  const uint8_t* data = nullptr;  // the bytes in the mapping (any alignment)
  int64_t numel() const;
  std::string shape_str() const;  // "[a, b]"
};

std::string shape_str(const std::vector<int64_t>& shape);

class RqFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = uint64_t(64) << 20;

  // Throws IoError when the file cannot be opened or read, FormatError when the container is invalid.
  explicit RqFile(const std::string& path);
  // The same checks over bytes already in memory (a fuzzer, a file received over the network): the
  // bytes are copied (mapped() is false); `name` stands for the path in messages. Throws FormatError.
  static std::unique_ptr<RqFile> from_memory(const void* data, size_t size, const std::string& name = "<memory>");
  ~RqFile();
  RqFile(const RqFile&) = delete;
  RqFile& operator=(const RqFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  uint64_t header_size() const { return header_size_; }
  // false: read into memory (mmap failed, or the environment variable ROBUQ_NO_MMAP=1 asked for it)
  bool mapped() const { return mapped_; }

  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const TensorEntry* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Typed views. f32: an F32 tensor in place when 4-byte aligned, else copied; an F16 tensor converted to
  // float32. Copies live as long as the RqFile. The dtype must match (std::logic_error otherwise: the
  // caller has checked the dtype already).
  const float* f32(const TensorEntry& t);
  const int32_t* i32(const TensorEntry& t);
  const uint8_t* u8(const TensorEntry& t) const;

 private:
  std::string path_;
  uint64_t size_ = 0;
  uint64_t header_size_ = 0;
  const uint8_t* base_ = nullptr;
  bool mapped_ = false;
  std::unique_ptr<uint8_t[]> buffer_;  // the file's bytes when not mapped
  std::vector<TensorEntry> tensors_;
  // Indices into tensors_ sorted by name (find: binary search). A map's nodes and name copies cost ~110 bytes
  // per tensor; a header of many small entries must stay within a few times its size (docs/reliability.md).
  std::vector<uint32_t> by_name_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<float[]>> owned_f32_;
  std::vector<std::unique_ptr<int32_t[]>> owned_i32_;

  struct FromMemory {};
  RqFile(FromMemory, const void* data, size_t size, const std::string& name);
  void check_size() const;
  void open_file();
  void parse_header();
};

}  // namespace robuq
