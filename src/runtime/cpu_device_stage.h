// The CPU backend's side of the split runtime (runtime/device_stage.h): the reference device
// stage, with the "device" being host memory, and the speculative query from the CPU backend's
// weights.
#pragma once
#include <vector>

#include "memory/allocator.h"
#include "runtime/device_stage.h"

namespace hybridgen {
class Transformer;
}

namespace hybridgen::runtime {

ModelDims dims_of(const Transformer& model);

// norm_il(x) W_q,il (+ bias), RoPE at pos, from the Transformer's host weights (read-only).
class CpuQueryProvider final : public QueryProvider {
 public:
  explicit CpuQueryProvider(const Transformer& model) : model_(model) {}
  void query(int il, const float* x, int n, const int32_t* pos, float* q) const override;

 private:
  const Transformer& model_;
};

// Window ring in host memory (kv::HostWindowStore), host loops for the merge and for exact
// attention. Calls run on the calling thread's OpenMP team.
class CpuDeviceStage final : public DeviceStage {
 public:
  CpuDeviceStage(const ModelDims& dims, memory::HostAllocator& alloc);
  const char* name() const override { return "cpu"; }
  kv::WindowFactory window_factory() override;
  const float* to_host(const float* src, size_t, std::vector<float>&) override { return src; }
  void decode(int il, const DecodeRow* rows, int n) override;
  ExactResult exact(int il, const ExactBatch& b, bool stream_offloaded) override;

 private:
  void decode_row(const DecodeRow& r);
  ModelDims d_;
  float scale_;
  memory::HostAllocator& alloc_;
  // exact(): per distinct sequence of the step, its K and V as contiguous float32
  // [n_kv_heads, length, head_dim] (offloaded rows widened from bf16, window rows in position
  // order): the same layout full attention reads, so the attention loop is full's. Reused.
  std::vector<std::vector<float>> seq_k_, seq_v_;
};

}  // namespace hybridgen::runtime
