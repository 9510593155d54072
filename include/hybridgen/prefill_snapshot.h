// One exact prefill, captured so that it can serve every attention policy's decode
// (Engine::prefill_snapshot / Engine::restore_sequence; docs/architecture.md, "Shared prefill").
// Prefill is exact attention for every policy, so the prompt's K/V, its last logits and the
// prompt attention statistics that H2O and Keyformer start decoding from are all a policy needs
// of it; restoring places them in a fresh sequence of any policy's tiers (window + host stores +
// heavy-hitter scores) without running the prompt again.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hybridgen {

struct PrefillSnapshot {
  // Declared, so that this is not an aggregate: generate_batch({{1, 2, 3}}, ...) must not read
  // as a snapshot whose model_source is "\x01\x02\x03".
  PrefillSnapshot() = default;
  // The model it belongs to and the weight format it ran with (both checked at restore: a
  // checkpoint of the same shapes, or the same one in another format, computes other K/V).
  std::string model_source;
  std::string weight_format;
  int n_layers = 0, n_kv_heads = 0, head_dim = 0, vocab_size = 0;
  // How it was taken: the policy of the engine whose prefill it is, and that engine's window.
  // "full" (CPU backend): every K/V row float32 as the prefill attended over it, exact.
  // A tiered policy: window rows float32 (bf16 from a CUDA window), offloaded rows bf16 (stored
  // here widened to float32): what that policy's tiers held.
  std::string source_policy;
  int source_window = 0;
  std::string kv_precision;    // "f32", or "f32 window + bf16 offloaded", ...
  double prefill_seconds = 0;  // the prefill's forward passes (capture excluded)
  double capture_seconds = 0;  // copying the K/V and statistics out after it
  double stats_seconds = 0;    // of prefill_seconds: the statistics' extra pass (CPU backend)
  // Keyformer's temperature schedule the Keyformer scores were accumulated with.
  float keyformer_tau_init = 0, keyformer_tau_delta = 0;

  struct Sequence {
    std::vector<int32_t> prompt;
    int slot = 0;               // the engine's sequence slot it was prefilled in
    std::vector<float> logits;  // [vocab] next-token logits after the last prompt token
    // Per layer, token-major as the model produced them (RoPE applied):
    // k[l], v[l]: [n_tokens, n_kv_heads, head_dim] float32.
    std::vector<std::vector<float>> k, v;
    // Prompt attention statistics per layer, [n_kv_heads, n_tokens] (empty: not captured):
    // h2o: attention probability mass per position, summed over the KV head's query heads and
    // every prompt token (H2O's score after the prompt); keyformer: the same sum of Keyformer's
    // Gumbel-softmax of those logits (seeded per slot and layer as the runtime seeds it).
    std::vector<std::vector<float>> h2o, keyformer;
    // Accumulations (forward steps over this sequence) the statistics came from: Keyformer's
    // temperature goes on from there.
    int64_t stat_updates = 0;
    int n_tokens() const { return static_cast<int>(prompt.size()); }
  };
  std::vector<Sequence> sequences;

  uint64_t bytes() const;  // K/V and statistics held
};

struct PrefillSnapshotOptions {
  // Also accumulate the prompt attention statistics (H2O mass, Keyformer scores) during the
  // prefill: one more pass over each token's attention logits (policy full on the CPU). Needed
  // by h2o, keyformer and hybrid's heavy-hitter / Keyformer predictors.
  bool attention_stats = true;
  // Of those, Keyformer's too (a Gumbel noise sample per attended position: the costlier part).
  // Needed by keyformer and hybrid --predictor keyformer only.
  bool keyformer_stats = true;
};

}  // namespace hybridgen
