// The model's forward pass on the CPU backend: one explicit per-layer sequence of steps, for
// every architecture (Llama, Mistral, Qwen2, OPT differ only in flags of ModelConfig).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "runtime/attention_runner.h"
#include "runtime/backend.h"

namespace hybridgen {

// One forward step: tokens of one or more sequences (prefill chunks and decode tokens alike).
// Each token is appended at the end of its sequence's cache, in the order given.
struct Batch {
  std::vector<int32_t> tokens;       // [n]
  std::vector<int32_t> seq;          // [n] KV-cache sequence of each token
  std::vector<uint8_t> want_logits;  // [n] 1: return this token's next-token logits

  void add(int32_t token, int32_t seq_id, bool logits) {
    tokens.push_back(token);
    seq.push_back(seq_id);
    want_logits.push_back(logits ? 1 : 0);
  }
  int size() const { return static_cast<int>(tokens.size()); }
};

class Transformer : public Backend {
 public:
  Transformer(ModelConfig config, ModelWeights weights);

  // Runs the batch through all layers, appending K/V to `cache`. logits (resized):
  // [number of tokens with want_logits, vocab], in batch order.
  // Throws if a token id is outside the vocabulary or a sequence's context is full.
  void forward(const Batch& batch, kv::KvCacheManager& cache, std::vector<float>& logits) override;

  const ModelConfig& config() const override { return config_; }
  std::string name() const override { return "cpu"; }
  const ModelWeights& weights() const { return weights_; }
  void set_tensor_callback(TensorCallback cb) override { callback_ = std::move(cb); }
  // Attention through `runner` (not owned; the hybrid runtime) instead of the one-tier
  // FullAttention over the KV-cache manager. nullptr restores the default.
  void set_attention_runner(AttentionRunner* runner) { runner_ = runner; }
  // Layer il's speculative-query inputs for the hybrid runtime's CPU stage.
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  void norm(const float* x, const std::vector<float>& w, const std::vector<float>& b, int n,
            float* out) const;

  ModelConfig config_;
  ModelWeights weights_;
  std::vector<float> inv_freq_;  // [rope_dim / 2]
  TensorCallback callback_;
  AttentionRunner* runner_ = nullptr;
};

}  // namespace hybridgen
