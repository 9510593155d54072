// The CUDA device stage's factory in a build without CUDA (no nvcc at configure time).
#ifndef HYBRIDGEN_WITH_CUDA
#include "runtime/cuda_device_stage.h"
#include "util/check.h"

namespace hybridgen::runtime {

bool cuda_device_stage_available(std::string* why) {
  if (why)
    *why = "this build of libhybridgen has no CUDA backend (nvcc was not found at configure time)";
  return false;
}

EvictionCounters cuda_eviction_counters(const DeviceStage&) { return {}; }

std::unique_ptr<DeviceStage> make_cuda_device_stage(const ModelDims&, memory::HostAllocator&,
                                                    const CudaStageOptions&) {
  std::string why;
  cuda_device_stage_available(&why);
  fail("the CUDA device stage: " + why);
}

}  // namespace hybridgen::runtime
#endif
