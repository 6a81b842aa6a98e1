// SPDX-License-Identifier: Apache-2.0
// autlearn: minimal stand-in for include/tvm/support/io.h (API only)
//
// A byte stream with two virtual primitives (Read/Write of raw bytes) and typed helpers that go through
// tvm::support::Serializer<T> (serializer.h). Only what the runtime sources built by workloads/runner_build.py use.
#ifndef TVM_SUPPORT_IO_H_
#define TVM_SUPPORT_IO_H_

#include <cstddef>

namespace tvm {
namespace support {

template <typename T>
struct Serializer;  // defined in serializer.h (included at the end of this file)

class Stream {
 public:
  virtual ~Stream() = default;
  // Reads up to `size` bytes into `ptr`; returns how many were read (0 at the end).
  virtual size_t Read(void* ptr, size_t size) = 0;
  // Writes `size` bytes from `ptr`; returns how many were written.
  virtual size_t Write(const void* ptr, size_t size) = 0;

  // Typed helpers: the encoding of T is Serializer<T>'s.
  template <typename T>
  void Write(const T& value) {
    Serializer<T>::Write(this, value);
  }
  template <typename T>
  bool Read(T* out) {
    return Serializer<T>::Read(this, out);
  }
  // n consecutive values, no count prefix.
  template <typename T>
  void WriteArray(const T* data, size_t n) {
    for (size_t i = 0; i < n; ++i) Serializer<T>::Write(this, data[i]);
  }
  template <typename T>
  bool ReadArray(T* data, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (!Serializer<T>::Read(this, data + i)) return false;
    }
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#include <tvm/support/serializer.h>

#endif  // TVM_SUPPORT_IO_H_
