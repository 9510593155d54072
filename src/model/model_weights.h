// A model's weights in the CPU backend's layout, loaded from an HF directory, a GGUF file, or
// generated (seeded) for a preset config.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cpu/linear.h"
#include "model/embedding_table.h"
#include "model/model_config.h"

namespace hybridgen {

struct LayerWeights {
  std::vector<float> attn_norm, attn_norm_b;  // [d_model] (the _b only with LayerNorm)
  cpu::Linear qkv;                            // [(n_heads + 2 n_kv_heads) * head_dim, d_model]
  cpu::Linear out;                            // [d_model, n_heads * head_dim]
  std::vector<float> ffn_norm, ffn_norm_b;    // [d_model]
  cpu::Linear up;    // SwiGLU: gate|up fused [2 d_ff, d_model]; ReLU FFN: fc1 [d_ff, d_model]
  cpu::Linear down;  // [d_model, d_ff]
};

struct ModelWeights {
  EmbeddingTable token_embedding;               // [vocab, d_model], as stored when block-quantized
  std::vector<float> position_embedding;        // [max_positions + position_offset, d_model] (OPT)
  std::vector<float> final_norm, final_norm_b;  // [d_model]
  cpu::Linear lm_head;                          // [vocab, d_model] (a copy when tied)
  std::vector<LayerWeights> layers;
  uint64_t bytes() const;
  // Weight bytes one decode step streams from memory: every linear, the LM head and the norms;
  // not the embedding tables (one row per token). The floor of CPU decode is this over the host
  // read bandwidth.
  uint64_t decode_step_bytes() const;
  // "f32", "bf16", "native" (every projection quantized as stored) or "native+bf16" (some
  // dequantized: types without a native GEMV).
  std::string format_name() const;
};

// A checkpoint's tensors by name, as float32, with shape checks: the loader asks for each
// tensor by its name in the checkpoint's own naming scheme.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // Throws naming the file and the tensor if it is missing or its shape is not `shape`.
  virtual std::vector<float> load(const std::string& name,
                                  const std::vector<int64_t>& shape) const = 0;
  virtual std::string describe() const = 0;  // the file or directory, for messages
  // The tensor as stored when it is block-quantized (GGUF), shape checked as load() does;
  // nullptr for plain types and for sources without quantized tensors.
  virtual const TensorInfo* quantized(const std::string& name,
                                      const std::vector<int64_t>& shape) const {
    (void)name;
    (void)shape;
    return nullptr;
  }
};

// Which checkpoint naming scheme the weights use.
enum class Naming { kHuggingFace, kGguf };

// type kQuant keeps every projection whose tensors are all stored in a type with a native
// GEMV (cpu/quant/quant_gemv.h) as stored; the others are dequantized to bf16, with a log line
// naming the tensor and its type.
ModelWeights load_weights(const ModelConfig& config, const TensorSource& source, Naming naming,
                          cpu::WeightType type);

// Seeded random weights of the config's shapes (normal-like, std 0.02; norms 1; biases small):
// deterministic for a given seed whatever the thread count.
ModelWeights random_weights(const ModelConfig& config, uint64_t seed, cpu::WeightType type);

}  // namespace hybridgen
