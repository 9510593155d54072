// Fallbacks when the library is built without the CUDA backend (no nvcc at configure time).
#ifndef HYBRIDGEN_WITH_CUDA
#include "runtime/backend.h"
#include "util/check.h"

namespace hybridgen {

bool cuda_available(std::string* why) {
  if (why)
    *why = "this build of libhybridgen has no CUDA backend (nvcc was not found at configure time)";
  return false;
}

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig&, const ModelWeights&, int, int,
                                           const CudaBackendOptions&) {
  std::string why;
  cuda_available(&why);
  fail("--device cuda: " + why);
}

runtime::DeviceBudget cuda_device_budget(const ModelConfig&, const ModelWeights&, int, int,
                                         uint64_t) {
  std::string why;
  cuda_available(&why);
  fail("--device cuda: " + why);
}

std::unique_ptr<memory::HostAllocator> make_cuda_pinned_allocator() {
  std::string why;
  cuda_available(&why);
  fail("--device cuda: " + why);
}

}  // namespace hybridgen
#endif
