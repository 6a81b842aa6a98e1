// SPDX-License-Identifier: Apache-2.0
// autlearn: minimal stand-in for src/support/base64.h (API only)
//
// Base64 (RFC 4648 alphabet, '=' padding, no line breaks) layered on another Stream: Base64OutStream encodes what is
// written to it (call Finish() once at the end to emit the last group), Base64InStream decodes (call
// InitPosition() before the first Read; whitespace is skipped, '=' or the end of the input ends the data).
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

namespace base64 {
inline const char* Alphabet() { return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"; }
// 0..63 for an alphabet character, -1 otherwise.
inline int Value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
inline bool IsSpace(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
}  // namespace base64

class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Read(void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }
  size_t Write(const void* ptr, size_t size) final {
    const unsigned char* p = static_cast<const unsigned char*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[pending_++] = p[i];
      if (pending_ == 3) EmitGroup();
    }
    return size;
  }
  // Encodes the final partial group (with '=' padding) and flushes to the underlying stream.
  void Finish() {
    if (pending_ != 0) EmitGroup();
    Flush();
  }

 private:
  void EmitGroup() {
    const char* a = base64::Alphabet();
    uint32_t v = (uint32_t{group_[0]} << 16) | (pending_ > 1 ? uint32_t{group_[1]} << 8 : 0) |
                 (pending_ > 2 ? uint32_t{group_[2]} : 0);
    char enc[4] = {a[(v >> 18) & 63], a[(v >> 12) & 63], pending_ > 1 ? a[(v >> 6) & 63] : '=',
                   pending_ > 2 ? a[v & 63] : '='};
    buf_.append(enc, 4);
    pending_ = 0;
    if (buf_.size() >= kFlushAt) Flush();
  }
  void Flush() {
    if (!buf_.empty()) out_->Write(buf_.data(), buf_.size());
    buf_.clear();
  }

  static constexpr size_t kFlushAt = 4096;
  Stream* out_;
  unsigned char group_[3] = {0, 0, 0};
  size_t pending_ = 0;
  std::string buf_;
};

class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* in) : in_(in) {}

  // Positions the stream at the first base64 character (skips leading whitespace).
  void InitPosition() {
    int c;
    while ((c = NextChar()) >= 0 && base64::IsSpace(static_cast<unsigned char>(c))) {
    }
    if (c >= 0) --in_pos_;  // NextChar only advances within the buffer it just filled
  }

  size_t Read(void* ptr, size_t size) final {
    unsigned char* out = static_cast<unsigned char*>(ptr);
    size_t n = 0;
    while (n < size) {
      if (dec_pos_ == dec_len_ && !DecodeGroup()) break;
      out[n++] = decoded_[dec_pos_++];
    }
    return n;
  }
  size_t Write(const void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  // Next input byte, or -1 at the end of the underlying stream.
  int NextChar() {
    if (in_pos_ == in_len_) {
      in_len_ = in_->Read(in_buf_, sizeof(in_buf_));
      in_pos_ = 0;
      if (in_len_ == 0) return -1;
    }
    return static_cast<unsigned char>(in_buf_[in_pos_++]);
  }
  // Decodes the next group of 4 characters into decoded_; false at the end of the data.
  bool DecodeGroup() {
    if (done_) return false;
    int vals[4];
    int k = 0;
    while (k < 4) {
      int c = NextChar();
      if (c < 0 || c == '=') break;
      if (base64::IsSpace(static_cast<unsigned char>(c))) continue;
      int v = base64::Value(static_cast<unsigned char>(c));
      if (v < 0) TVM_FFI_THROW(ValueError) << "invalid base64 character " << c;
      vals[k++] = v;
    }
    if (k < 4) done_ = true;
    if (k == 1) TVM_FFI_THROW(ValueError) << "truncated base64 data";
    if (k == 0) return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 6) | (i < k ? static_cast<uint32_t>(vals[i]) : 0);
    decoded_[0] = static_cast<unsigned char>(v >> 16);
    decoded_[1] = static_cast<unsigned char>(v >> 8);
    decoded_[2] = static_cast<unsigned char>(v);
    dec_len_ = static_cast<size_t>(k - 1);  // 4 chars -> 3 bytes, 3 -> 2, 2 -> 1
    dec_pos_ = 0;
    return true;
  }

  Stream* in_;
  char in_buf_[4096];
  size_t in_len_ = 0, in_pos_ = 0;
  unsigned char decoded_[3] = {0, 0, 0};
  size_t dec_len_ = 0, dec_pos_ = 0;
  bool done_ = false;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
