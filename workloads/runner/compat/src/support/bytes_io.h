// SPDX-License-Identifier: Apache-2.0
// autlearn: minimal stand-in for src/support/bytes_io.h (API only)
//
// In-memory streams: BytesInStream reads a byte buffer it does not own (the buffer must outlive the stream;
// ffi::Bytes are kept alive by reference count), BytesOutStream appends to a std::string.
#ifndef TVM_SUPPORT_BYTES_IO_H_
#define TVM_SUPPORT_BYTES_IO_H_

#include <tvm/ffi/error.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesInStream(const std::string& data) : data_(data.data()), size_(data.size()) {}
  explicit BytesInStream(std::string&&) = delete;  // would dangle
  explicit BytesInStream(const ffi::Bytes& data) : keep_(data), data_(keep_.data()), size_(keep_.size()) {}
  BytesInStream(const void* data, size_t size) : data_(static_cast<const char*>(data)), size_(size) {}
  BytesInStream(const BytesInStream&) = delete;  // data_ may point into keep_
  BytesInStream& operator=(const BytesInStream&) = delete;

  size_t Read(void* ptr, size_t size) final {
    size_t n = std::min(size, size_ - pos_);
    if (n != 0) std::memcpy(ptr, data_ + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "BytesInStream is read-only";
    return 0;
  }

 private:
  ffi::Bytes keep_;
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesOutStream(std::string* out) : out_(out) {}

  size_t Read(void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "BytesOutStream is write-only";
    return 0;
  }
  size_t Write(const void* ptr, size_t size) final {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BYTES_IO_H_
