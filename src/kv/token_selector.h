// Token selector of hybrid attention (paper §4.5): which offloaded tokens each KV head uses.
//
// Offloaded tokens are numbered 0..n_tokens-1 in original (position) order within the key store.
// Every selector returns, per KV head, the chosen token indices in ASCENDING order, so that the
// token concatenator can merge CPU and device logits in original order without sorting, and the
// V gather streams through memory forward.
//
// A selection is per KV head and shared by the head's query heads (GQA): the selected V rows are
// transferred once per KV head and used by all of its query heads.
//
// Post-QKT: top-K over the CPU logits of all offloaded tokens (select_top_k).
// Pre-QKT predictors (choose K tokens before any logit is computed):
//   - sinks + recent (StreamingLLM): the first n_sinks tokens and the most recent ones;
//   - heavy hitters (H2O): top-K of attention probabilities accumulated over past steps;
//   - partial dimensions (InfiniGen-style): approximate logits from the r query dimensions of
//     largest magnitude, then top-K.
// Selection off: select_all (every offloaded token).
//
// Ties are broken toward the LOWER token index (earlier token), so results are deterministic and
// independent of the thread count or the standard library's nth_element. NaN scores rank below
// every number (a NaN never displaces a real candidate).
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/logits.h"

namespace hybridgen::kv {

// How a GQA group's query-head logits become one score per token of the shared KV head.
//   kMax (default): a token is kept if ANY query head of the group attends to it strongly. The
//     selected V rows serve every query head of the group, and a token that one head needs badly
//     is exactly what top-K must not drop; max keeps each head's strongest tokens.
//   kSum: the group's logits summed. Logits are log-domain, so a sum ranks by the product of
//     unnormalised probabilities: it favours tokens every head likes moderately over one that a
//     single head depends on. Offered for comparison (some Keyformer/H2O-style variants use it).
enum class GroupCombine : uint8_t { kMax = 0, kSum = 1 };

struct TokenSelection {
  int n_kv_heads = 0;
  int k = 0;                 // tokens per KV head (the same for every head)
  std::vector<int32_t> idx;  // [n_kv_heads, k], each row ascending
  const int32_t* head(int h) const { return idx.data() + static_cast<int64_t>(h) * k; }
};

// Selection off: every one of the n_tokens offloaded tokens, for every KV head.
TokenSelection select_all(int n_kv_heads, int n_tokens);

// Top-k indices of score[0..n) (ties: lower index first; NaN lowest), written ascending to out.
// k >= n writes 0..n-1. out: [min(k, n)].
void top_k_ascending(const float* score, int n, int k, int32_t* out);

// Post-QKT: logits: [n_kv_heads * group, n_tokens], row qh at logits + qh * head_stride (floats),
// query head qh belongs to KV head qh / group. k >= n_tokens selects all.
TokenSelection select_top_k(const float* logits, int n_kv_heads, int group, int n_tokens,
                            int64_t head_stride, int k, GroupCombine combine = GroupCombine::kMax);

// Recall of a selection (the online accuracy signal of Post-QKT): per query head qh, the softmax
// mass that the selected tokens of its KV head (qh / group) carry among all n_tokens logits
// (row qh at logits + qh * head_stride), averaged over the n_kv_heads * group query heads.
// 1 when every token is selected.
double selection_recall(const float* logits, int group, int n_tokens, int64_t head_stride,
                        const TokenSelection& sel);

// Pre-QKT, StreamingLLM: the first min(n_sinks, k) tokens and the most recent k - that many
// (the same for every KV head). k >= n_tokens selects all.
TokenSelection select_sinks_recent(int n_kv_heads, int n_tokens, int k, int n_sinks = 4);

// Pre-QKT, H2O: per KV head, attention probability mass accumulated over past decode steps.
// The caller feeds each step's softmax probabilities over the offloaded tokens; tokens that were
// not part of that step's attention (not selected) simply receive nothing, as in H2O.
class HeavyHitterAccumulator {
 public:
  explicit HeavyHitterAccumulator(int n_kv_heads);

  // probs: [n_kv_heads * group, n_tokens], row qh at probs + qh * head_stride: the softmax
  // probabilities of offloaded tokens 0..n_tokens-1. Adds the group's sum to each KV head's
  // score. n_tokens may grow between calls (new tokens start at 0); it may not shrink.
  void accumulate(const float* probs, int group, int n_tokens, int64_t head_stride);
  // Same, for a step that attended only to `sel` (Pre-QKT or Post-QKT with top-K):
  // probs: [n_kv_heads * group, sel.k], entry t belongs to token sel.head(h)[t].
  // n_tokens: the current offloaded count (>= every selected index + 1).
  void accumulate_selected(const TokenSelection& sel, const float* probs, int group,
                           int64_t head_stride, int n_tokens);
  // The k tokens with the most accumulated mass per KV head, plus, if n_recent > 0, the
  // n_recent most recent tokens reserved first (H2O's "heavy + recent" split); n_tokens: the
  // current offloaded count (tokens never accumulated score 0).
  TokenSelection select(int n_tokens, int k, int n_recent = 0) const;

  // Direct accumulation by the attention code: KV head h's scores, grown to at least n_tokens
  // entries (never shrunk). The caller adds probabilities at token indices < n_tokens.
  float* scores_for_update(int h, int n_tokens) {
    if (n_tokens > static_cast<int>(score_[0].size())) grow(n_tokens);
    return score_[h].data();
  }
  void clear() {
    for (auto& s : score_) s.clear();
    updates_ = 0;
  }

  // Keyformer's score function (Adnan et al., "Keyformer: KV Cache Reduction through Key Tokens
  // Selection for Efficient Generative Inference", MLSys 2024, and its reference code): the
  // scores accumulate the Gumbel-softmax of the attended tokens' logits, softmax((x + ζ) / τ)
  // with ζ ~ Gumbel(0, 1) and τ = tau_init + tau_delta * (accumulations since clear(): 0 for the
  // prompt, then +1 per decode step), instead of the attention mass softmax(x).
  void set_keyformer(float tau_init, float tau_delta, uint64_t seed);
  bool keyformer() const { return keyformer_; }
  float tau() const { return tau_init_ + tau_delta_ * static_cast<float>(updates_); }
  // One query head's attention probabilities probs[0..n) over positions pos[0..n) (as
  // softmax(x): log probs = x - const, and a softmax ignores the constant), replaced in place by
  // the Gumbel-softmax at this accumulation's τ. The noise is a hash of (seed, accumulation,
  // query head, position): reproducible and independent of threads and order.
  void keyformer_transform(float* probs, const int32_t* pos, int n, int qh) const;
  // The device stage calls this after each accumulation (a prefill step or a decode step).
  void end_update() { ++updates_; }
  int64_t updates() const { return updates_; }

  // Replaces the state by a captured one (the shared prefill, hybridgen/prefill_snapshot.h):
  // scores [n_kv_heads, n_tokens] and the number of accumulations they came from.
  void load(const float* scores, int n_tokens, int64_t updates);

  int n_kv_heads() const { return n_kv_heads_; }
  // score(h): [n_tokens seen so far] accumulated probability mass.
  const std::vector<float>& score(int h) const { return score_[h]; }

 private:
  void grow(int n_tokens);
  int n_kv_heads_;
  std::vector<std::vector<float>> score_;  // [n_kv_heads][n_tokens]
  bool keyformer_ = false;
  float tau_init_ = 1, tau_delta_ = 0;
  uint64_t seed_ = 0;
  int64_t updates_ = 0;
};

// Gumbel(0, 1) noise from a counter-based hash (splitmix64) of its arguments.
float gumbel_noise(uint64_t seed, int64_t update, int qh, int position);

// Pre-QKT, InfiniGen-style partial-dimension predictor. Per KV head: rank the head_dim
// dimensions by Σ_{query heads of the group} |q_i| and keep the top r (ties: lower dimension);
// approximate each query head's logits with those r dimensions only, combine the group by
// `combine`, then top-K. Cost ~ r / head_dim of a full logits pass in arithmetic. Note: this
// reads r elements from each full key row; InfiniGen keeps a compact partial key copy so that the
// memory traffic shrinks too — a tiered store can pass such a copy as `keys` (with head_dim = its
// width and the dims it kept) later.
//   q: [n_kv_heads * group, head_dim], row qh at q + qh * q_head_stride.
//   keys: the offloaded keys, [n_kv_heads, n_tokens, head_dim] (cpu::KeysView strides).
TokenSelection select_partial_dims(const float* q, int64_t q_head_stride, int n_kv_heads, int group,
                                   int head_dim, const cpu::KeysView& keys, int n_tokens, int r,
                                   int k, GroupCombine combine = GroupCombine::kMax);

}  // namespace hybridgen::kv
