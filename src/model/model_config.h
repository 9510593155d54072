// Architecture hyper-parameters, from an HF config.json or GGUF metadata.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hybridgen {

class GgufFile;

enum class Arch { kLlama, kQwen2, kMistral, kOpt };
const char* arch_name(Arch a);

// How RoPE pairs dimensions. HF checkpoints rotate (i, i + d/2) ("NeoX" style); llama.cpp's
// converter permutes Llama's Q/K rows so GGUF llama models rotate (2i, 2i + 1).
enum class RopeStyle { kNeox, kInterleaved };

struct ModelConfig {
  Arch arch = Arch::kLlama;
  int n_layers = 0;
  int d_model = 0;     // hidden size
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (GQA when < n_heads)
  int head_dim = 0;
  int d_ff = 0;  // FFN inner size
  int vocab_size = 0;
  int max_positions = 0;  // the model's trained context

  float norm_eps = 1e-5f;
  bool layer_norm = false;   // LayerNorm with bias (OPT) instead of RMSNorm
  bool relu_ffn = false;     // fc1 -> ReLU -> fc2 (OPT) instead of SwiGLU
  bool qkv_bias = false;     // Qwen2, OPT
  bool linear_bias = false;  // biases on o_proj and FFN (OPT)
  bool tied_embeddings = false;
  bool learned_positions = false;  // OPT: position embeddings with an offset of 2
  int position_offset = 0;
  int sliding_window = 0;  // Mistral: attend to the last N positions (0 = all)

  // RoPE
  float rope_theta = 10000.f;
  RopeStyle rope_style = RopeStyle::kNeox;
  int rope_dim = 0;  // rotated dimensions (== head_dim for these models)
  // Llama-3 frequency scaling ("rope_type": "llama3"); factor 0 = off.
  float rope_scale_factor = 0.f;
  float rope_low_freq_factor = 1.f;
  float rope_high_freq_factor = 4.f;
  int rope_original_max_positions = 8192;
  // Explicit per-dimension-pair frequency divisors (GGUF rope_freqs.weight), if any.
  std::vector<float> rope_freq_factors;

  int32_t bos_id = -1, eos_id = -1;

  // Validates dimensions (positive, heads divide, ...); throws naming `source` and the field.
  void validate(const std::string& source) const;
  // Per-pair inverse frequencies [rope_dim / 2], with Llama-3 scaling applied.
  std::vector<float> rope_inv_freq() const;
  // Parameter count (embedding + layers + head), for memory estimates.
  int64_t n_params() const;
};

// Parses an HF config.json (model_type llama, mistral, qwen2, opt). Throws hybridgen::Error
// naming the file and the field on missing/invalid values or an unknown architecture.
ModelConfig parse_hf_config(const std::string& config_json_path);
// From GGUF metadata (general.architecture llama or qwen2).
ModelConfig parse_gguf_config(const GgufFile& gguf);

}  // namespace hybridgen
