// SPDX-License-Identifier: Apache-2.0
// autlearn: minimal stand-in for include/tvm/support/serializer.h (API only)
//
// Serializer<T>: static Write(Stream*, const T&) / Read(Stream*, T*) -> bool. Encoding (little-endian, the layout
// TVM's serialized VM executables and tensors use):
//   trivially copyable T (integers, floats, enums, DLDataType, DLDevice): its raw bytes;
//   std::string, ffi::String: uint64 byte count, then the bytes;
//   std::vector<T>, ffi::Array<T>: uint64 element count, then the elements (one block for trivially copyable T);
//   std::pair<A, B>: first, then second.
// Other types specialise Serializer themselves (e.g. VMFuncInfo in tvm/runtime/vm/executable.h).
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

// Raw-byte encoding equals the little-endian wire format only on little-endian hosts (all our targets).
static_assert(TVM_FFI_IO_NO_ENDIAN_SWAP, "autlearn's tvm/support/serializer.h supports little-endian hosts only");

namespace detail {
inline bool ReadExact(Stream* strm, void* ptr, size_t size) { return strm->Read(ptr, size) == size; }

// uint64 length prefix; rejects lengths that do not fit size_t.
inline bool ReadCount(Stream* strm, size_t* n) {
  uint64_t v;
  if (!ReadExact(strm, &v, sizeof(v)) || v > static_cast<uint64_t>(SIZE_MAX)) return false;
  *n = static_cast<size_t>(v);
  return true;
}
inline void WriteCount(Stream* strm, size_t n) {
  uint64_t v = static_cast<uint64_t>(n);
  strm->Write(&v, sizeof(v));
}

template <typename Str>
bool ReadBytesInto(Stream* strm, Str* out) {  // out: std::string
  size_t n;
  if (!ReadCount(strm, &n)) return false;
  out->resize(n);
  return n == 0 || ReadExact(strm, &(*out)[0], n);
}
}  // namespace detail

// Primary template: trivially copyable types as raw bytes; anything else needs a specialisation.
template <typename T>
struct Serializer {
  static constexpr bool enabled = std::is_trivially_copyable<T>::value;
  static void Write(Stream* strm, const T& value) {
    static_assert(enabled, "no tvm::support::Serializer for this type");
    strm->Write(&value, sizeof(T));
  }
  static bool Read(Stream* strm, T* out) {
    static_assert(enabled, "no tvm::support::Serializer for this type");
    return detail::ReadExact(strm, out, sizeof(T));
  }
};

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& s) {
    detail::WriteCount(strm, s.size());
    if (!s.empty()) strm->Write(s.data(), s.size());
  }
  static bool Read(Stream* strm, std::string* out) { return detail::ReadBytesInto(strm, out); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& s) {
    detail::WriteCount(strm, s.size());
    if (s.size() != 0) strm->Write(s.data(), s.size());
  }
  static bool Read(Stream* strm, ffi::String* out) {
    std::string tmp;
    if (!detail::ReadBytesInto(strm, &tmp)) return false;
    *out = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename T, typename Alloc>
struct Serializer<std::vector<T, Alloc>> {
  static constexpr bool enabled = Serializer<T>::enabled;
  static constexpr bool kRaw = std::is_trivially_copyable<T>::value && !std::is_same<T, bool>::value;
  static void Write(Stream* strm, const std::vector<T, Alloc>& v) {
    detail::WriteCount(strm, v.size());
    if constexpr (kRaw) {
      if (!v.empty()) strm->Write(v.data(), v.size() * sizeof(T));
    } else {
      for (const T& x : v) Serializer<T>::Write(strm, x);
    }
  }
  static bool Read(Stream* strm, std::vector<T, Alloc>* out) {
    size_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    if constexpr (kRaw) {
      if (n > SIZE_MAX / sizeof(T)) return false;
      out->resize(n);
      return n == 0 || detail::ReadExact(strm, out->data(), n * sizeof(T));
    } else {
      out->clear();
      for (size_t i = 0; i < n; ++i) {  // element by element: a corrupt count cannot pre-allocate
        T x;
        if (!Serializer<T>::Read(strm, &x)) return false;
        out->push_back(std::move(x));
      }
      return true;
    }
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = Serializer<T>::enabled;
  static void Write(Stream* strm, const ffi::Array<T>& arr) {
    detail::WriteCount(strm, arr.size());
    for (const T& x : arr) Serializer<T>::Write(strm, x);
  }
  static bool Read(Stream* strm, ffi::Array<T>* out) {
    size_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    ffi::Array<T> arr;
    for (size_t i = 0; i < n; ++i) {
      T x;
      if (!Serializer<T>::Read(strm, &x)) return false;
      arr.push_back(std::move(x));
    }
    *out = std::move(arr);
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = Serializer<A>::enabled && Serializer<B>::enabled;
  static void Write(Stream* strm, const std::pair<A, B>& p) {
    Serializer<A>::Write(strm, p.first);
    Serializer<B>::Write(strm, p.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* out) {
    return Serializer<A>::Read(strm, &out->first) && Serializer<B>::Read(strm, &out->second);
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
