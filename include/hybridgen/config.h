// Options of the public API: loading, sampling, generation.
#pragma once
#include <cstdint>
#include <string>

namespace hybridgen {

// Sampling, applied in llama.cpp's order: repetition penalty, top-k, top-p, min-p,
// temperature, then a seeded draw. temperature <= 0 means greedy (argmax).
struct SamplingParams {
  float temperature = 0.8f;
  int top_k = 40;               // <= 0: off
  float top_p = 0.95f;          // >= 1: off
  float min_p = 0.05f;          // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off; applied to tokens of the last repeat_last_n
  int repeat_last_n = 64;
  uint64_t seed = 0xC0FFEE;

  // Throws hybridgen::Error naming the field if a value is out of range.
  void validate() const;
};

// How weights are held for the CPU backend's GEMMs.
enum class WeightFormat {
  kAuto,  // f32 for float32 checkpoints up to 2 B parameters (exact); bf16 otherwise (speed)
  kF32,
  kBF16,
};

struct LoadOptions {
  // An HF model directory (config.json + *.safetensors + tokenizer.json) or a .gguf file.
  std::string model_path;
  // Seeded random weights of the shapes in model_path's config.json (a preset in models/):
  // no checkpoint needed. Tokenization is byte-level if the directory has no tokenizer.
  bool random_weights = false;
  uint64_t random_seed = 1;
  int n_ctx = 0;          // context size in tokens per sequence; 0: min(model's, 4096)
  int max_sequences = 1;  // sequences decoded together (batch)
  int n_threads = 0;      // CPU threads; 0: all cores
  WeightFormat weight_format = WeightFormat::kAuto;
  // Where the model runs: "cpu" (the reference backend) or "cuda" (all layers on the GPU).
  std::string device = "cpu";
};

struct GenerateOptions {
  int n_predict = 128;  // tokens to generate at most (< 0: until end of generation or context)
  SamplingParams sampling;
  bool stop_at_eog = true;  // stop at end-of-generation tokens (EOS, <|im_end|>, ...)
};

}  // namespace hybridgen
