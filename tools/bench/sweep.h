// hybridgen-bench sweeps: llama-bench-style lists and ranges, and the configurations they expand
// to. Everything here runs before any work starts, so that a bad sweep fails in milliseconds
// with an error naming its flag instead of after an hour of runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hybridgen::bench {

// "512,1024", "512-4096*2" (512 1024 2048 4096), "64-256+64" (64 128 192 256), "-1".
// Throws hybridgen::Error naming `flag` on an empty list, an empty item or a malformed item.
std::vector<int> parse_int_list(const std::string& flag, const std::string& text);
std::vector<double> parse_double_list(const std::string& flag, const std::string& text);
std::vector<std::string> parse_name_list(const std::string& flag, const std::string& text,
                                         const std::vector<std::string>& allowed);

// The policies of AttentionOptions::policy, in the order the docs list them.
const std::vector<std::string>& policy_names();
// Which load options a policy reads (the others are not swept for it, so that e.g. `full`
// runs once however many windows are listed).
bool policy_uses_window(const std::string& policy);     // every policy but full, aog, aoc
bool policy_uses_k(const std::string& policy);          // hybrid, h2o, keyformer, infinigen
bool policy_uses_selection(const std::string& policy);  // hybrid

// What the user asked for, as parsed lists (before validation against each other).
struct SweepSpec {
  std::vector<std::string> policies;
  std::vector<int> n_prompt, batch;
  int n_gen = 32;
  int n_ctx = 0;                     // 0: n_prompt + n_gen per prompt length
  std::vector<int> windows;          // tokens (-1: 10% of the context); empty: use window_fracs
  std::vector<double> window_fracs;  // of the context
  std::vector<int> ks;
  std::vector<std::string> selections;
  int k_min = 128;
  bool k_min_given = false;  // the engine's default K_min may exceed a short context; a K_min
                             // the user asked for may not
  int repetitions = 3;
  int warmup = 1;
  std::string device = "cpu";
};

// One engine load (policy, window, K, selection, context and batch are all load-time options).
struct BenchConfig {
  std::string policy;
  int n_prompt = 0, batch = 1, n_ctx = 0;
  int window = -1;            // tokens passed to the engine; -1: not applicable (full, aog, aoc)
  double window_frac = -1;    // the --window-frac it came from, -1 if none
  int k = -1;                 // -1: not applicable
  std::string selection;      // empty: not applicable
  std::string label() const;  // "hybrid p=2048 b=1 w=204 k=0 sel=adaptive"
};

// Checks the lists against each other (windows and K within the context, ...) and expands them.
// Throws hybridgen::Error naming the flag.
std::vector<BenchConfig> expand(const SweepSpec& spec);

}  // namespace hybridgen::bench
