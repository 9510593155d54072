// A backend runs the model's forward pass: the CPU backend (Transformer, the reference) or the
// CUDA backend (kernels/). Both take positions and placement from the KV-cache manager.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "model/model_weights.h"

namespace hybridgen {

struct Batch;

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
};

// True when this build has the CUDA backend and a CUDA device is usable; else false with the
// reason in *why.
bool cuda_available(std::string* why);

// The CUDA backend for a model: uploads the weights (bf16), keeps K/V on the device for
// n_ctx x max_sequences tokens. Throws hybridgen::Error when CUDA is unavailable or the device
// lacks memory (saying what was asked, what is free and which flag lowers it).
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& config, const ModelWeights& weights,
                                           int n_ctx, int max_sequences);

}  // namespace hybridgen
