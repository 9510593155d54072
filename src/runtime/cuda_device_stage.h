// The CUDA device stage of the split runtime (runtime/device_stage.h), implemented in
// kernels/cuda_device_stage.cu when the library is built with CUDA; without CUDA the factory
// throws (src/runtime/cuda_device_stage_stub.cpp) and cuda_device_stage_available() says why.
//
// What it keeps on the device and does there:
//   - the window ring per (sequence, layer): bf16 K and V, [n_kv_heads, W slots, head_dim]
//     (CudaWindowStore); writes convert float32 K/V to bf16 on the device; eviction during
//     decode is batched per step: each evicted slot is copied device-to-device into one step
//     buffer, the whole step's evictions go device-to-host in ONE cudaMemcpyAsync on the copy
//     stream (ordered by events) into pinned staging at the step's end, and are scattered into
//     the host stores at the next step's begin (DeviceStage::sync_host_stores); exact attention's
//     bulk appends (prefill) export straight into the host stores' rows, waited for;
//   - decode: the CPU stage's logits and staged V rows go host-to-device on a copy stream, the
//     compute stream waits on its event; one kernel per layer computes the window's and the new
//     token's logits, softmax over the CPU part + window + new token, and the value aggregation
//     (order-free: the same terms as monolithic attention, summed in another order);
//   - exact attention (prefill, aog): the offloaded K/V go host-to-device (bf16) and one kernel
//     attends over them and the window;
//   - T_gpu from CUDA events (begin_step / step_seconds).
//
// host_io: the runtime's q/k/v/out and layer inputs are HOST pointers (the CPU Transformer
// drives the stage; the tests compare it with CpuDeviceStage layer by layer): the stage copies
// them in and out. Without host_io they are device pointers: the CUDA backend's forward pass
// (kernels/cuda_backend.cpp) on its own stream (CudaStageOptions::stream).
#pragma once
#include <memory>
#include <string>

#include "memory/allocator.h"
#include "runtime/device_stage.h"

namespace hybridgen::runtime {

struct CudaStageOptions {
  bool host_io = true;
  // The CUDA backend's stream (a cudaStream_t), used as the stage's compute stream so that the
  // stage's kernels and copies are ordered with the layers' (not owned). Null: the stage makes
  // its own.
  void* stream = nullptr;
  // > 0: the decode and exact-attention buffers are allocated once, at construction, for this
  // context and batch (no allocation inside a step; H2O's scores excepted), aog's prefetch
  // buffers too when `aog`. 0: grown on demand.
  int reserve_ctx = 0;
  int reserve_sequences = 0;
  bool aog = false;
};

// What the step-batched eviction did so far (tests: one device-to-host copy per decode step
// with evictions, every evicted row published).
struct EvictionCounters {
  uint64_t steps_shipped = 0;   // decode steps whose evictions were shipped
  uint64_t copies = 0;          // device-to-host copies issued for them
  uint64_t rows_published = 0;  // (sequence, layer) tokens scattered into the host stores
};
// The counters of a CUDA device stage; all zero for any other stage.
EvictionCounters cuda_eviction_counters(const DeviceStage& stage);

// True when this build has the CUDA device stage and a GPU that runs its kernels.
bool cuda_device_stage_available(std::string* why);

// Throws hybridgen::Error when !cuda_device_stage_available().
std::unique_ptr<DeviceStage> make_cuda_device_stage(const ModelDims& dims,
                                                    memory::HostAllocator& alloc,
                                                    const CudaStageOptions& options = {});

}  // namespace hybridgen::runtime
