// A backend runs the model's forward pass: the CPU backend (Transformer, the reference) or the
// CUDA backend (kernels/). Both take positions and placement from the KV-cache manager.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "memory/allocator.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "runtime/policy.h"

namespace hybridgen {

struct Batch;
namespace runtime {
class HybridRuntime;
}

// Called with each named intermediate of layer il (-1 outside layers), [n, width] row-major,
// HOST memory, the same names on every backend: "inp_embd"; per layer "attn_norm", "q", "k", "v"
// (after RoPE), "attn_out", "ffn_norm", "l_out"; "result_norm" (the rows that want logits). For
// dumps and cross-backend comparison; unset in normal runs (a device backend synchronises and
// copies each one to the host when set).
using TensorCallback =
    std::function<void(const char* name, int il, const float* data, int n, int width)>;

class Backend {
 public:
  virtual ~Backend() = default;
  // Runs the batch through all layers, appending K/V; logits: [tokens with want_logits, vocab].
  virtual void forward(const Batch& batch, kv::KvCacheManager& cache,
                       std::vector<float>& logits) = 0;
  virtual const ModelConfig& config() const = 0;
  virtual std::string name() const = 0;  // "cpu", "cuda"
  virtual void set_tensor_callback(TensorCallback cb) = 0;
  // The hybrid runtime the backend runs decode attention through (policy != full), or null.
  virtual runtime::HybridRuntime* hybrid_runtime() { return nullptr; }
};

// True when this build has the CUDA backend and a CUDA device is usable; else false with the
// reason in *why.
bool cuda_available(std::string* why);

// How the CUDA backend runs attention.
struct CudaBackendOptions {
  // Null: policy full (bf16 K/V of the whole context of every sequence slot on the device).
  // Else every attention call goes through the hybrid runtime with the CUDA device stage
  // (runtime/cuda_device_stage.h): a bf16 window per sequence and layer on the device, the rest
  // in host stores from host_alloc (required then; pinned memory: make_cuda_pinned_allocator).
  const runtime::HybridConfig* hybrid = nullptr;
  memory::HostAllocator* host_alloc = nullptr;
};

// The CUDA backend for a model: uploads the weights (bf16), keeps K/V on the device as the
// options say. Throws hybridgen::Error when CUDA is unavailable or the device lacks memory
// (saying what was asked, what is free and which flags lower it: -c, -b, --window,
// --gpu-memory-mb).
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& config, const ModelWeights& weights,
                                           int n_ctx, int max_sequences,
                                           const CudaBackendOptions& options = {});

// What --policy auto weighs (runtime::choose_auto_policy) for this model on the current CUDA
// device: free memory from cudaMemGetInfo, the weights as the backend uploads them (bf16), the
// activations at the largest batch, bf16 K/V per token for full and for the hybrid
// window; cap_bytes from --gpu-memory-mb. Throws when CUDA is unavailable.
runtime::DeviceBudget cuda_device_budget(const ModelConfig& config, const ModelWeights& weights,
                                         int n_ctx, int max_sequences, uint64_t cap_bytes);

// Page-locked host memory (cudaHostAlloc) for the hybrid runtime's host stores and staging on a
// GPU: copies from and to it are truly asynchronous. Throws when CUDA is unavailable.
std::unique_ptr<memory::HostAllocator> make_cuda_pinned_allocator();

}  // namespace hybridgen
