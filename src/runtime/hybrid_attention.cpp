#include "runtime/hybrid_attention.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "cpu/ops.h"
#include "model/dequant.h"
#include "runtime/transformer.h"
#include "util/check.h"
#include "util/json.h"
#include "util/log.h"

namespace hybridgen::runtime {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline float bf16f(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float dot_f32(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline float dot_bf16(const float* a, const uint16_t* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * bf16f(b[i]);
  return s;
}

inline void axpy_f32(float w, const float* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += w * x[i];
}

inline void axpy_bf16(float w, const uint16_t* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += w * bf16f(x[i]);
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

// ---- Policies and options -------------------------------------------------------------------

Policy parse_policy(const std::string& name) {
  static const std::pair<const char*, Policy> kNames[] = {{"full", Policy::kFull},
                                                          {"hybrid", Policy::kHybrid},
                                                          {"aog", Policy::kAog},
                                                          {"aoc", Policy::kAoc},
                                                          {"h2o", Policy::kH2o},
                                                          {"streamingllm", Policy::kStreamingLlm},
                                                          {"keyformer", Policy::kKeyformer},
                                                          {"infinigen", Policy::kInfinigen}};
  for (const auto& [n, p] : kNames)
    if (name == n) return p;
  fail("unknown attention policy '" + name +
       "' (the --policy flag: full, hybrid, aog, aoc, h2o, streamingllm, keyformer, infinigen)");
}

const char* policy_name(Policy p) {
  switch (p) {
    case Policy::kFull:
      return "full";
    case Policy::kHybrid:
      return "hybrid";
    case Policy::kAog:
      return "aog";
    case Policy::kAoc:
      return "aoc";
    case Policy::kH2o:
      return "h2o";
    case Policy::kStreamingLlm:
      return "streamingllm";
    case Policy::kKeyformer:
      return "keyformer";
    case Policy::kInfinigen:
      return "infinigen";
  }
  return "?";
}

HybridConfig resolve_attention_options(const AttentionOptions& o, int n_ctx, int head_dim,
                                       int n_threads) {
  HybridConfig c;
  c.policy = parse_policy(o.policy);
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
  if (c.policy == Policy::kAog || c.policy == Policy::kAoc) window = 0;
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
  // Fixed-K baselines use K (or K_min).
  if (c.policy == Policy::kH2o || c.policy == Policy::kKeyformer || c.policy == Policy::kInfinigen)
    c.k_fixed = o.k > 0 ? o.k : c.k_min;
  HG_CHECK(o.device_memory_mb >= 0, "--gpu-memory-mb must be >= 0");
  c.device_memory_bytes = static_cast<uint64_t>(o.device_memory_mb * 1e6);
  c.speculative = o.speculative;
  HG_CHECK(o.speculation_min_cosine >= 0 && o.speculation_min_cosine <= 1,
           "--spec-min-cosine must be in [0, 1], got " + std::to_string(o.speculation_min_cosine));
  c.speculation_min_cosine = o.speculation_min_cosine;
  c.cpu_threads = o.cpu_threads > 0 ? o.cpu_threads : std::max(1, n_threads / 2);
  c.partial_dims = std::max(1, head_dim / 4);
  return c;
}

// ---- Pipeline slots -------------------------------------------------------------------------

// The CPU stage's output for one batch row (sequence) of one layer.
struct HybridAttention::RowResult {
  int n_off = 0;  // offloaded tokens when the CPU stage ran
  int lo = 0;     // first host-local index attended (sliding window), <= n_off
  int k = 0;      // offloaded tokens used per KV head
  enum class Kind : uint8_t { kNone, kAll, kPost, kPre } kind = Kind::kNone;
  kv::TokenSelection sel;                // [n_kv_heads, k] host-local indices, ascending
  std::vector<int32_t> rel;              // [n_kv_heads, k] sel - lo (logits gather)
  std::vector<float> logits;             // [n_heads, k] scaled logits of the selected tokens
  std::vector<float> all_logits;         // [n_heads, n_off - lo] Post-QKT scratch
  std::unique_ptr<kv::VStaging> values;  // [n_kv_heads, k, head_dim] bf16
};

struct HybridAttention::Slot {
  std::vector<float> x;         // [n, d_model] layer input snapshot (speculation source)
  std::vector<float> q;         // [n, n_heads, head_dim] the CPU stage's query
  std::vector<RowResult> rows;  // [max_sequences]
};

// ---- Construction ---------------------------------------------------------------------------

HybridAttention::HybridAttention(const HybridConfig& config, const Transformer& model, int n_ctx,
                                 int max_sequences, memory::HostAllocator& alloc)
    : cfg_(config), model_(model), n_ctx_(n_ctx), alloc_(alloc) {
  const ModelConfig& c = model.config();
  HG_CHECK(cfg_.policy != Policy::kFull, "HybridAttention: policy full has one tier");
  n_layers_ = c.n_layers;
  n_heads_ = c.n_heads;
  n_kv_heads_ = c.n_kv_heads;
  head_dim_ = c.head_dim;
  d_model_ = c.d_model;
  group_ = c.n_heads / c.n_kv_heads;
  sliding_window_ = c.sliding_window;
  scale_ = 1.0f / std::sqrt(static_cast<float>(head_dim_));
  if (cfg_.partial_dims <= 0) cfg_.partial_dims = std::max(1, head_dim_ / 4);
  cfg_.partial_dims = std::min(cfg_.partial_dims, head_dim_);
  HG_CHECK(cfg_.k_min >= 1 && cfg_.k_fixed >= 0 && cfg_.window >= 0 && cfg_.cpu_threads >= 1,
           "hybrid attention: K_min, K, window or CPU threads out of range");

  if (cfg_.device_memory_bytes > 0) {  // K and V, float32, every sequence and layer
    const uint64_t need = uint64_t(std::min(cfg_.window, n_ctx)) * n_kv_heads_ * head_dim_ * 4 * 2 *
                          n_layers_ * max_sequences;
    HG_CHECK(need <= cfg_.device_memory_bytes,
             "out of device memory: the KV window needs " + std::to_string(need / 1000000) +
                 " MB (" + std::to_string(cfg_.window) + " tokens x " +
                 std::to_string(max_sequences) + " sequence(s) x " + std::to_string(n_layers_) +
                 " layers) but " + std::to_string(cfg_.device_memory_bytes / 1000000) +
                 " MB are available (--gpu-memory-mb); lower --window, -b or -c");
  }
  kv::TieredConfig tc;
  tc.n_kv_heads = n_kv_heads_;
  tc.head_dim = head_dim_;
  tc.context = n_ctx;
  tc.window = cfg_.window;
  cache_ = std::make_unique<kv::TieredKvCache>(n_layers_, tc, max_sequences, alloc_);
  for (int s = 0; s < max_sequences; ++s) {
    const int id = cache_->open_sequence();  // the engine's sequence ids index these slots
    HG_CHECK(id == s, "tiered KV: unexpected sequence slot");
  }
  cfg_.window = cache_->config().window;

  uses_heavy_ = cfg_.policy == Policy::kH2o ||
                (cfg_.policy == Policy::kHybrid && cfg_.predictor == Predictor::kHeavy &&
                 cfg_.selection != SelectionControl::kOff);
  if (uses_heavy_)
    for (int i = 0; i < max_sequences * n_layers_; ++i)
      heavy_.push_back(std::make_unique<kv::HeavyHitterAccumulator>(n_kv_heads_));

  if (cfg_.policy == Policy::kHybrid && cfg_.k_fixed == 0 &&
      cfg_.selection != SelectionControl::kOff) {
    SchedulerConfig sc;
    sc.k_min = cfg_.k_min;
    scheduler_ = std::make_unique<FeedbackScheduler>(sc);
  }
  for (int i = 0; i < 2; ++i) {
    auto s = std::make_unique<Slot>();
    s->rows.resize(max_sequences);
    slots_.push_back(std::move(s));
  }
  epoch_ = now_seconds();
  cos_sum_.assign(n_layers_, 0.0);
  cos_count_.assign(n_layers_, 0);
  exact_layer_.assign(n_layers_, 0);
  stats_.policy = policy_name(cfg_.policy);
  stats_.window = cfg_.window;
  stats_.allocator = alloc_.name();

  const bool pipelined =
      cfg_.speculative && cfg_.policy != Policy::kAoc && cfg_.policy != Policy::kAog;
  if (pipelined) {
    jobs_ = std::make_unique<SpscQueue<Job>>(4);
    done_ = std::make_unique<SpscQueue<Done>>(4);
    worker_ = std::thread([this] { worker_main(); });
  }
}

HybridAttention::~HybridAttention() {
  if (worker_.joinable()) {
    jobs_->close();
    done_->close();  // a worker blocked on a full result queue wakes too
    worker_.join();
  }
}

void HybridAttention::new_request() {
  if (scheduler_) scheduler_->reset();
}

// ---- Step protocol --------------------------------------------------------------------------

void HybridAttention::begin_step(const Batch& batch, const int32_t* pos) {
  HG_CHECK(!broken_,
           "hybrid attention: the CPU stage stalled in an earlier step; reload the "
           "engine");
  // A step abandoned by an exception may have left CPU-stage results in flight: drain them.
  for (; outstanding_ > 0; --outstanding_) {
    Done d;
    done_->pop(d);
  }
  n_rows_ = batch.size();
  seqs_.assign(batch.seq.begin(), batch.seq.end());
  pos_.assign(pos, pos + n_rows_);
  // The split path needs one token per sequence (a decode step); prefill chunks take the
  // exact path.
  bool one_each = true;
  for (int i = 0; i < n_rows_ && one_each; ++i)
    for (int j = 0; j < i; ++j)
      if (seqs_[i] == seqs_[j]) {
        one_each = false;
        break;
      }
  decode_step_ = one_each;
  split_path_ = one_each && cfg_.policy != Policy::kAoc && cfg_.policy != Policy::kAog;
  for (int i = 0; i < n_rows_; ++i)
    if (pos_[i] == 0) {  // a new sequence in this slot: forget the previous one's state
      for (int l = 0; l < n_layers_; ++l) {
        cache_->layer(seqs_[i], l).clear();
        if (uses_heavy_) heavy_[size_t(seqs_[i]) * n_layers_ + l]->clear();
      }
    }
  step_t0_ = now_seconds();
  step_wait_ = step_cpu_ = step_tx_ = step_sync_cpu_ = 0;
  step_min_off_ = std::numeric_limits<int>::max();
  for (int i = 0; i < n_rows_; ++i)
    step_min_off_ = std::min(step_min_off_, cache_->layer(seqs_[i], 0).n_offloaded());
  plan_ = current_plan();
}

SchedulerPlan HybridAttention::current_plan() const {
  SchedulerPlan p;
  if (scheduler_) p = scheduler_->plan();
  if (cfg_.k_fixed > 0) p.k = cfg_.k_fixed;
  if (cfg_.selection == SelectionControl::kPost) p.mode = SelectionMode::kPostQkt;
  if (cfg_.selection == SelectionControl::kPre) p.mode = SelectionMode::kPreQkt;
  return p;
}

void HybridAttention::layer_input(int il, const float* x) {
  if (decode_step_ && cfg_.trace) {  // the device stage's layer boundaries
    const double t = now_seconds();
    if (il > 0) record(main_events_, "device", step_, il - 1, layer_t0_, t);
    layer_t0_ = t;
  }
  if (!split_path_ || !worker_.joinable()) return;
  auto push = [&](int layer) {
    Slot& s = *slots_[layer % 2];
    s.x.assign(x, x + size_t(n_rows_) * d_model_);
    s.q.resize(size_t(n_rows_) * n_heads_ * head_dim_);
    HG_CHECK(jobs_->push(Job{layer, layer % 2, plan_, step_}),
             "hybrid attention: CPU stage stopped");
    ++outstanding_;
  };
  // Layer 0's query comes from its own input (the embedding): exact. Layer il+1's is
  // speculated from layer il's input while the device stage runs layer il.
  if (il == 0) push(0);
  if (il + 1 < n_layers_ && !exact_layer_[il + 1]) push(il + 1);
}

void HybridAttention::record(std::vector<StageEvent>& events, const char* stage, int64_t step,
                             int layer, double begin, double end) {
  if (!cfg_.trace || events.size() >= kMaxTraceEvents) return;
  events.push_back(StageEvent{stage, step, layer, begin - epoch_, end - epoch_});
}

void HybridAttention::worker_main() {
  omp_set_num_threads(cfg_.cpu_threads);
  Job job;
  while (jobs_->pop(job)) {
    if (job.layer < 0) break;
    Slot& s = *slots_[job.slot];
    Done d;
    try {
      const double t0 = now_seconds();
      speculative_query(job.layer, s.x.data(), s.q.data());
      const double tq = now_seconds() - t0;
      d = cpu_stage(job.layer, s.q.data(), job.slot, job.plan);
      d.t_cpu += tq;
      const double t1 = now_seconds();
      record(worker_events_, "cpu", job.step, job.layer, t0, t1 - d.t_tx);
      record(worker_events_, "tx", job.step, job.layer, t1 - d.t_tx, t1);
    } catch (const std::exception& e) {
      d.error = e.what();
    }
    d.layer = job.layer;
    if (!done_->push(std::move(d))) break;
  }
}

void HybridAttention::speculative_query(int il, const float* x, float* q) const {
  const ModelConfig& c = model_.config();
  const LayerWeights& L = model_.weights().layers[il];
  const int n = n_rows_;
  std::vector<float> h(size_t(n) * d_model_);  // [n, d_model]
  if (c.layer_norm)
    cpu::layer_norm(x, L.attn_norm.data(), L.attn_norm_b.data(), n, d_model_, c.norm_eps, h.data());
  else
    cpu::rms_norm(x, L.attn_norm.data(), n, d_model_, c.norm_eps, h.data());
  L.qkv.forward_rows(h.data(), q, n, n_heads_ * head_dim_);
  if (!c.learned_positions)
    cpu::rope(q, n, n_heads_, head_dim_, c.rope_dim, pos_.data(), model_.inv_freq().data(),
              c.rope_style == RopeStyle::kNeox);
}

// ---- CPU stage ------------------------------------------------------------------------------

HybridAttention::Done HybridAttention::cpu_stage(int il, const float* q, int slot_index,
                                                 const SchedulerPlan& plan) {
  Done d;
  Slot& slot = *slots_[slot_index];
  if (cfg_.cpu_stage_hook) cfg_.cpu_stage_hook(il);
  const double t0 = now_seconds();
  double t_tx = 0;
  const uint64_t key_row = uint64_t(n_kv_heads_) * head_dim_ * 2;  // one token's bf16 K or V
  for (int b = 0; b < n_rows_; ++b) {
    RowResult& r = slot.rows[b];
    const kv::TieredLayerKv& kv = cache_->layer(seqs_[b], il);
    const float* qb = q + size_t(b) * n_heads_ * head_dim_;
    r.n_off = kv.n_offloaded();
    r.lo = sliding_window_ > 0 ? std::clamp(pos_[b] - sliding_window_ + 1, 0, r.n_off) : 0;
    const int avail = r.n_off - r.lo;
    r.k = 0;
    r.kind = RowResult::Kind::kNone;
    if (avail <= 0) continue;

    // What this policy does with `avail` offloaded tokens.
    int k = avail;
    RowResult::Kind kind = RowResult::Kind::kAll;
    Predictor pred = cfg_.predictor;
    int n_recent = 0;
    switch (cfg_.policy) {
      case Policy::kHybrid:
        if (cfg_.selection != SelectionControl::kOff) {
          k = plan.k;
          kind =
              plan.mode == SelectionMode::kPostQkt ? RowResult::Kind::kPost : RowResult::Kind::kPre;
        }
        break;
      case Policy::kKeyformer:
        k = cfg_.k_fixed;
        kind = RowResult::Kind::kPost;
        break;
      case Policy::kH2o:
        k = cfg_.k_fixed;
        kind = RowResult::Kind::kPre;
        pred = Predictor::kHeavy;
        n_recent = k / 2;
        break;
      case Policy::kStreamingLlm:
        k = cfg_.n_sinks;
        kind = RowResult::Kind::kPre;
        pred = Predictor::kSinksRecent;
        break;
      case Policy::kInfinigen:
        k = cfg_.k_fixed;
        kind = RowResult::Kind::kPre;
        pred = Predictor::kPartial;
        break;
      default:
        break;
    }
    if (k >= avail) {
      k = avail;
      kind = RowResult::Kind::kAll;
    }
    r.k = k;
    r.kind = kind;

    cpu::KeysView keys = kv.keys_view();
    keys.data = static_cast<const uint16_t*>(keys.data) + int64_t(r.lo) * keys.token_stride;
    cpu::LogitsProblem lp;
    lp.n_kv_heads = n_kv_heads_;
    lp.group = group_;
    lp.head_dim = head_dim_;
    lp.q = qb;
    lp.q_head_stride = head_dim_;
    lp.keys = keys;
    lp.scale = scale_;

    if (kind == RowResult::Kind::kAll || kind == RowResult::Kind::kPost) {
      std::vector<float>& dst = kind == RowResult::Kind::kAll ? r.logits : r.all_logits;
      dst.resize(size_t(n_heads_) * avail);
      lp.n_tokens = avail;
      lp.out = dst.data();
      lp.out_head_stride = avail;
      cpu::attention_logits(lp, cfg_.logits_path);
      d.key_bytes += key_row * avail;
      if (kind == RowResult::Kind::kAll) {
        r.sel = kv::select_all(n_kv_heads_, avail);
      } else {
        r.sel = kv::select_top_k(r.all_logits.data(), n_kv_heads_, group_, avail, avail, k);
        r.logits.resize(size_t(n_heads_) * k);
        for (int qh = 0; qh < n_heads_; ++qh) {
          const int32_t* idx = r.sel.head(qh / group_);
          const float* src = r.all_logits.data() + size_t(qh) * avail;
          float* dstq = r.logits.data() + size_t(qh) * k;
          for (int j = 0; j < k; ++j) dstq[j] = src[idx[j]];
        }
      }
    } else {  // Pre-QKT: predict, then logits of the K predicted tokens only
      if (pred == Predictor::kHeavy && r.lo == 0) {
        r.sel = heavy_[size_t(seqs_[b]) * n_layers_ + il]->select(avail, k, n_recent);
      } else if (pred == Predictor::kPartial) {
        r.sel = kv::select_partial_dims(qb, head_dim_, n_kv_heads_, group_, head_dim_, keys, avail,
                                        cfg_.partial_dims, k);
        d.key_bytes += uint64_t(avail) * n_kv_heads_ * cfg_.partial_dims * 2;
      } else {  // sinks + recent (also heavy under a sliding window: scores index positions)
        r.sel = kv::select_sinks_recent(n_kv_heads_, avail, k, std::min(cfg_.n_sinks, k));
      }
      r.logits.resize(size_t(n_heads_) * k);
      lp.n_tokens = k;
      lp.token_index = r.sel.idx.data();
      lp.index_head_stride = k;
      lp.out = r.logits.data();
      lp.out_head_stride = k;
      cpu::attention_logits(lp, cfg_.logits_path);
      d.key_bytes += key_row * k;
    }
    // Selection indices are relative to lo; the stores and the concatenator use host-local ones.
    if (r.lo > 0)
      for (int32_t& i : r.sel.idx) i += r.lo;

    // V transfer: gather the selected rows into staging.
    const double tg = now_seconds();
    if (!r.values) {                     // sized once for the largest K this configuration can use
      int max_k = n_ctx_ - cfg_.window;  // hybrid with an adaptive K or selection off
      if (cfg_.policy == Policy::kStreamingLlm)
        max_k = cfg_.n_sinks;
      else if (cfg_.k_fixed > 0 && cfg_.selection != SelectionControl::kOff)
        max_k = cfg_.k_fixed;
      r.values = std::make_unique<kv::VStaging>(alloc_, n_kv_heads_, head_dim_, std::max(max_k, 1));
    }
    r.values->gather(kv.value_store(), r.sel);
    t_tx += now_seconds() - tg;
    d.v_bytes += key_row * k;
  }
  d.t_tx = t_tx;
  d.t_cpu = now_seconds() - t0 - t_tx;
  return d;
}

// ---- Device stage ---------------------------------------------------------------------------

void HybridAttention::attend(int il, const float* q, const float* k, const float* v, float* out) {
  const int64_t q_w = int64_t(n_heads_) * head_dim_, kv_w = int64_t(n_kv_heads_) * head_dim_;
  if (!split_path_) {
    exact_attention(il, q, k, v, out, cfg_.policy == Policy::kAog && decode_step_);
    return;
  }
  Done d;
  const bool speculated = worker_.joinable() && !exact_layer_[il];
  if (speculated) {
    const double t0 = now_seconds();
    using Status = SpscQueue<Done>::PopStatus;
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(cfg_.stall_timeout_s));
    const Status st = done_->pop_until(d, deadline);
    if (st == Status::kTimeout) {
      broken_ = true;
      fail("hybrid attention: the CPU stage did not deliver layer " + std::to_string(il) +
           " within " + std::to_string(cfg_.stall_timeout_s) +
           " s (stalled); the engine must be reloaded");
    }
    HG_CHECK(st == Status::kOk, "hybrid attention: CPU stage stopped");
    --outstanding_;
    const double t1 = now_seconds();
    step_wait_ += t1 - t0;
    record(main_events_, "wait", step_, il, t0, t1);
    if (!d.error.empty()) fail("CPU stage (layer " + std::to_string(d.layer) + "): " + d.error);
    HG_CHECK(d.layer == il, "hybrid attention: CPU stage result for layer " +
                                std::to_string(d.layer) + " arrived at layer " +
                                std::to_string(il));
  } else {  // synchronous: the CPU stage uses the true query
    const double t0 = now_seconds();
    d = cpu_stage(il, q, il % 2, plan_);
    const double t1 = now_seconds();
    step_sync_cpu_ += t1 - t0;
    record(main_events_, "cpu", step_, il, t0, t1 - d.t_tx);
    record(main_events_, "tx", step_, il, t1 - d.t_tx, t1);
  }
  if (speculated) {  // how close the speculated query came to the true one
    const float* qs = slots_[il % 2]->q.data();
    for (int64_t hq = 0; hq < int64_t(n_rows_) * n_heads_; ++hq) {
      const float* a = q + hq * head_dim_;
      const float* b = qs + hq * head_dim_;
      double ab = 0, aa = 0, bb = 0;
      for (int i = 0; i < head_dim_; ++i) {
        ab += double(a[i]) * b[i];
        aa += double(a[i]) * a[i];
        bb += double(b[i]) * b[i];
      }
      cos_sum_[il] += aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : 1.0;
      ++cos_count_[il];
    }
  }
  step_cpu_ += d.t_cpu;
  step_tx_ += d.t_tx;
  stats_.key_bytes_read += d.key_bytes;
  stats_.value_bytes_moved += d.v_bytes;
  const Slot& slot = *slots_[il % 2];
  for (int b = 0; b < n_rows_; ++b) {
    const RowResult& r = slot.rows[b];
    merge_row(il, b, q + b * q_w, k + b * kv_w, v + b * kv_w, r, out + b * q_w);
    ++stats_.layer_passes;
    k_sum_ += r.k;
    switch (r.kind) {
      case RowResult::Kind::kNone:
      case RowResult::Kind::kAll:
        ++stats_.passes_all;
        break;
      case RowResult::Kind::kPost:
        ++stats_.passes_post_qkt;
        break;
      case RowResult::Kind::kPre:
        ++stats_.passes_pre_qkt;
        break;
    }
  }
}

void HybridAttention::merge_row(int il, int b, const float* q, const float* k_new,
                                const float* v_new, const RowResult& r, float* out) {
  kv::TieredLayerKv& kv = cache_->layer(seqs_[b], il);
  const int p = pos_[b];
  HG_CHECK(kv.length() == p, "hybrid attention: sequence " + std::to_string(seqs_[b]) + " holds " +
                                 std::to_string(kv.length()) + " tokens at layer " +
                                 std::to_string(il) + ", expected " + std::to_string(p));
  HG_CHECK(kv.n_offloaded() == r.n_off,
           "hybrid attention: offloaded count changed under the "
           "CPU stage");
  const int n_off = r.n_off, nw = kv.n_window(), k = r.k;
  const int lo_pos = sliding_window_ > 0 ? p - sliding_window_ + 1 : 0;
  const kv::WindowStore* ws = kv.window();
  const int cap = ws ? ws->capacity() : 0;
  const int total = k + nw + 1;  // selected offloaded, window, the new token
  kv::HeavyHitterAccumulator* heavy =
      uses_heavy_ ? heavy_[size_t(seqs_[b]) * n_layers_ + il].get() : nullptr;
  if (heavy) heavy->scores_for_update(0, p + 1);  // grow once, outside the parallel region

#pragma omp parallel
  {
    std::vector<float> window_logits(cap);  // [window slots] in slot order, as the device has them
    std::vector<float> probs(total);        // [total] in original position order
#pragma omp for schedule(static)
    for (int qh = 0; qh < n_heads_; ++qh) {
      const int h = qh / group_;
      const float* qv = q + int64_t(qh) * head_dim_;
      // Device logits over the window, one pass in slot order.
      for (int i = 0; i < nw; ++i) {
        const int s = kv.window_slot(i);
        window_logits[s] =
            dot_f32(qv, ws->host_keys(h) + int64_t(s) * head_dim_, head_dim_) * scale_;
      }
      // Token concatenator: CPU logits (selected offloaded) + device logits, original order.
      static const int32_t kNoSelection = 0;  // non-null: "a selection of k == 0 tokens"
      kv::concat_tiers(kv, k > 0 ? r.sel.head(h) : &kNoSelection, k,
                       k > 0 ? r.logits.data() + int64_t(qh) * k : nullptr, window_logits.data(), 1,
                       probs.data());
      probs[total - 1] = dot_f32(qv, k_new + int64_t(h) * head_dim_, head_dim_) * scale_;
      for (int i = 0; i < nw; ++i)  // sliding window: window positions too old to attend
        if (n_off + i < lo_pos) probs[k + i] = kNegInf;
      cpu::softmax(probs.data(), total);
      // Value aggregation, in the same order.
      float* o = out + int64_t(qh) * head_dim_;
      std::fill(o, o + head_dim_, 0.f);
      const uint16_t* vs = k > 0 ? r.values->head(h, k) : nullptr;
      for (int j = 0; j < k; ++j) axpy_bf16(probs[j], vs + int64_t(j) * head_dim_, o, head_dim_);
      for (int i = 0; i < nw; ++i)
        axpy_f32(probs[k + i], ws->host_values(h) + int64_t(kv.window_slot(i)) * head_dim_, o,
                 head_dim_);
      axpy_f32(probs[total - 1], v_new + int64_t(h) * head_dim_, o, head_dim_);
      if (heavy) {
        // H2O's score: attention mass per position, summed over the group's query heads. One
        // thread per KV head would be race-free; query heads of a group may run on different
        // threads, so the adds are atomic.
        float* sc = heavy->scores_for_update(h, p + 1);
        const int32_t* sel = k > 0 ? r.sel.head(h) : nullptr;
        for (int j = 0; j < k; ++j) {
#pragma omp atomic
          sc[sel[j]] += probs[j];
        }
        for (int i = 0; i < nw; ++i) {
#pragma omp atomic
          sc[n_off + i] += probs[k + i];
        }
#pragma omp atomic
        sc[p] += probs[total - 1];
      }
    }
  }
  // The new token enters the window; the least recently generated one leaves it.
  kv.append(1, k_new, v_new);
}

// Exact attention over both tiers (prefill chunks, aoc, aog): the batch's tokens are appended
// first, then each attends to positions [lo, pos] of its sequence. Offloaded K/V are bf16.
// stream_to_device (aog): each sequence's offloaded K and V are first copied whole to device
// memory (here: a float32 buffer), as FlexGen-style offloading does every layer.
void HybridAttention::exact_attention(int il, const float* q, const float* k, const float* v,
                                      float* out, bool stream_to_device) {
  const int n = n_rows_;
  const int64_t q_w = int64_t(n_heads_) * head_dim_, kv_w = int64_t(n_kv_heads_) * head_dim_;
  for (int t = 0; t < n;) {  // append runs of consecutive tokens of one sequence at once
    int e = t + 1;
    while (e < n && seqs_[e] == seqs_[t] && pos_[e] == pos_[e - 1] + 1) ++e;
    kv::TieredLayerKv& kv = cache_->layer(seqs_[t], il);
    HG_CHECK(kv.length() == pos_[t], "hybrid attention: sequence " + std::to_string(seqs_[t]) +
                                         " holds " + std::to_string(kv.length()) +
                                         " tokens, the step appends at " + std::to_string(pos_[t]));
    kv.append(e - t, k + t * kv_w, v + t * kv_w);
    t = e;
  }
  const double t0 = now_seconds();
  // aog: the whole offloaded K/V of each distinct sequence, as float32 "device" copies.
  std::vector<int> distinct;
  for (int t = 0; t < n; ++t)
    if (std::find(distinct.begin(), distinct.end(), seqs_[t]) == distinct.end())
      distinct.push_back(seqs_[t]);
  std::vector<std::vector<float>> dev_k(stream_to_device ? distinct.size() : 0),
      dev_v(stream_to_device ? distinct.size() : 0);  // [n_kv_heads, n_off, head_dim]
  if (stream_to_device) {
    for (size_t i = 0; i < distinct.size(); ++i) {
      const kv::TieredLayerKv& kv = cache_->layer(distinct[i], il);
      const int n_off = kv.n_offloaded();
      dev_k[i].resize(size_t(n_off) * kv_w);
      dev_v[i].resize(size_t(n_off) * kv_w);
#pragma omp parallel for collapse(2)
      for (int h = 0; h < n_kv_heads_; ++h)
        for (int j = 0; j < n_off; ++j)
          for (int e = 0; e < head_dim_; ++e) {
            const int64_t o = (int64_t(h) * n_off + j) * head_dim_ + e;
            dev_k[i][o] = bf16f(kv.key_store().row(h, j)[e]);
            dev_v[i][o] = bf16f(kv.value_store().row(h, j)[e]);
          }
      stats_.value_bytes_moved += uint64_t(n_off) * kv_w * 2;
    }
  }
  const double t1 = now_seconds();
  if (decode_step_) {
    step_tx_ += t1 - t0;
    step_sync_cpu_ += t1 - t0;
  }

  if (uses_heavy_)  // grow the score arrays once, outside the parallel region
    for (int t = 0; t < n; ++t)
      heavy_[size_t(seqs_[t]) * n_layers_ + il]->scores_for_update(0, pos_[t] + 1);
  std::vector<int> dev_index(n, 0);  // which dev_k/dev_v copy token t reads
  for (int t = 0; t < n; ++t)
    dev_index[t] = int(std::find(distinct.begin(), distinct.end(), seqs_[t]) - distinct.begin());
#pragma omp parallel
  {
    std::vector<float> scores;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int t = 0; t < n; ++t)
      for (int qh = 0; qh < n_heads_; ++qh) {
        const kv::TieredLayerKv& kv = cache_->layer(seqs_[t], il);
        const int h = qh / group_, p = pos_[t];
        const int n_off = kv.n_offloaded();
        const int lo = sliding_window_ > 0 ? std::max(0, p - sliding_window_ + 1) : 0;
        const float* qv = q + t * q_w + int64_t(qh) * head_dim_;
        const kv::WindowStore* ws = kv.window();
        scores.resize(p - lo + 1);
        const float* dk = stream_to_device ? dev_k[dev_index[t]].data() : nullptr;
        const float* dv = stream_to_device ? dev_v[dev_index[t]].data() : nullptr;
        for (int j = lo; j <= p; ++j) {
          float s;
          if (j < n_off)
            s = dk ? dot_f32(qv, dk + (int64_t(h) * n_off + j) * head_dim_, head_dim_)
                   : dot_bf16(qv, kv.key_store().row(h, j), head_dim_);
          else
            s = dot_f32(qv, ws->host_keys(h) + int64_t(kv.window_slot(j - n_off)) * head_dim_,
                        head_dim_);
          scores[j - lo] = s * scale_;
        }
        cpu::softmax(scores.data(), p - lo + 1);
        float* o = out + t * q_w + int64_t(qh) * head_dim_;
        std::fill(o, o + head_dim_, 0.f);
        for (int j = lo; j <= p; ++j) {
          const float w = scores[j - lo];
          if (j < n_off) {
            if (dv)
              axpy_f32(w, dv + (int64_t(h) * n_off + j) * head_dim_, o, head_dim_);
            else
              axpy_bf16(w, kv.value_store().row(h, j), o, head_dim_);
          } else {
            axpy_f32(w, ws->host_values(h) + int64_t(kv.window_slot(j - n_off)) * head_dim_, o,
                     head_dim_);
          }
        }
        if (uses_heavy_) {
          float* sc = heavy_[size_t(seqs_[t]) * n_layers_ + il]->scores_for_update(h, 0);
          for (int j = lo; j <= p; ++j) {
#pragma omp atomic
            sc[j] += scores[j - lo];
          }
        }
      }
  }
  if (decode_step_ && cfg_.policy == Policy::kAoc) step_sync_cpu_ += now_seconds() - t1;
  if (decode_step_) {
    for (int t = 0; t < n; ++t) {
      ++stats_.layer_passes;
      ++stats_.passes_all;
      const int n_off = cache_->layer(seqs_[t], il).n_offloaded();
      k_sum_ += n_off;
      if (cfg_.policy == Policy::kAoc) stats_.key_bytes_read += uint64_t(n_off) * kv_w * 2 * 2;
    }
    if (cfg_.policy == Policy::kAoc) step_cpu_ += now_seconds() - t1;
  }
}

void HybridAttention::end_step() {
  if (!decode_step_) return;
  const double t_end = now_seconds();
  record(main_events_, "device", step_, n_layers_ - 1, layer_t0_, t_end);
  const double wall = t_end - step_t0_;
  StageLatencies lat;
  lat.t_gpu = std::max(0.0, wall - step_wait_ - step_sync_cpu_);
  lat.t_cpu = step_cpu_;
  lat.t_tx = step_tx_;
  ++stats_.decode_steps;
  stats_.t_device += lat.t_gpu;
  stats_.t_cpu += lat.t_cpu;
  stats_.t_tx += lat.t_tx;
  stats_.t_wait += step_wait_;
  // After the warm-up, layers whose speculated query is measured to be poor get the true query
  // (synchronous CPU stage) from then on; the others keep speculating.
  if (split_path_ && worker_.joinable() && ++spec_steps_ == cfg_.speculation_warmup_steps) {
    std::string exact;
    for (int l = 1; l < n_layers_; ++l)
      if (cos_count_[l] > 0 && cos_sum_[l] / cos_count_[l] < cfg_.speculation_min_cosine) {
        exact_layer_[l] = 1;
        exact += " " + std::to_string(l);
      }
    if (!exact.empty())
      log().info(
          "hybrid attention: speculated query below cosine {:.2f} of the true one at "
          "layer(s){}: those use the true query (synchronous CPU stage)",
          cfg_.speculation_min_cosine, exact);
  }
  if (scheduler_ && split_path_ && step_min_off_ != std::numeric_limits<int>::max() &&
      step_min_off_ >= cfg_.k_min)
    scheduler_->update(step_, -1, lat, step_min_off_);
  ++step_;
}

AttentionStats HybridAttention::stats() const {
  AttentionStats s = stats_;
  s.mean_k = s.layer_passes > 0 ? k_sum_ / double(s.layer_passes) : 0;
  double cs = 0;
  int64_t cn = 0;
  for (int l = 0; l < n_layers_; ++l) {
    s.speculation_cosine_per_layer.push_back(cos_count_[l] ? cos_sum_[l] / cos_count_[l] : 0);
    if (l > 0) cs += cos_sum_[l], cn += cos_count_[l];
  }
  s.speculation_cosine = cn ? cs / cn : 0;
  const SchedulerPlan p = current_plan();
  s.k_now = p.k;
  s.mode_now = selection_mode_name(p.mode);
  switch (cfg_.policy) {  // the baselines' fixed choices
    case Policy::kAog:
    case Policy::kAoc:
      s.k_now = 0, s.mode_now = "all";
      break;
    case Policy::kKeyformer:
      s.mode_now = "post-qkt";
      break;
    case Policy::kStreamingLlm:
      s.k_now = cfg_.n_sinks, s.mode_now = "pre-qkt";
      break;
    case Policy::kH2o:
    case Policy::kInfinigen:
      s.mode_now = "pre-qkt";
      break;
    default:
      if (cfg_.selection == SelectionControl::kOff) s.k_now = 0, s.mode_now = "all";
  }
  const kv::TierBytes tb = cache_->bytes();
  s.window_used = tb.window_used;
  s.window_reserved = tb.window_reserved;
  s.key_store_used = tb.key_used;
  s.key_store_reserved = tb.key_reserved;
  s.value_store_used = tb.value_used;
  s.value_store_reserved = tb.value_reserved;
  uint64_t staging = 0;
  for (const auto& slot : slots_)
    for (const RowResult& r : slot->rows) {
      if (r.values) staging += r.values->bytes();
      staging += (r.logits.capacity() + r.all_logits.capacity()) * sizeof(float);
    }
  s.staging_bytes = staging;
  if (scheduler_) {
    const auto& tr = scheduler_->trace();
    const size_t first = tr.size() > 32 ? tr.size() - 32 : 0;
    for (size_t i = first; i < tr.size(); ++i) s.scheduler_trace.push_back(tr[i].to_string());
  }
  return s;
}

std::vector<StageEvent> HybridAttention::trace() const {
  std::vector<StageEvent> all = main_events_;
  all.insert(all.end(), worker_events_.begin(), worker_events_.end());
  std::stable_sort(all.begin(), all.end(),
                   [](const StageEvent& a, const StageEvent& b) { return a.begin < b.begin; });
  return all;
}

void HybridAttention::reset_stats() {
  main_events_.clear();
  worker_events_.clear();
  cos_sum_.assign(n_layers_, 0.0);
  cos_count_.assign(n_layers_, 0);
  AttentionStats fresh;
  fresh.policy = stats_.policy;
  fresh.window = stats_.window;
  fresh.allocator = stats_.allocator;
  stats_ = fresh;
  k_sum_ = 0;
}

}  // namespace hybridgen::runtime
