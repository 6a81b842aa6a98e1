// SPDX-License-Identifier: Apache-2.0
// autlearn: minimal stand-in for src/support/utils.h (API only)
//
// Only the helper the runner's runtime sources use (thread_pool.cc validates CPU ids with IsNumber).
#ifndef TVM_SUPPORT_UTILS_H_
#define TVM_SUPPORT_UTILS_H_

#include <string>

namespace tvm {
namespace support {

// True for a non-empty string of decimal digits only.
inline bool IsNumber(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_UTILS_H_
