// SPDX-License-Identifier: Apache-2.0
// autlearn: minimal stand-in for include/tvm/support/cuda/nvtx.h (API only)
//
// NVTX profiling ranges are a CUDA feature; the CPU-only runner builds with TVM_NVTX_ENABLED=0, so a range is a
// no-op object.
#ifndef TVM_SUPPORT_CUDA_NVTX_H_
#define TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

#if defined(TVM_NVTX_ENABLED) && TVM_NVTX_ENABLED
#error "autlearn's tvm/support/cuda/nvtx.h is a no-op stand-in; build with TVM_NVTX_ENABLED=0"
#endif

namespace tvm {
namespace support {

// Scoped profiler range (no-op).
class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_CUDA_NVTX_H_
