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

enum class WeightChoice { kAuto, kF32, kBF16 };

// random_weights: `path` is a config.json or a directory holding one (tokenizer.json beside it
// is used if present).
LoadedModel load_model(const std::string& path, bool random_weights, uint64_t seed,
                       WeightChoice weights);

// The backend's weight type for a config under a choice (auto: float32 for float32 checkpoints
// up to 2 B parameters, bf16 otherwise).
cpu::WeightType resolve_weight_type(const ModelConfig& config, WeightChoice choice,
                                    bool checkpoint_is_f32);

}  // namespace hybridgen
