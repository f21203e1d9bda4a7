// A std::vector allocator with 64-byte (cache-line) alignment, for buffers whose rows the vector kernels read
// and write 64 bytes at a time: large default-aligned blocks come from mmap with a 16-byte header, so every
// such access would straddle two cache lines (measured ~5 % of an XL/2 forward on an Intel AMX host).
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace robuq {

template <class T>
struct CacheAligned {
  using value_type = T;
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const CacheAligned<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const CacheAligned<U>&) const noexcept {
    return false;
  }
};

template <class T>
using aligned_vector = std::vector<T, CacheAligned<T>>;

}  // namespace robuq
