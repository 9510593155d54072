#include "attention_flags.h"

#include "hybridgen/error.h"

namespace hybridgen::tools {

void add_attention_flags(CLI::App& app, AttentionOptions& a, AttentionFlagExtras& x,
                         AttentionFlagScope scope) {
  // Hybrid attention (paper §4): how the KV cache splits between the device and the host.
  if (scope == AttentionFlagScope::kAll) {
    // Empty: the engine decides by device (auto on --device cuda, full on cpu).
    if (a.policy == "full") a.policy.clear();
    app.add_option("--policy", a.policy,
                   "attention policy: auto, full, hybrid, aog, aoc, h2o, streamingllm, "
                   "keyformer, infinigen (default: auto on --device cuda - full while the whole "
                   "KV fits in free GPU memory, else hybrid with the largest window that fits; "
                   "full on --device cpu)");  // the engine names an unknown one
    app.add_option("--window", a.window,
                   "device (GPU) window per sequence and layer, tokens (-1: 10% of the context)")
        ->capture_default_str();
    app.add_option("--k-min", a.k_min,
                   "K_min: fewest offloaded tokens per KV head the scheduler uses")
        ->capture_default_str();
    app.add_option("--k", a.k, "fixed K (h2o, keyformer, infinigen, hybrid); 0: K_min / adaptive")
        ->capture_default_str();
    app.add_option("--selection", a.selection, "hybrid: adaptive, post, pre, off")
        ->capture_default_str();
  }
  app.add_option("--predictor", a.predictor,
                 "hybrid's Pre-QKT predictor: heavy, sinks-recent, partial")
      ->check(CLI::IsMember({"heavy", "sinks-recent", "partial"}))
      ->capture_default_str();
  app.add_option("--cpu-logits", a.cpu_logits,
                 "logits of the kept offloaded tokens: exact-selected (the CPU stage's query only "
                 "chooses them; their K rows are staged with the V rows and scored with the true "
                 "query), speculative (the CPU stage's logits as they are: the paper), default "
                 "(the policy's: exact-selected)")
      ->check(CLI::IsMember({"default", "speculative", "exact-selected"}))
      ->capture_default_str();
  app.add_option("--recall-guard", a.recall_guard,
                 "the scheduler never lowers K while the selection's recall (kept softmax mass, "
                 "Post-QKT) is below this; 0: off")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_flag("--exact-query", x.exact_query,
               "the CPU stage waits for the true query (no speculation, no pipelining)");
  app.add_option("--kv-memory", a.kv_memory,
                 "host memory of the offloaded KV: plain, semantic (K on DRAM, V on the slow "
                 "tier), interleave, dram")
      ->capture_default_str();
  app.add_option("--fast-nodes", a.fast_nodes, "NUMA nodes of the fast tier (default: with CPUs)")
      ->delimiter(',');
  app.add_option("--slow-nodes", a.slow_nodes, "NUMA nodes of the slow tier (default: CPU-less)")
      ->delimiter(',');
  app.add_option("--fast-key-budget-mb", x.fast_key_budget_mb,
                 "semantic: MB of keys allowed on DRAM");
  app.add_option("--gpu-memory-mb", a.device_memory_mb,
                 "device memory the KV may take, MB (0: what is free): caps the window, and "
                 "with --policy auto forces offloading when the whole KV would not fit in it")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--profile", a.profile, "model profile from hybridgen-eval (sets K_min)");
  app.add_option("--spec-min-cosine", a.speculation_min_cosine,
                 "layers whose speculated query is less similar than this to the true one "
                 "(measured over 4 steps) use the true query; 0: speculate everywhere")
      ->capture_default_str();
  app.add_option("--cpu-threads", a.cpu_threads, "threads of the CPU stage (0: half of -t)")
      ->capture_default_str();
}

void apply_attention_flags(AttentionOptions& a, const AttentionFlagExtras& x) {
  if (x.fast_key_budget_mb < 0) throw Error("--fast-key-budget-mb must be >= 0");
  a.fast_key_budget_bytes = static_cast<uint64_t>(x.fast_key_budget_mb * 1e6);
  if (x.exact_query) a.speculative = false;
}

}  // namespace hybridgen::tools
