// Opens a model path (HF directory or .gguf), or a preset for random weights, and produces its
// config, weights and tokenizer.
#pragma once
#include <memory>
#include <string>

#include "cpu/linear.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "tokenizer/tokenizer.h"

namespace hybridgen {

struct LoadedModel {
  ModelConfig config;
  ModelWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the source has none (random presets)
  std::string source;
};

// kNative: GGUF quantized blocks as stored, 16-bit decode activations (projections in types
// without a native GEMV, and non-quantized checkpoints, fall back to bf16). kNativeQ8: the
// same with llama.cpp's 8-bit activations.
// kAutoFloat: auto without native (for backends that upload float weights).
enum class WeightChoice { kAuto, kF32, kBF16, kNative, kNativeQ8, kAutoFloat };

// random_weights: `path` is a config.json or a directory holding one (tokenizer.json beside it
// is used if present).
LoadedModel load_model(const std::string& path, bool random_weights, uint64_t seed,
                       WeightChoice weights);

// The backend's weight type for a config under a choice (auto: float32 for float32 checkpoints
// up to 2 B parameters; native (16-bit activations) for quantized GGUF files where
// native_is_auto_here() (see its table); bf16 otherwise).
cpu::WeightType resolve_weight_type(const ModelConfig& config, WeightChoice choice,
                                    bool checkpoint_is_f32, bool checkpoint_is_quantized = false);
// Whether auto picks native weights for quantized checkpoints on this machine's GEMV path.
bool native_is_auto_here();

}  // namespace hybridgen
