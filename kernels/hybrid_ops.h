// Kernels of the CUDA device stage of the split hybrid runtime (kernels/cuda_device_stage.cpp),
// as plain C++ host launchers (no CUDA header needed, C++17 like the .cu files). Every pointer is
// DEVICE memory; shapes in the comments. Launchers are asynchronous on `stream` and throw
// hybridgen::Error if the launch fails.
#pragma once
#include <cstdint>

#include "ops_api.h"  // Stream

namespace hybridgen::cuda {

constexpr int kHybridMaxHeadDim = 256;

// One decode row (a sequence's new token) at one layer, as the merge kernel reads it.
struct RowDesc {
  const float* q;              // [n_heads, hd]
  const float* k_new;          // [n_kv_heads, hd]
  const float* v_new;          // [n_kv_heads, hd]
  const uint16_t* wk;          // window ring K [n_kv_heads, cap, hd] bf16 (null: empty window)
  const uint16_t* wv;          // window ring V
  const float* cpu_logits;     // [n_heads, k] (null: k == 0, or cpu_keys given)
  const uint16_t* cpu_keys;    // [n_kv_heads, k, hd] bf16 (exact-selected: scored here with q)
  const uint16_t* cpu_values;  // [n_kv_heads, k, hd] bf16
  float* out;                  // [n_heads, hd]
  float* scores;               // scratch [n_heads, score_stride]: probabilities on exit
  int cap, first_slot, nw, n_off, lo_pos, k, score_stride;
};

// One sequence of an exact-attention call.
struct SeqDesc {
  const uint16_t* ok;  // offloaded K [n_kv_heads, n_off, hd] bf16 (device copy of the store)
  const uint16_t* ov;  // offloaded V
  const uint16_t* wk;  // window ring K [n_kv_heads, cap, hd] (null: empty window)
  const uint16_t* wv;
  float* heavy;  // [n_kv_heads, len] attention mass (null: not accumulated)
  int n_off, cap, first_slot, len;
};

// Window writes: n tokens' float32 K/V into ring slots [slot, slot + n) (no wrap), as bf16.
void window_write(const float* k,  // [n, n_kv_heads, hd]
                  const float* v,  // [n, n_kv_heads, hd]
                  int n, int n_kv_heads, int hd, int cap, int slot,
                  uint16_t* wk,  // [n_kv_heads, cap, hd] bf16
                  uint16_t* wv,  // [n_kv_heads, cap, hd] bf16
                  Stream stream);

// Decode merge for n_rows rows (rows: [n_rows] descriptors in device memory), one block per
// (query head, row): the CPU part's logits (or, with cpu_keys, the logits of the staged K rows
// with the row's q: exact-selected), the window's (slot (first_slot + i) % cap for
// window-local i) and the new token's; window positions older than the sliding window
// (n_off + i < lo_pos) masked; softmax; values from the CPU part's V rows, the ring and the new
// token. Leaves the probabilities in each row's scores as [CPU part k | window nw | new token].
// PRECOND: hd <= kHybridMaxHeadDim; score_stride >= k + nw + 1.
void decode_merge(const RowDesc* rows, int n_rows, int n_heads, int group, int hd, float scale,
                  Stream stream);

// The same merge split over the kept positions (FlashDecoding-style): grid (n_heads, n_rows,
// chunks of kMergeChunk positions of [CPU part k | window nw | new token]); each block writes
// its chunk's raw scores to the row's scores, its (max, sum) and unnormalised output to
// `partials`; a second kernel combines the chunks (log-sum-exp) into out and, when
// write_probs, turns the scores into the probabilities decode_merge leaves. Needs every row's
// cpu_logits when k > 0. partials: merge_partials_floats(n_rows, n_heads, hd, max_total) floats.
constexpr int kMergeChunk = 256;
size_t merge_partials_floats(int n_rows, int n_heads, int hd, int max_total);
void decode_merge_split(const RowDesc* rows, int n_rows, int n_heads, int group, int hd,
                        float scale, int max_total, float* partials, bool write_probs,
                        Stream stream);

// Exact attention over both tiers: token t (sequence seqs[seq_index[t]], position pos[t])
// attends to [lo, pos] (lo from the sliding window); offloaded positions from ok/ov, window
// positions from the ring; H2O mass added to seq.heavy when set (atomicAdd). out == nullptr:
// the scores and the mass only (no value pass).
void exact_attention_tiers(const SeqDesc* seqs,       // [n_seqs]
                           const int32_t* seq_index,  // [n_tokens]
                           const int32_t* pos,        // [n_tokens]
                           const float* q,            // [n_tokens, n_heads, hd]
                           float* out,                // [n_tokens, n_heads, hd]
                           float* scores,             // [n_tokens, n_heads, score_stride]
                           int64_t score_stride,      // >= the longest attended span
                           int n_tokens, int n_heads, int group, int hd, float scale,
                           int sliding_window, Stream stream);

// Both tiers of each sequence as contiguous float32 K/V in position order, the layout the CUDA
// backend's full attention reads (cuda::attention with layer 0): sequence s's KV head h,
// position p at k_dst + s * seq_stride + (h * capacity + p) * hd, for p < seqs[s].len
// (offloaded positions widened from ok/ov, window positions from the ring).
// PRECOND: seqs[s].len <= capacity; seq_stride >= n_kv_heads * capacity * hd.
void tiers_to_f32(const SeqDesc* seqs,  // [n_seqs] device
                  int n_seqs, int max_len, int n_kv_heads, int hd, int capacity, int64_t seq_stride,
                  float* k_dst, float* v_dst, Stream stream);

}  // namespace hybridgen::cuda
