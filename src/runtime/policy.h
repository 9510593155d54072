// Attention policies as DATA (../shared/DESIGN.md, "The split runtime"): one table says, per
// policy, which offloaded tokens the CPU stage scores, which it keeps, where their logits are
// computed and what the device stage merges. The hybrid runtime (runtime/hybrid_attention.h)
// reads this table and nothing else to decide what a policy does; a new baseline is a new row.
//
//   policy        window    decode      CPU stage scores           keeps        logits  merge
//   hybrid        --window  split       plan: all / Post / Pre     top-K / all  device  sel+win
//   keyformer     --window  split       K predicted (Keyformer)    those K      device  sel+win
//   h2o           --window  split       K predicted (heavy+recent) those K      device  sel+win
//   streamingllm  --window  split       the sinks (Pre)            the sinks    device  sel+win
//   infinigen     --window  split       K predicted (partial dims) those K      device  sel+win
//   aoc           0         host exact  every token, V included    all          CPU     CPU result
//   aog           0         stream all  none (K/V shipped)         all          device  all
//   (sel+win: the kept tokens' logits and staged V rows merged with the window's, in position
//   order. "logits" is where the kept tokens' logits come from by default (--cpu-logits):
//   device = exact-selected: the CPU stage's (speculative) query only CHOOSES the tokens, their
//   K rows are staged with their V rows and the device stage scores them with the true query;
//   CPU = speculative: the CPU stage's logits are used as they are (the paper's mode).)
//
// "plan" (hybrid): --selection adaptive follows the feedback scheduler's plan (Algorithm 1: K and
// Post-/Pre-QKT); post / pre fix the mode, off keeps every offloaded token.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cpu/logits.h"
#include "hybridgen/config.h"
#include "runtime/scheduler.h"

namespace hybridgen::runtime {

enum class Policy : uint8_t {
  kFull,
  kHybrid,
  kAog,
  kAoc,
  kH2o,
  kStreamingLlm,
  kKeyformer,
  kInfinigen,
};
// Throws hybridgen::Error naming the flag and the valid names for an unknown policy.
Policy parse_policy(const std::string& name);
const char* policy_name(Policy p);

// Pre-QKT predictors. kKeyformer: the heavy-hitter top-K over Keyformer's accumulated
// Gumbel-softmax scores (kv::HeavyHitterAccumulator::set_keyformer) instead of attention mass.
enum class Predictor : uint8_t { kHeavy, kSinksRecent, kPartial, kKeyformer };
enum class SelectionControl : uint8_t { kAdaptive, kPost, kPre, kOff };

// How a decode step's attention runs for a policy.
enum class DecodePath : uint8_t {
  kOneTier,    // full: the KV-cache manager, no hybrid runtime
  kSplit,      // CPU stage (offloaded logits, selection, V gather) + device merge with the window
  kHostExact,  // aoc: exact attention over the offloaded tokens entirely on the CPU
  kStreamAll,  // aog: every offloaded K/V copied to the device each layer, exact attention there
};

// What the CPU stage does with one row's offloaded tokens.
enum class Scoring : uint8_t {
  kNone,      // nothing offloaded (or nothing to attend)
  kAll,       // logits of every offloaded token, all kept
  kPostTopK,  // Post-QKT: logits of every offloaded token, the top K kept
  kPreK,      // Pre-QKT: K tokens predicted first, logits of those only
};
const char* scoring_name(Scoring s);

// Where K comes from.
enum class KSource : uint8_t {
  kAll,    // every offloaded token (no selection)
  kPlan,   // the scheduler's plan (hybrid --selection adaptive|post|pre; --k fixes it)
  kFixed,  // --k, default K_min (fixed-K baselines)
  kSinks,  // the attention sinks (streamingllm)
};

// Where the kept offloaded tokens' logits are computed (--cpu-logits).
enum class LogitsOn : uint8_t {
  kCpu,     // "speculative": the CPU stage's logits (its query: speculated one layer ahead)
  kDevice,  // "exact-selected": the device stage's, with the true query, from staged K rows
};
const char* logits_on_name(LogitsOn l);

// One row of the policy table.
struct PolicyRow {
  Policy policy;
  const char* name;
  bool window_zero;  // every token offloaded (the --window flag is ignored)
  DecodePath decode;
  bool pipelined;  // the CPU stage may run one layer ahead with the speculative query
  bool scheduler;  // the feedback scheduler adapts K and the mode (unless --k or off)
  KSource k_source;
  Scoring scoring;      // fixed scoring; for KSource::kPlan the plan's mode decides
  bool own_predictor;   // Pre-QKT predictor fixed by the policy (else --predictor)
  Predictor predictor;  // when own_predictor
  int recent_divisor;   // > 0: K / recent_divisor of the predicted tokens are the most recent
  LogitsOn logits_on;   // default of --cpu-logits for split rows
  const char* merge;    // what the device stage merges (docs and -v)
};

// The table, one row per policy (kFull included: one tier, no runtime).
const std::vector<PolicyRow>& policy_table();
const PolicyRow& policy_row(Policy p);

// AttentionOptions resolved against a model and a context (what the runtime executes).
struct HybridConfig {
  Policy policy = Policy::kHybrid;
  int window = 0;   // effective device window (tokens per sequence and layer)
  int k_min = 128;  // the scheduler's floor
  int k_fixed = 0;  // > 0: this K always (no K adaptation)
  SelectionControl selection = SelectionControl::kAdaptive;
  Predictor predictor = Predictor::kHeavy;
  bool speculative = true;
  LogitsOn logits_on = LogitsOn::kDevice;  // split rows: where the kept tokens' logits come from
  // Scheduler guard (Post-QKT): K is never decreased (and Pre-QKT never chosen) in a step whose
  // recall (softmax mass of the kept tokens among every offloaded token's CPU-stage logits,
  // lowest layer mean) is below this. 0: no guard.
  double recall_guard = 0.9;
  int cpu_threads = 1;
  int n_sinks = 4;       // streamingllm and the sinks+recent predictor
  int partial_dims = 0;  // InfiniGen-style predictor: query dimensions used (0: head_dim / 4)
  cpu::LogitsPath logits_path = cpu::LogitsPath::kAuto;
  bool trace = false;  // record StageEvents
  // The device stage waits at most this long for a CPU-stage result; then the step fails with
  // an error naming the layer (a stalled CPU stage is an error, not a hang) and the runtime
  // refuses further steps (the engine must be reloaded).
  double stall_timeout_s = 60;
  // Speculation where it is measured to work: after this many decode steps, layers whose
  // speculated query's mean cosine similarity to the true query is below speculation_min_cosine
  // switch to the true query (their CPU stage runs synchronously). 0 steps: never switch.
  int speculation_warmup_steps = 4;
  double speculation_min_cosine = 0.9;
  // Keyformer's temperature schedule, τ = tau_init + tau_delta * decode steps since the prompt:
  // the defaults of the paper's reference code (d-matrix-ai/keyformer-llm: tau_init 1.0,
  // tau_delta 0.01).
  float keyformer_tau_init = 1.0f;
  float keyformer_tau_delta = 0.01f;
  uint64_t device_memory_bytes = 0;  // window budget over all sequences and layers; 0: none
  // Fault injection and tests: called by the CPU stage before each layer's work (may sleep or
  // throw). Unset in normal runs.
  std::function<void(int layer)> cpu_stage_hook;
  // Tests: called on the device stage for each decode row just before DeviceStage::decode, with
  // the layer, the row's sequence slot, its offloaded count and its CPU part (the selection the
  // reference attends over). Unset in normal runs.
  std::function<void(int layer, int seq, int n_offloaded, int k, const int32_t* sel)>
      decode_observer;
};

// Validates the public options (errors name the flag) and resolves defaults:
// window -1 -> n_ctx / 10; a window above the context is clamped to it (everything stays on the
// device) with a warning; aog and aoc use window 0; k 0 -> k_min; cpu_threads 0 -> half of
// n_threads (at least 1).
HybridConfig resolve_attention_options(const AttentionOptions& o, int n_ctx, int head_dim,
                                       int n_threads);

// The decisions the table gives for a configuration (fixed for the runtime's lifetime).
struct PolicyPlan {
  const PolicyRow* row = nullptr;
  bool pipelined = false;       // a CPU-stage worker thread (speculation on and the row allows it)
  bool uses_scheduler = false;  // the feedback scheduler runs
  bool uses_heavy = false;      // heavy-hitter scores are accumulated (H2O predictor)
  int max_k = 0;                // the largest K a row can keep (V staging size)
};
PolicyPlan plan_policy(const HybridConfig& c, int n_ctx);

// What the CPU stage does for one row with `avail` attendable offloaded tokens this step.
struct RowPlan {
  Scoring scoring = Scoring::kNone;
  int k = 0;  // tokens kept per KV head (== avail for kAll)
  Predictor predictor = Predictor::kHeavy;
  int n_recent = 0;  // of the K predicted, the most recent ones (H2O's recent half)
};
RowPlan plan_row(const HybridConfig& c, const SchedulerPlan& step, int avail);

// The step's plan as the stats report it (K and mode of the next step): the scheduler's plan
// for kPlan rows, the policy's fixed choice otherwise. sched: nullptr when no scheduler runs.
SchedulerPlan effective_plan(const HybridConfig& c, const FeedbackScheduler* sched);
// "post-qkt" / "pre-qkt" / "all" for the stats' mode_now; k for the stats' k_now.
void reported_choice(const HybridConfig& c, const SchedulerPlan& p, int* k_now,
                     std::string* mode_now);

// --policy auto (issue 14 item 5): full attention while the whole context's KV of every sequence
// fits in free device memory beside the weights and activations, otherwise hybrid with the
// largest window that fits. --gpu-memory-mb caps the KV's device memory in both comparisons, so
// offloading can be forced on a GPU with room to spare. All sizes in bytes.
struct DeviceBudget {
  uint64_t free_bytes = 0;               // free device memory before loading (cudaMemGetInfo)
  uint64_t weight_bytes = 0;             // the weights as the device holds them
  uint64_t activation_bytes = 0;         // activations and workspaces at the largest batch
  uint64_t full_kv_bytes_per_token = 0;  // K+V of one token, all layers, as full attention keeps it
  uint64_t window_bytes_per_token = 0;   // K+V of one token, all layers, in the hybrid window
  uint64_t cap_bytes = 0;                // --gpu-memory-mb (0: no cap)
  int n_ctx = 0;
  int max_sequences = 1;
};
struct AutoChoice {
  Policy policy = Policy::kFull;
  int window = 0;      // hybrid: tokens per sequence and layer (<= n_ctx)
  std::string reason;  // the numbers behind the choice, for the log
};
// Throws hybridgen::Error (what was asked, what is free, the flags that lower it: -c, -b,
// --gpu-memory-mb) when the weights and activations alone do not fit.
AutoChoice choose_auto_policy(const DeviceBudget& b);

}  // namespace hybridgen::runtime
