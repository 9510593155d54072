#include "runtime/hybrid_attention.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "cpu/ops.h"
#include "runtime/cpu_device_stage.h"
#include "runtime/host_loops.h"
#include "runtime/transformer.h"
#include "util/check.h"
#include "util/log.h"

namespace hybridgen::runtime {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

// ---- Pipeline slots -------------------------------------------------------------------------

// The CPU stage's output for one batch row (sequence) of one layer.
struct HybridRuntime::RowResult {
  int n_off = 0;  // offloaded tokens when the CPU stage ran
  int lo = 0;     // first host-local index attended (sliding window), <= n_off
  int k = 0;      // offloaded tokens used per KV head
  Scoring kind = Scoring::kNone;
  kv::TokenSelection sel;                // [n_kv_heads, k] host-local indices, ascending
  std::vector<int32_t> rel;              // [n_kv_heads, k] sel - lo (logits gather)
  std::vector<float> logits;             // [n_heads, k] scaled logits of the selected tokens
  std::vector<float> all_logits;         // [n_heads, n_off - lo] Post-QKT scratch
  std::unique_ptr<kv::VStaging> values;  // [n_kv_heads, k, head_dim] bf16
  std::unique_ptr<kv::VStaging> keys;    // exact-selected: [n_kv_heads, k, head_dim] bf16
};

struct HybridRuntime::Slot {
  std::vector<float> x;         // [n, d_model] layer input snapshot (speculation source)
  std::vector<float> q;         // [n, n_heads, head_dim] the CPU stage's query
  std::vector<RowResult> rows;  // [max_sequences]
};

// ---- Construction ---------------------------------------------------------------------------

HybridRuntime::HybridRuntime(const HybridConfig& config, const ModelDims& dims,
                             std::unique_ptr<QueryProvider> query,
                             std::unique_ptr<DeviceStage> device, int n_ctx, int max_sequences,
                             memory::HostAllocator& alloc)
    : cfg_(config),
      dims_(dims),
      query_(std::move(query)),
      device_(std::move(device)),
      n_ctx_(n_ctx),
      alloc_(alloc) {
  HG_CHECK(query_ && device_, "hybrid attention: a query provider and a device stage are needed");
  HG_CHECK(policy_row(cfg_.policy).decode != DecodePath::kOneTier,
           "HybridRuntime: policy full has one tier");
  n_layers_ = dims.n_layers;
  n_heads_ = dims.n_heads;
  n_kv_heads_ = dims.n_kv_heads;
  head_dim_ = dims.head_dim;
  d_model_ = dims.d_model;
  group_ = dims.group();
  sliding_window_ = dims.sliding_window;
  scale_ = dims.scale();
  if (cfg_.partial_dims <= 0) cfg_.partial_dims = std::max(1, head_dim_ / 4);
  cfg_.partial_dims = std::min(cfg_.partial_dims, head_dim_);
  HG_CHECK(cfg_.k_min >= 1 && cfg_.k_fixed >= 0 && cfg_.window >= 0 && cfg_.cpu_threads >= 1,
           "hybrid attention: K_min, K, window or CPU threads out of range");
  if (policy_row(cfg_.policy).window_zero) cfg_.window = 0;

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
  cache_ = std::make_unique<kv::TieredKvCache>(n_layers_, tc, max_sequences, alloc_,
                                               device_->window_factory());
  for (int s = 0; s < max_sequences; ++s) {
    const int id = cache_->open_sequence();  // the engine's sequence ids index these slots
    HG_CHECK(id == s, "tiered KV: unexpected sequence slot");
  }
  cfg_.window = cache_->config().window;
  pp_ = plan_policy(cfg_, n_ctx);

  if (pp_.uses_heavy) {
    const PolicyRow& row = *pp_.row;
    const bool keyformer =
        (row.own_predictor ? row.predictor : cfg_.predictor) == Predictor::kKeyformer;
    for (int i = 0; i < max_sequences * n_layers_; ++i) {
      heavy_.push_back(std::make_unique<kv::HeavyHitterAccumulator>(n_kv_heads_));
      if (keyformer)  // seeded per (sequence, layer): reproducible runs
        heavy_.back()->set_keyformer(cfg_.keyformer_tau_init, cfg_.keyformer_tau_delta,
                                     0x6b6579666f726d72ull + uint64_t(i));
    }
  }
  if (pp_.uses_scheduler) {
    SchedulerConfig sc;
    sc.k_min = cfg_.k_min;
    sc.recall_guard = cfg_.recall_guard;
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
  recall_sum_.assign(n_layers_, 0.0);
  recall_count_.assign(n_layers_, 0);
  exact_layer_.assign(n_layers_, 0);
  stats_.policy = policy_name(cfg_.policy);
  if (pp_.row->decode == DecodePath::kSplit) stats_.cpu_logits = logits_on_name(cfg_.logits_on);
  stats_.window = cfg_.window;
  stats_.allocator = alloc_.name();

  if (pp_.pipelined) {
    jobs_ = std::make_unique<SpscQueue<Job>>(4);
    done_ = std::make_unique<SpscQueue<Done>>(4);
    worker_ = std::thread([this] { worker_main(); });
  }
}

HybridRuntime::~HybridRuntime() {
  if (worker_.joinable()) {
    jobs_->close();
    done_->close();  // a worker blocked on a full result queue wakes too
    worker_.join();
  }
}

HybridAttention::HybridAttention(const HybridConfig& config, const Transformer& model, int n_ctx,
                                 int max_sequences, memory::HostAllocator& alloc)
    : HybridRuntime(config, dims_of(model), std::make_unique<CpuQueryProvider>(model),
                    std::make_unique<CpuDeviceStage>(dims_of(model), alloc), n_ctx, max_sequences,
                    alloc) {}

void HybridRuntime::new_request() {
  if (scheduler_) scheduler_->reset();
}

// ---- Step protocol --------------------------------------------------------------------------

void HybridRuntime::begin_step(const Batch& batch, const int32_t* pos) {
  HG_CHECK(!broken_,
           "hybrid attention: the CPU stage stalled in an earlier step; reload the "
           "engine");
  // A step abandoned by an exception may have left CPU-stage results in flight: drain them.
  for (; outstanding_ > 0; --outstanding_) {
    Done d;
    done_->pop(d);
  }
  // The previous step's evictions into the host stores before they are cleared or read.
  device_->sync_host_stores();
  n_rows_ = batch.size();
  seqs_.assign(batch.seq.begin(), batch.seq.end());
  pos_.assign(pos, pos + n_rows_);
  // The split path needs one token per sequence (a decode step); prefill chunks take exact
  // attention on the device stage.
  bool one_each = true;
  for (int i = 0; i < n_rows_ && one_each; ++i)
    for (int j = 0; j < i; ++j)
      if (seqs_[i] == seqs_[j]) {
        one_each = false;
        break;
      }
  decode_step_ = one_each;
  path_ = one_each ? pp_.row->decode : DecodePath::kOneTier;  // kOneTier here: prefill
  for (int i = 0; i < n_rows_; ++i)
    if (pos_[i] == 0) {  // a new sequence in this slot: forget the previous one's state
      for (int l = 0; l < n_layers_; ++l) {
        cache_->layer(seqs_[i], l).clear();
        if (pp_.uses_heavy) heavy_[size_t(seqs_[i]) * n_layers_ + l]->clear();
      }
    }
  step_t0_ = now_seconds();
  step_wait_ = step_cpu_ = step_tx_ = step_sync_cpu_ = 0;
  step_min_off_ = std::numeric_limits<int>::max();
  step_recall_min_ = 1;
  step_recall_seen_ = false;
  for (int i = 0; i < n_rows_; ++i)
    step_min_off_ = std::min(step_min_off_, cache_->layer(seqs_[i], 0).n_offloaded());
  plan_ = effective_plan(cfg_, scheduler_.get());
  if (decode_step_) device_->begin_step();
}

void HybridRuntime::layer_input(int il, const float* x) {
  if (decode_step_ && cfg_.trace) {  // the device stage's layer boundaries
    const double t = now_seconds();
    if (il > 0) record(main_events_, "device", step_, il - 1, layer_t0_, t);
    layer_t0_ = t;
  }
  if (path_ != DecodePath::kSplit || !worker_.joinable()) return;
  const size_t n_x = size_t(n_rows_) * d_model_;
  // The hand-off: a host copy of the layer input (D2H into pinned memory on a GPU).
  const float* hx = nullptr;
  auto push = [&](int layer) {
    if (!hx) hx = device_->to_host(x, n_x, host_x_);
    Slot& s = *slots_[layer % 2];
    s.x.assign(hx, hx + n_x);
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

void HybridRuntime::record(std::vector<StageEvent>& events, const char* stage, int64_t step,
                           int layer, double begin, double end) {
  if (!cfg_.trace || events.size() >= kMaxTraceEvents) return;
  events.push_back(StageEvent{stage, step, layer, begin - epoch_, end - epoch_});
}

void HybridRuntime::worker_main() {
  omp_set_num_threads(cfg_.cpu_threads);
  Job job;
  while (jobs_->pop(job)) {
    if (job.layer < 0) break;
    Slot& s = *slots_[job.slot];
    Done d;
    try {
      const double t0 = now_seconds();
      query_->query(job.layer, s.x.data(), n_rows_, pos_.data(), s.q.data());
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

// ---- CPU stage ------------------------------------------------------------------------------

HybridRuntime::Done HybridRuntime::cpu_stage(int il, const float* q, int slot_index,
                                             const SchedulerPlan& plan) {
  Done d;
  Slot& slot = *slots_[slot_index];
  if (cfg_.cpu_stage_hook) cfg_.cpu_stage_hook(il);
  const double t0 = now_seconds();
  double t_tx = 0;
  const uint64_t key_row = uint64_t(n_kv_heads_) * head_dim_ * 2;  // one token's bf16 K or V
  // exact-selected: this stage only CHOOSES the tokens; the device stage scores them with the
  // true query from their staged K rows, so no logits of the kept tokens are computed here.
  const bool exact_sel = cfg_.logits_on == LogitsOn::kDevice;
  for (int b = 0; b < n_rows_; ++b) {
    RowResult& r = slot.rows[b];
    const kv::TieredLayerKv& kv = cache_->layer(seqs_[b], il);
    const float* qb = q + size_t(b) * n_heads_ * head_dim_;
    r.n_off = kv.n_offloaded();
    r.lo = sliding_window_ > 0 ? std::clamp(pos_[b] - sliding_window_ + 1, 0, r.n_off) : 0;
    const int avail = r.n_off - r.lo;
    // What the policy's row does with `avail` offloaded tokens under this step's plan.
    const RowPlan rp = plan_row(cfg_, plan, avail);
    r.k = rp.k;
    r.kind = rp.scoring;
    if (rp.scoring == Scoring::kNone) continue;
    const int k = rp.k;

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

    if (rp.scoring == Scoring::kAll && exact_sel) {
      r.sel = kv::select_all(n_kv_heads_, avail);  // every token: nothing to choose
    } else if (rp.scoring == Scoring::kAll || rp.scoring == Scoring::kPostTopK) {
      std::vector<float>& dst = rp.scoring == Scoring::kAll ? r.logits : r.all_logits;
      dst.resize(size_t(n_heads_) * avail);
      lp.n_tokens = avail;
      lp.out = dst.data();
      lp.out_head_stride = avail;
      cpu::attention_logits(lp, cfg_.logits_path);
      d.key_bytes += key_row * avail;
      if (rp.scoring == Scoring::kAll) {
        r.sel = kv::select_all(n_kv_heads_, avail);
      } else {
        r.sel = kv::select_top_k(r.all_logits.data(), n_kv_heads_, group_, avail, avail, k);
        d.recall_sum += kv::selection_recall(r.all_logits.data(), group_, avail, avail, r.sel);
        ++d.recall_n;
        if (!exact_sel) {
          r.logits.resize(size_t(n_heads_) * k);
          for (int qh = 0; qh < n_heads_; ++qh) {
            const int32_t* idx = r.sel.head(qh / group_);
            const float* src = r.all_logits.data() + size_t(qh) * avail;
            float* dstq = r.logits.data() + size_t(qh) * k;
            for (int j = 0; j < k; ++j) dstq[j] = src[idx[j]];
          }
        }
      }
    } else {  // Pre-QKT: predict, then logits of the K predicted tokens only
      if ((rp.predictor == Predictor::kHeavy || rp.predictor == Predictor::kKeyformer) &&
          r.lo == 0) {  // accumulated scores (H2O's mass or Keyformer's Gumbel-softmax)
        r.sel = heavy_[size_t(seqs_[b]) * n_layers_ + il]->select(avail, k, rp.n_recent);
      } else if (rp.predictor == Predictor::kPartial) {
        r.sel = kv::select_partial_dims(qb, head_dim_, n_kv_heads_, group_, head_dim_, keys, avail,
                                        cfg_.partial_dims, k);
        d.key_bytes += uint64_t(avail) * n_kv_heads_ * cfg_.partial_dims * 2;
      } else {  // sinks + recent (also heavy under a sliding window: scores index positions)
        r.sel = kv::select_sinks_recent(n_kv_heads_, avail, k, std::min(cfg_.n_sinks, k));
      }
      if (!exact_sel) {
        r.logits.resize(size_t(n_heads_) * k);
        lp.n_tokens = k;
        lp.token_index = r.sel.idx.data();
        lp.index_head_stride = k;
        lp.out = r.logits.data();
        lp.out_head_stride = k;
        cpu::attention_logits(lp, cfg_.logits_path);
        d.key_bytes += key_row * k;
      }
    }
    // Selection indices are relative to lo; the stores and the concatenator use host-local ones.
    if (r.lo > 0)
      for (int32_t& i : r.sel.idx) i += r.lo;

    // V transfer: gather the selected rows into staging (sized once for the largest K the
    // policy can keep).
    const double tg = now_seconds();
    if (!r.values)
      r.values = std::make_unique<kv::VStaging>(alloc_, n_kv_heads_, head_dim_, pp_.max_k);
    r.values->gather(kv.value_store(), r.sel);
    if (exact_sel) {  // the same gather from the key store: twice the staged bytes
      if (!r.keys)
        r.keys = std::make_unique<kv::VStaging>(alloc_, n_kv_heads_, head_dim_, pp_.max_k);
      r.keys->gather(kv.key_store(), r.sel);
      d.k_staged_bytes += key_row * k;
    }
    t_tx += now_seconds() - tg;
    d.v_bytes += key_row * k;
  }
  d.t_tx = t_tx;
  d.t_cpu = now_seconds() - t0 - t_tx;
  return d;
}

// ---- Device stage ---------------------------------------------------------------------------

void HybridRuntime::attend(int il, const float* q, const float* k, const float* v, float* out) {
  switch (path_) {
    case DecodePath::kSplit:
      split_attention(il, q, k, v, out);
      return;
    case DecodePath::kHostExact:
      host_exact(il, q, k, v, out);
      return;
    case DecodePath::kStreamAll:
      device_exact(il, q, k, v, out, /*stream_offloaded=*/true);
      return;
    case DecodePath::kOneTier:  // prefill chunks: exact attention on the device stage
      device_exact(il, q, k, v, out, /*stream_offloaded=*/false);
      return;
  }
}

void HybridRuntime::split_attention(int il, const float* q, const float* k, const float* v,
                                    float* out) {
  const int64_t q_w = int64_t(n_heads_) * head_dim_, kv_w = int64_t(n_kv_heads_) * head_dim_;
  Done d;
  const bool speculated = worker_.joinable() && !exact_layer_[il];
  const float* hq = nullptr;  // host copy of the true query (synchronous mode, cosine)
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
    hq = device_->to_host(q, size_t(n_rows_) * q_w, host_q_);
    d = cpu_stage(il, hq, il % 2, plan_);
    const double t1 = now_seconds();
    step_sync_cpu_ += t1 - t0;
    record(main_events_, "cpu", step_, il, t0, t1 - d.t_tx);
    record(main_events_, "tx", step_, il, t1 - d.t_tx, t1);
  }
  if (speculated) {  // how close the speculated query came to the true one
    hq = device_->to_host(q, size_t(n_rows_) * q_w, host_q_);
    const float* qs = slots_[il % 2]->q.data();
    for (int64_t hqi = 0; hqi < int64_t(n_rows_) * n_heads_; ++hqi) {
      const float* a = hq + hqi * head_dim_;
      const float* b = qs + hqi * head_dim_;
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
  stats_.key_bytes_moved += d.k_staged_bytes;
  if (d.recall_n > 0) {
    const double layer_recall = d.recall_sum / d.recall_n;
    recall_sum_[il] += d.recall_sum;
    recall_count_[il] += d.recall_n;
    step_recall_min_ = std::min(step_recall_min_, layer_recall);
    step_recall_seen_ = true;
  }
  const Slot& slot = *slots_[il % 2];
  rows_.resize(n_rows_);
  for (int b = 0; b < n_rows_; ++b) {
    const RowResult& r = slot.rows[b];
    kv::TieredLayerKv& kv = cache_->layer(seqs_[b], il);
    const int p = pos_[b];
    HG_CHECK(kv.length() == p, "hybrid attention: sequence " + std::to_string(seqs_[b]) +
                                   " holds " + std::to_string(kv.length()) + " tokens at layer " +
                                   std::to_string(il) + ", expected " + std::to_string(p));
    HG_CHECK(kv.n_offloaded() == r.n_off,
             "hybrid attention: offloaded count changed under the CPU stage");
    DecodeRow& row = rows_[b];
    row.kv = &kv;
    row.pos = p;
    row.q = q + b * q_w;
    row.k_new = k + b * kv_w;
    row.v_new = v + b * kv_w;
    row.cpu = CpuPart{};
    if (r.k > 0) {
      row.cpu.k = r.k;
      row.cpu.sel = r.sel.idx.data();
      if (cfg_.logits_on == LogitsOn::kDevice)
        row.cpu.keys = r.keys->data();
      else
        row.cpu.logits = r.logits.data();
      row.cpu.values = r.values->data();
    }
    row.heavy = heavy(seqs_[b], il);
    row.out = out + b * q_w;
    ++stats_.layer_passes;
    k_sum_ += r.k;
    switch (r.kind) {
      case Scoring::kNone:
      case Scoring::kAll:
        ++stats_.passes_all;
        break;
      case Scoring::kPostTopK:
        ++stats_.passes_post_qkt;
        break;
      case Scoring::kPreK:
        ++stats_.passes_pre_qkt;
        break;
    }
  }
  if (cfg_.decode_observer)
    for (int b = 0; b < n_rows_; ++b)
      cfg_.decode_observer(il, seqs_[b], rows_[b].kv->n_offloaded(), rows_[b].cpu.k,
                           rows_[b].cpu.sel);
  device_->decode(il, rows_.data(), n_rows_);
}

// Exact attention on the device stage: prefill chunks (every policy), and aog's decode (every
// offloaded K/V shipped to the device first).
void HybridRuntime::device_exact(int il, const float* q, const float* k, const float* v, float* out,
                                 bool stream_offloaded) {
  const int n = n_rows_;
  exact_kv_.resize(n);
  exact_heavy_.resize(n);
  for (int t = 0; t < n; ++t) {
    exact_kv_[t] = &cache_->layer(seqs_[t], il);
    exact_heavy_[t] = heavy(seqs_[t], il);
  }
  ExactBatch b;
  b.n = n;
  b.seq = seqs_.data();
  b.pos = pos_.data();
  b.q = q;
  b.k = k;
  b.v = v;
  b.out = out;
  b.kv = exact_kv_.data();
  b.heavy = exact_heavy_.data();
  const ExactResult r = device_->exact(il, b, stream_offloaded);
  if (!decode_step_) return;
  stats_.value_bytes_moved += r.bytes_moved;
  step_tx_ += r.t_tx;
  step_sync_cpu_ += r.t_tx;  // the device waits for the copy: not device compute time
  for (int t = 0; t < n; ++t) {
    ++stats_.layer_passes;
    ++stats_.passes_all;
    k_sum_ += exact_kv_[t]->n_offloaded();
  }
}

// aoc (MoE-Lightning-like): the whole attention over the offloaded tokens on the CPU, from the
// host stores (bf16). The window is empty (window 0): the new token is offloaded by its append.
void HybridRuntime::host_exact(int il, const float* q_dev, const float* k_dev, const float* v_dev,
                               float* out_dev) {
  const int n = n_rows_;
  const int64_t q_w = int64_t(n_heads_) * head_dim_, kv_w = int64_t(n_kv_heads_) * head_dim_;
  // On a GPU the step's q, k, v come to the host and only the result goes back (the CPU backend
  // passes host memory through).
  std::vector<float> sq, sk, sv, so;
  const float* q = device_->to_host(q_dev, size_t(n) * q_w, sq);
  const float* k = device_->to_host(k_dev, size_t(n) * kv_w, sk);
  const float* v = device_->to_host(v_dev, size_t(n) * kv_w, sv);
  float* out = out_dev;
  if (q != q_dev) {
    so.resize(size_t(n) * q_w);
    out = so.data();
  }
  for (int t = 0; t < n; ++t) {
    kv::TieredLayerKv& kv = cache_->layer(seqs_[t], il);
    HG_CHECK(kv.length() == pos_[t], "hybrid attention: sequence " + std::to_string(seqs_[t]) +
                                         " holds " + std::to_string(kv.length()) +
                                         " tokens, the step appends at " + std::to_string(pos_[t]));
    kv.append(1, k + t * kv_w, v + t * kv_w);
    HG_CHECK(kv.n_window() == 0, "aoc: the window must be empty");
  }
  const double t0 = now_seconds();
#pragma omp parallel
  {
    std::vector<float> scores;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int t = 0; t < n; ++t)
      for (int qh = 0; qh < n_heads_; ++qh) {
        const kv::TieredLayerKv& kv = cache_->layer(seqs_[t], il);
        const int h = qh / group_, p = pos_[t];
        const int lo = sliding_window_ > 0 ? std::max(0, p - sliding_window_ + 1) : 0;
        const float* qv = q + t * q_w + int64_t(qh) * head_dim_;
        scores.resize(p - lo + 1);
        for (int j = lo; j <= p; ++j)
          scores[j - lo] = host::dot_bf16(qv, kv.key_store().row(h, j), head_dim_) * scale_;
        cpu::softmax(scores.data(), p - lo + 1);
        float* o = out + t * q_w + int64_t(qh) * head_dim_;
        std::fill(o, o + head_dim_, 0.f);
        for (int j = lo; j <= p; ++j)
          host::axpy_bf16(scores[j - lo], kv.value_store().row(h, j), o, head_dim_);
      }
  }
  if (out != out_dev) device_->from_host(out_dev, out, size_t(n) * q_w);
  const double t1 = now_seconds();
  step_sync_cpu_ += t1 - t0;
  step_cpu_ += t1 - t0;
  for (int t = 0; t < n; ++t) {
    ++stats_.layer_passes;
    ++stats_.passes_all;
    const int n_off = cache_->layer(seqs_[t], il).n_offloaded();
    k_sum_ += n_off;
    stats_.key_bytes_read += uint64_t(n_off) * kv_w * 2 * 2;
  }
}

void HybridRuntime::end_step() {
  if (!decode_step_) return;
  const double t_end = now_seconds();
  record(main_events_, "device", step_, n_layers_ - 1, layer_t0_, t_end);
  const double wall = t_end - step_t0_;
  StageLatencies lat;
  // T_gpu: the device's clock where it has one (CUDA events), else the calling thread's wall
  // time minus its waits for the CPU stage and its own CPU-stage work (the CPU backend).
  // With CUDA events the step's span includes the GPU's idle time while this thread waited for
  // the CPU stage (nothing new was queued then): that wait is taken out too.
  const std::optional<double> dev = device_->step_seconds();
  lat.t_gpu =
      dev ? std::max(0.0, *dev - step_wait_) : std::max(0.0, wall - step_wait_ - step_sync_cpu_);
  lat.t_cpu = step_cpu_;
  lat.t_tx = step_tx_;
  ++stats_.decode_steps;
  stats_.t_device += lat.t_gpu;
  stats_.t_cpu += lat.t_cpu;
  stats_.t_tx += lat.t_tx;
  stats_.t_wait += step_wait_;
  // After the warm-up, layers whose speculated query is measured to be poor get the true query
  // (synchronous CPU stage) from then on; the others keep speculating.
  if (path_ == DecodePath::kSplit && worker_.joinable() &&
      ++spec_steps_ == cfg_.speculation_warmup_steps) {
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
  if (step_recall_seen_) {
    recall_min_step_ = std::min(recall_min_step_, step_recall_min_);
    recall_any_ = true;
  }
  if (scheduler_ && path_ == DecodePath::kSplit &&
      step_min_off_ != std::numeric_limits<int>::max() && step_min_off_ >= cfg_.k_min)
    scheduler_->update(step_, -1, lat, step_min_off_, step_recall_min_);
  ++step_;
}

AttentionStats HybridRuntime::stats() const {
  AttentionStats s = stats_;
  s.mean_k = s.layer_passes > 0 ? k_sum_ / double(s.layer_passes) : 0;
  double cs = 0;
  int64_t cn = 0;
  for (int l = 0; l < n_layers_; ++l) {
    s.speculation_cosine_per_layer.push_back(cos_count_[l] ? cos_sum_[l] / cos_count_[l] : 0);
    if (l > 0) cs += cos_sum_[l], cn += cos_count_[l];
  }
  s.speculation_cosine = cn ? cs / cn : 0;
  double rs = 0;
  int64_t rn = 0;
  for (int l = 0; l < n_layers_; ++l) {
    s.recall_per_layer.push_back(recall_count_[l] ? recall_sum_[l] / recall_count_[l] : 0);
    rs += recall_sum_[l], rn += recall_count_[l];
  }
  s.recall = rn ? rs / rn : 0;
  s.recall_min_step = recall_any_ ? recall_min_step_ : 0;
  if (scheduler_) s.recall_guard_holds = scheduler_->count(SchedulerBranch::kHoldLowRecall);
  reported_choice(cfg_, effective_plan(cfg_, scheduler_.get()), &s.k_now, &s.mode_now);
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
      if (r.keys) staging += r.keys->bytes();
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

std::vector<StageEvent> HybridRuntime::trace() const {
  std::vector<StageEvent> all = main_events_;
  all.insert(all.end(), worker_events_.begin(), worker_events_.end());
  std::stable_sort(all.begin(), all.end(),
                   [](const StageEvent& a, const StageEvent& b) { return a.begin < b.begin; });
  return all;
}

void HybridRuntime::reset_stats() {
  main_events_.clear();
  worker_events_.clear();
  cos_sum_.assign(n_layers_, 0.0);
  cos_count_.assign(n_layers_, 0);
  recall_sum_.assign(n_layers_, 0.0);
  recall_count_.assign(n_layers_, 0);
  recall_min_step_ = 1;
  recall_any_ = false;
  AttentionStats fresh;
  fresh.policy = stats_.policy;
  fresh.cpu_logits = stats_.cpu_logits;
  fresh.window = stats_.window;
  fresh.allocator = stats_.allocator;
  stats_ = fresh;
  k_sum_ = 0;
}

}  // namespace hybridgen::runtime

namespace hybridgen::runtime {

// ---- Shared prefill -------------------------------------------------------------------------

const char* HybridRuntime::heavy_kind() const {
  if (!pp_.uses_heavy || heavy_.empty()) return "";
  return heavy_[0]->keyformer() ? "keyformer" : "h2o";
}

int HybridRuntime::attended_keys(int seq, int il, std::vector<float>& K) const {
  const kv::TieredLayerKv& kv = cache_->layer(seq, il);
  const int n = kv.length(), n_off = kv.n_offloaded(), nw = kv.n_window(), hd = head_dim_;
  const kv::WindowStore* ws = kv.window();
  HG_CHECK(nw == 0 || ws->host_keys(0), "attended_keys: the window is in device memory");
  K.resize(size_t(n_kv_heads_) * n * hd);
  for (int h = 0; h < n_kv_heads_; ++h) {
    float* kh = K.data() + size_t(h) * n * hd;
    if (n_off > 0) host::bf16_to_f32_row(kv.key_store().row(h, 0), kh, int64_t(n_off) * hd);
    for (int i = 0; i < nw; ++i)
      std::copy_n(ws->host_keys(h) + int64_t(kv.window_slot(i)) * hd, hd,
                  kh + int64_t(n_off + i) * hd);
  }
  return n;
}

void HybridRuntime::capture_prefill(int seq, PrefillSnapshot::Sequence& out) {
  HG_CHECK(outstanding_ == 0, "prefill snapshot: a forward step is in flight");
  device_->sync_host_stores();
  const int hd = head_dim_, nkv = n_kv_heads_;
  const int64_t kv_w = int64_t(nkv) * hd;
  out.k.assign(n_layers_, {});
  out.v.assign(n_layers_, {});
  const std::string kind = heavy_kind();
  std::vector<std::vector<float>>* stats = kind == "h2o"         ? &out.h2o
                                           : kind == "keyformer" ? &out.keyformer
                                                                 : nullptr;
  if (stats) stats->assign(n_layers_, {});
  std::vector<uint16_t> tk, tv;  // a CUDA window's bf16 rows, exported
  for (int l = 0; l < n_layers_; ++l) {
    const kv::TieredLayerKv& kv = cache_->layer(seq, l);
    const int n = kv.length(), n_off = kv.n_offloaded(), nw = kv.n_window();
    std::vector<float>& K = out.k[l];
    std::vector<float>& V = out.v[l];
    K.resize(size_t(n) * kv_w);
    V.resize(size_t(n) * kv_w);
    for (int h = 0; h < nkv; ++h)
      for (int i = 0; i < n_off; ++i) {  // host-local index i is position i (FIFO eviction)
        host::bf16_to_f32_row(kv.key_store().row(h, i), &K[size_t(i) * kv_w + h * hd], hd);
        host::bf16_to_f32_row(kv.value_store().row(h, i), &V[size_t(i) * kv_w + h * hd], hd);
      }
    const kv::WindowStore* ws = kv.window();
    if (nw > 0 && ws->host_keys(0)) {
      for (int h = 0; h < nkv; ++h)
        for (int i = 0; i < nw; ++i) {
          const int64_t slot = kv.window_slot(i);
          std::copy_n(ws->host_keys(h) + slot * hd, hd, &K[size_t(n_off + i) * kv_w + h * hd]);
          std::copy_n(ws->host_values(h) + slot * hd, hd, &V[size_t(n_off + i) * kv_w + h * hd]);
        }
    } else if (nw > 0) {  // device memory: the ring's (at most two) runs, bf16
      for (int i = 0; i < nw;) {
        const int slot = kv.window_slot(i), len = std::min(nw - i, ws->capacity() - slot);
        tk.resize(size_t(len) * kv_w);
        tv.resize(size_t(len) * kv_w);
        ws->export_bf16(slot, len, tk.data(), tv.data(), int64_t(len) * hd);
        for (int h = 0; h < nkv; ++h)
          for (int j = 0; j < len; ++j) {
            const size_t dst = size_t(n_off + i + j) * kv_w + h * hd;
            host::bf16_to_f32_row(&tk[(size_t(h) * len + j) * hd], &K[dst], hd);
            host::bf16_to_f32_row(&tv[(size_t(h) * len + j) * hd], &V[dst], hd);
          }
        i += len;
      }
    }
    if (stats) {
      const kv::HeavyHitterAccumulator& a = *heavy_[size_t(seq) * n_layers_ + l];
      std::vector<float>& S = (*stats)[l];
      S.assign(size_t(nkv) * n, 0.f);
      for (int h = 0; h < nkv; ++h)
        std::copy_n(a.score(h).begin(), std::min<size_t>(n, a.score(h).size()),
                    S.begin() + int64_t(h) * n);
      out.stat_updates = a.updates();
    }
  }
}

std::string HybridRuntime::restore_problem(const PrefillSnapshot& s, int index) const {
  if (index < 0 || index >= int(s.sequences.size()))
    return "prefill snapshot: no sequence " + std::to_string(index) + " (it holds " +
           std::to_string(s.sequences.size()) + ")";
  const PrefillSnapshot::Sequence& q = s.sequences[index];
  if (q.n_tokens() >= n_ctx_)
    return "prefill snapshot: " + std::to_string(q.n_tokens()) +
           " prompt tokens do not fit the context size " + std::to_string(n_ctx_) + " (-c)";
  if (int(q.k.size()) != n_layers_ || int(q.v.size()) != n_layers_)
    return "prefill snapshot: K/V of " + std::to_string(q.k.size()) + " layers, the model has " +
           std::to_string(n_layers_);
  const std::string kind = heavy_kind();
  if (kind.empty()) return "";
  const auto& st = kind == "h2o" ? q.h2o : q.keyformer;
  if (int(st.size()) != n_layers_)
    return "prefill snapshot: policy " + std::string(policy_name(cfg_.policy)) +
           " starts decoding from the prompt's " + kind +
           " scores, which this snapshot does not hold (take it with attention statistics: "
           "PrefillSnapshotOptions::attention_stats" +
           (kind == "keyformer" ? std::string(" and keyformer_stats") : std::string()) + ")";
  if (kind == "keyformer" && (s.keyformer_tau_init != cfg_.keyformer_tau_init ||
                              s.keyformer_tau_delta != cfg_.keyformer_tau_delta))
    return "prefill snapshot: its Keyformer scores were accumulated with tau_init " +
           std::to_string(s.keyformer_tau_init) + ", tau_delta " +
           std::to_string(s.keyformer_tau_delta) + "; this engine uses " +
           std::to_string(cfg_.keyformer_tau_init) + ", " +
           std::to_string(cfg_.keyformer_tau_delta);
  return "";
}

void HybridRuntime::restore_prefill(int seq, const PrefillSnapshot& s, int index) {
  const std::string why = restore_problem(s, index);
  HG_CHECK(why.empty(), why);
  HG_CHECK(outstanding_ == 0, "prefill restore: a forward step is in flight");
  device_->sync_host_stores();
  const PrefillSnapshot::Sequence& q = s.sequences[index];
  const int n = q.n_tokens();
  const size_t rows = size_t(n) * n_kv_heads_ * head_dim_;
  for (int l = 0; l < n_layers_; ++l) {
    HG_CHECK(q.k[l].size() == rows && q.v[l].size() == rows,
             "prefill snapshot: layer " + std::to_string(l) + " holds " +
                 std::to_string(q.k[l].size()) + " K values, expected " + std::to_string(rows));
    kv::TieredLayerKv& kv = cache_->layer(seq, l);
    kv.clear();
    device_->restore(l, kv, n, q.k[l].data(), q.v[l].data());
    if (kv::HeavyHitterAccumulator* a = heavy(seq, l)) {
      const auto& st = a->keyformer() ? q.keyformer : q.h2o;
      HG_CHECK(st[l].size() == size_t(n_kv_heads_) * n,
               "prefill snapshot: layer " + std::to_string(l) + "'s scores have the wrong size");
      a->load(st[l].data(), n, q.stat_updates);
    }
  }
}

}  // namespace hybridgen::runtime
