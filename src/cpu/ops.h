// The CPU backend's element-wise and normalisation ops: the reference every other backend is
// compared against. All accumulate in float32; rows are independent and run OpenMP-parallel.
#pragma once
#include <cstdint>
#include <vector>

namespace hybridgen::kv {
class KvCacheManager;
}

namespace hybridgen::cpu {

// out[t, :] = table[ids[t], :]. table: [vocab, d]; out: [n, d].
void embedding(const float* table, const int32_t* ids, int n, int d, float* out);

// RMSNorm: out = x / sqrt(mean(x^2) + eps) * w. x, out: [n, d]; w: [d]. out may alias x.
void rms_norm(const float* x, const float* w, int n, int d, float eps, float* out);
// LayerNorm: out = (x - mean) / sqrt(var + eps) * w + b. Shapes as rms_norm.
void layer_norm(const float* x, const float* w, const float* b, int n, int d, float eps,
                float* out);

// Rotary embedding in place on x: [n, n_heads, head_dim], token t at positions[t].
// inv_freq: [rope_dim / 2]. neox: rotate (i, i + rope_dim/2); else (2i, 2i + 1).
void rope(float* x, int n, int n_heads, int head_dim, int rope_dim, const int32_t* positions,
          const float* inv_freq, bool neox);

// SwiGLU on a fused gate|up buffer: gu: [n, 2 * d_ff] (gate in the first half of each row);
// out: [n, d_ff] = silu(gate) * up.
void swiglu(const float* gu, int n, int d_ff, float* out);
// In-place ReLU over n elements.
void relu(float* x, int64_t n);
// x += y over n elements.
void add(float* x, const float* y, int64_t n);

// Causal GQA attention for a batch of tokens from possibly different sequences, reading K/V
// from the KV-cache manager.
//   q:   [n, n_heads, head_dim]  queries (RoPE applied)
//   out: [n, n_heads, head_dim]
//   token t belongs to sequence seq[t], at position pos[t], and attends to cached positions
//   [max(0, pos[t] - window + 1), pos[t]] of that sequence (window 0 = unlimited).
// PRECOND: every attended position was written at `layer`.
void attention(const float* q, int n, int n_heads, int head_dim, const int32_t* seq,
               const int32_t* pos, const kv::KvCacheManager& cache, int layer, float scale,
               int window, float* out);

// Numerically stable in-place softmax over n values.
void softmax(float* x, int n);

}  // namespace hybridgen::cpu
