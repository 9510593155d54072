// Where the CPU backend's attention keeps K/V and how it computes attention: the one-tier
// reference (FullAttention, the KV-cache manager) or the hybrid runtime's tiers
// (runtime/hybrid_attention.h). The Transformer calls these hooks at fixed points of every
// forward step, so the hybrid runtime can run its CPU stage one layer ahead of the device stage.
#pragma once
#include <cstdint>

#include "kv/kv_cache.h"

namespace hybridgen {

struct Batch;

class AttentionRunner {
 public:
  virtual ~AttentionRunner() = default;
  // Before layer 0 of a forward step; pos: [n] positions of the batch's tokens.
  virtual void begin_step(const Batch& batch, const int32_t* pos) = 0;
  // At the start of layer il: x is the layer's input (residual stream), [n, d_model]. The
  // hybrid runtime speculates layer il+1's query from it (paper §4.2.1).
  virtual void layer_input(int il, const float* x) = 0;
  // The layer's attention: q [n, n_heads, head_dim] and k, v [n, n_kv_heads, head_dim] of the
  // batch's tokens (RoPE applied). Stores k, v and writes out: [n, n_heads, head_dim].
  virtual void attend(int il, const float* q, const float* k, const float* v, float* out) = 0;
  // After the last layer (or when the step is abandoned by an exception: end_step is not
  // called, and the next begin_step recovers).
  virtual void end_step() = 0;
};

// The reference: every token in one tier (the KV-cache manager), exact attention.
class FullAttention final : public AttentionRunner {
 public:
  FullAttention(kv::KvCacheManager& cache, int n_heads, int head_dim, int sliding_window);
  void begin_step(const Batch& batch, const int32_t* pos) override;
  void layer_input(int, const float*) override {}
  void attend(int il, const float* q, const float* k, const float* v, float* out) override;
  void end_step() override {}

 private:
  kv::KvCacheManager& cache_;
  int n_heads_, head_dim_, sliding_window_;
  const Batch* batch_ = nullptr;
  const int32_t* pos_ = nullptr;
};

}  // namespace hybridgen
