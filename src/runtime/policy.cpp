#include "runtime/policy.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "util/check.h"
#include "util/json.h"
#include "util/log.h"

namespace hybridgen::runtime {

// ---- The table ------------------------------------------------------------------------------

const std::vector<PolicyRow>& policy_table() {
  // clang-format off
  static const std::vector<PolicyRow> kTable = {
    // policy                name           win0   decode                  pipe   sched  K source         scoring            own pred  predictor              recent  logits           merge
    {Policy::kFull,         "full",         false, DecodePath::kOneTier,   false, false, KSource::kAll,   Scoring::kAll,     false, Predictor::kHeavy,       0, LogitsOn::kDevice, "none: one tier"},
    {Policy::kHybrid,       "hybrid",       false, DecodePath::kSplit,     true,  true,  KSource::kPlan,  Scoring::kAll,     false, Predictor::kHeavy,       0, LogitsOn::kDevice, "kept logits + staged V with the window"},
    {Policy::kAog,          "aog",          true,  DecodePath::kStreamAll, false, false, KSource::kAll,   Scoring::kNone,    false, Predictor::kHeavy,       0, LogitsOn::kDevice, "every offloaded K/V, streamed"},
    {Policy::kAoc,          "aoc",          true,  DecodePath::kHostExact, false, false, KSource::kAll,   Scoring::kAll,     false, Predictor::kHeavy,       0, LogitsOn::kCpu,    "the CPU's attention output"},
    {Policy::kH2o,          "h2o",          false, DecodePath::kSplit,     true,  false, KSource::kFixed, Scoring::kPreK,    true,  Predictor::kHeavy,       2, LogitsOn::kDevice, "kept logits + staged V with the window"},
    {Policy::kStreamingLlm, "streamingllm", false, DecodePath::kSplit,     true,  false, KSource::kSinks, Scoring::kPreK,    true,  Predictor::kSinksRecent, 0, LogitsOn::kDevice, "kept logits + staged V with the window"},
    {Policy::kKeyformer,    "keyformer",    false, DecodePath::kSplit,     true,  false, KSource::kFixed, Scoring::kPreK,    true,  Predictor::kKeyformer,   0, LogitsOn::kDevice, "kept logits + staged V with the window"},
    {Policy::kInfinigen,    "infinigen",    false, DecodePath::kSplit,     true,  false, KSource::kFixed, Scoring::kPreK,    true,  Predictor::kPartial,     0, LogitsOn::kDevice, "kept logits + staged V with the window"},
  };
  // clang-format on
  return kTable;
}

const PolicyRow& policy_row(Policy p) {
  for (const PolicyRow& r : policy_table())
    if (r.policy == p) return r;
  fail("attention policy without a row in the policy table");
}

Policy parse_policy(const std::string& name) {
  std::string names;
  for (const PolicyRow& r : policy_table()) {
    if (name == r.name) return r.policy;
    names += names.empty() ? "" : ", ";
    names += r.name;
  }
  fail("unknown attention policy '" + name + "' (the --policy flag: " + names + ")");
}

const char* policy_name(Policy p) {
  for (const PolicyRow& r : policy_table())
    if (r.policy == p) return r.name;
  return "?";
}

const char* logits_on_name(LogitsOn l) {
  return l == LogitsOn::kCpu ? "speculative" : "exact-selected";
}

const char* scoring_name(Scoring s) {
  switch (s) {
    case Scoring::kNone:
      return "none";
    case Scoring::kAll:
      return "all";
    case Scoring::kPostTopK:
      return "post-qkt";
    case Scoring::kPreK:
      return "pre-qkt";
  }
  return "?";
}

// ---- Options --------------------------------------------------------------------------------

HybridConfig resolve_attention_options(const AttentionOptions& o, int n_ctx, int head_dim,
                                       int n_threads) {
  HybridConfig c;
  c.policy = parse_policy(o.policy);
  const PolicyRow& row = policy_row(c.policy);
  HG_CHECK(o.window >= -1,
           "the GPU window (--window) must be >= 0 tokens (or -1: 10% of the "
           "context), got " +
               std::to_string(o.window));
  HG_CHECK(o.k_min >= 1, "K_min (--k-min) must be >= 1, got " + std::to_string(o.k_min));
  HG_CHECK(o.k >= 0, "K (--k) must be >= 0 (0: K_min), got " + std::to_string(o.k));
  HG_CHECK(o.cpu_threads >= 0,
           "CPU-stage threads (--cpu-threads) must be >= 0, got " + std::to_string(o.cpu_threads));
  c.k_min = o.k_min;
  if (!o.profile.empty()) {  // hybridgen-eval --profile-out: {"k_min": N, ...}
    std::ifstream in(o.profile, std::ios::binary);
    HG_CHECK(in, o.profile + ": cannot open the model profile (--profile)");
    std::ostringstream ss;
    ss << in.rdbuf();
    const nlohmann::json j = parse_json(ss.str(), o.profile);
    HG_CHECK(j.is_object() && j.contains("k_min") && j["k_min"].is_number_integer(),
             o.profile + ": the model profile needs an integer field \"k_min\"");
    const int64_t k = j["k_min"].get<int64_t>();
    HG_CHECK(k >= 1 && k <= (int64_t{1} << 30),
             o.profile + ": field \"k_min\" must be >= 1, got " + std::to_string(k));
    c.k_min = static_cast<int>(k);
  }
  int window = o.window < 0 ? n_ctx / 10 : o.window;
  if (window > n_ctx) {
    log().warn(
        "the GPU window ({} tokens, --window) is larger than the context ({}): clamped "
        "to the context, nothing is offloaded",
        window, n_ctx);
    window = n_ctx;
  }
  if (row.window_zero) window = 0;
  c.window = window;
  c.k_fixed = o.k;
  c.trace = o.trace;
  if (o.selection == "adaptive")
    c.selection = SelectionControl::kAdaptive;
  else if (o.selection == "post")
    c.selection = SelectionControl::kPost;
  else if (o.selection == "pre")
    c.selection = SelectionControl::kPre;
  else if (o.selection == "off")
    c.selection = SelectionControl::kOff;
  else
    fail("unknown selection '" + o.selection +
         "' (the --selection flag: adaptive, post, pre, off)");
  if (o.predictor == "heavy")
    c.predictor = Predictor::kHeavy;
  else if (o.predictor == "sinks-recent")
    c.predictor = Predictor::kSinksRecent;
  else if (o.predictor == "partial")
    c.predictor = Predictor::kPartial;
  else
    fail("unknown Pre-QKT predictor '" + o.predictor +
         "' (the --predictor flag: heavy, sinks-recent, partial)");
  if (row.k_source == KSource::kFixed) c.k_fixed = o.k > 0 ? o.k : c.k_min;
  HG_CHECK(o.device_memory_mb >= 0, "--gpu-memory-mb must be >= 0");
  c.device_memory_bytes = static_cast<uint64_t>(o.device_memory_mb * 1e6);
  c.speculative = o.speculative;
  if (o.cpu_logits == "default")
    c.logits_on = row.decode == DecodePath::kSplit ? row.logits_on : LogitsOn::kCpu;
  else if (o.cpu_logits == "speculative")
    c.logits_on = LogitsOn::kCpu;
  else if (o.cpu_logits == "exact-selected")
    c.logits_on = LogitsOn::kDevice;
  else
    fail("unknown CPU-logits mode '" + o.cpu_logits +
         "' (the --cpu-logits flag: default, speculative, exact-selected)");
  HG_CHECK(o.recall_guard >= 0 && o.recall_guard <= 1,
           "--recall-guard must be in [0, 1], got " + std::to_string(o.recall_guard));
  c.recall_guard = o.recall_guard;
  HG_CHECK(o.speculation_min_cosine >= 0 && o.speculation_min_cosine <= 1,
           "--spec-min-cosine must be in [0, 1], got " + std::to_string(o.speculation_min_cosine));
  c.speculation_min_cosine = o.speculation_min_cosine;
  c.cpu_threads = o.cpu_threads > 0 ? o.cpu_threads : std::max(1, n_threads / 2);
  c.partial_dims = std::max(1, head_dim / 4);
  return c;
}

// ---- Decisions ------------------------------------------------------------------------------

PolicyPlan plan_policy(const HybridConfig& c, int n_ctx) {
  PolicyPlan p;
  p.row = &policy_row(c.policy);
  const PolicyRow& r = *p.row;
  const bool selection_off = r.k_source == KSource::kPlan && c.selection == SelectionControl::kOff;
  p.pipelined = c.speculative && r.pipelined;
  p.uses_scheduler = r.scheduler && c.k_fixed == 0 && !selection_off;
  const Predictor pred = r.own_predictor ? r.predictor : c.predictor;
  // Heavy-hitter scores are accumulated when the heavy predictor can be asked: a fixed Pre-QKT
  // row with it (h2o), or a plan row with selection on (hybrid accumulates under --selection
  // post too: cheap, and the scores are there when the scheduler switches to Pre-QKT).
  p.uses_heavy = (pred == Predictor::kHeavy || pred == Predictor::kKeyformer) &&
                 (r.k_source == KSource::kPlan ? !selection_off : r.scoring == Scoring::kPreK);
  switch (r.k_source) {
    case KSource::kSinks:
      p.max_k = c.n_sinks;
      break;
    case KSource::kFixed:
      p.max_k = c.k_fixed;
      break;
    case KSource::kPlan:
      p.max_k = c.k_fixed > 0 && !selection_off ? c.k_fixed : n_ctx - c.window;
      break;
    case KSource::kAll:
      p.max_k = n_ctx - c.window;
      break;
  }
  p.max_k = std::max(p.max_k, 1);
  return p;
}

RowPlan plan_row(const HybridConfig& c, const SchedulerPlan& step, int avail) {
  RowPlan rp;
  if (avail <= 0) return rp;
  const PolicyRow& r = policy_row(c.policy);
  rp.predictor = r.own_predictor ? r.predictor : c.predictor;
  rp.k = avail;
  rp.scoring = Scoring::kAll;
  switch (r.k_source) {
    case KSource::kAll:
      break;
    case KSource::kPlan:
      if (c.selection != SelectionControl::kOff) {
        rp.k = step.k;
        rp.scoring = step.mode == SelectionMode::kPostQkt ? Scoring::kPostTopK : Scoring::kPreK;
      }
      break;
    case KSource::kFixed:
      rp.k = c.k_fixed;
      rp.scoring = r.scoring;
      break;
    case KSource::kSinks:
      rp.k = c.n_sinks;
      rp.scoring = r.scoring;
      break;
  }
  if (r.recent_divisor > 0) rp.n_recent = rp.k / r.recent_divisor;
  if (rp.k >= avail) {  // K at or above what is offloaded: every token, no selection
    rp.k = avail;
    rp.scoring = Scoring::kAll;
  }
  return rp;
}

SchedulerPlan effective_plan(const HybridConfig& c, const FeedbackScheduler* sched) {
  SchedulerPlan p;
  if (sched) p = sched->plan();
  if (c.k_fixed > 0) p.k = c.k_fixed;
  if (c.selection == SelectionControl::kPost) p.mode = SelectionMode::kPostQkt;
  if (c.selection == SelectionControl::kPre) p.mode = SelectionMode::kPreQkt;
  return p;
}

void reported_choice(const HybridConfig& c, const SchedulerPlan& p, int* k_now,
                     std::string* mode_now) {
  const PolicyRow& r = policy_row(c.policy);
  *k_now = p.k;
  *mode_now = selection_mode_name(p.mode);
  switch (r.k_source) {
    case KSource::kAll:
      *k_now = 0, *mode_now = "all";
      break;
    case KSource::kSinks:
      *k_now = c.n_sinks, *mode_now = scoring_name(r.scoring);
      break;
    case KSource::kFixed:
      *mode_now = scoring_name(r.scoring);
      break;
    case KSource::kPlan:
      if (c.selection == SelectionControl::kOff) *k_now = 0, *mode_now = "all";
      break;
  }
}

// ---- --policy auto --------------------------------------------------------------------------

AutoChoice choose_auto_policy(const DeviceBudget& b) {
  HG_CHECK(b.n_ctx > 0 && b.max_sequences > 0 && b.window_bytes_per_token > 0,
           "--policy auto: context, sequences and KV bytes per token must be positive");
  auto mb = [](uint64_t x) { return std::to_string((x + 500000) / 1000000) + " MB"; };
  const uint64_t fixed = b.weight_bytes + b.activation_bytes;
  HG_CHECK(fixed <= b.free_bytes,
           "out of device memory: the weights (" + mb(b.weight_bytes) + ") and activations (" +
               mb(b.activation_bytes) + ") need " + mb(fixed) + " but " + mb(b.free_bytes) +
               " are free; lower -b or -c (activations), or use a smaller model");
  uint64_t kv_room = b.free_bytes - fixed;
  if (b.cap_bytes > 0) kv_room = std::min(kv_room, b.cap_bytes);
  const uint64_t tokens = uint64_t(b.n_ctx) * uint64_t(b.max_sequences);
  const uint64_t full_need = b.full_kv_bytes_per_token * tokens;
  AutoChoice c;
  const std::string room =
      mb(kv_room) + " for the KV (" + mb(b.free_bytes) + " free - " + mb(fixed) +
      " weights and activations" +
      (b.cap_bytes > 0 ? ", capped by --gpu-memory-mb " + mb(b.cap_bytes) : std::string()) + ")";
  if (full_need <= kv_room) {
    c.policy = Policy::kFull;
    c.window = b.n_ctx;
    c.reason = "full attention: the whole context's KV (" + std::to_string(b.n_ctx) + " tokens x " +
               std::to_string(b.max_sequences) + " sequence(s), " + mb(full_need) + ") fits in " +
               room;
    return c;
  }
  const uint64_t per_window_token = b.window_bytes_per_token * uint64_t(b.max_sequences);
  c.policy = Policy::kHybrid;
  c.window = int(std::min<uint64_t>(kv_room / per_window_token, uint64_t(b.n_ctx)));
  c.reason = "hybrid: the whole context's KV (" + mb(full_need) + ") does not fit in " + room +
             "; the largest window that fits is " + std::to_string(c.window) + " tokens per " +
             "sequence and layer (" + mb(per_window_token) + " per window token)";
  return c;
}

}  // namespace hybridgen::runtime
