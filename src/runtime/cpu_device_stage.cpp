#include "runtime/cpu_device_stage.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/ops.h"
#include "runtime/host_loops.h"
#include "runtime/transformer.h"
#include "util/check.h"

namespace hybridgen::runtime {

using host::axpy_bf16;
using host::axpy_f32;
using host::dot_f32;

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}

float ModelDims::scale() const { return 1.0f / std::sqrt(static_cast<float>(head_dim)); }

ModelDims dims_of(const Transformer& model) {
  const ModelConfig& c = model.config();
  ModelDims d;
  d.n_layers = c.n_layers;
  d.n_heads = c.n_heads;
  d.n_kv_heads = c.n_kv_heads;
  d.head_dim = c.head_dim;
  d.d_model = c.d_model;
  d.sliding_window = c.sliding_window;
  return d;
}

// ---- Speculative query ----------------------------------------------------------------------

void CpuQueryProvider::query(int il, const float* x, int n, const int32_t* pos, float* q) const {
  const ModelConfig& c = model_.config();
  const LayerWeights& L = model_.weights().layers[il];
  std::vector<float> h(size_t(n) * c.d_model);  // [n, d_model]
  if (c.layer_norm)
    cpu::layer_norm(x, L.attn_norm.data(), L.attn_norm_b.data(), n, c.d_model, c.norm_eps,
                    h.data());
  else
    cpu::rms_norm(x, L.attn_norm.data(), n, c.d_model, c.norm_eps, h.data());
  // The Q rows of the fused Q|K|V projection only.
  L.qkv.forward_rows(h.data(), q, n, c.n_heads * c.head_dim);
  if (!c.learned_positions)
    cpu::rope(q, n, c.n_heads, c.head_dim, c.rope_dim, pos, model_.inv_freq().data(),
              c.rope_style == RopeStyle::kNeox);
}

// ---- Device stage ---------------------------------------------------------------------------

CpuDeviceStage::CpuDeviceStage(const ModelDims& dims, memory::HostAllocator& alloc)
    : d_(dims), scale_(dims.scale()), alloc_(alloc) {}

kv::WindowFactory CpuDeviceStage::window_factory() {
  return [this](int n_kv_heads, int head_dim, int capacity) -> std::unique_ptr<kv::WindowStore> {
    return std::make_unique<kv::HostWindowStore>(alloc_, n_kv_heads, head_dim, capacity);
  };
}

void CpuDeviceStage::decode(int il, const DecodeRow* rows, int n) {
  (void)il;
  for (int b = 0; b < n; ++b) decode_row(rows[b]);
}

// One sequence's decode token: window logits in slot order (one contiguous pass, as a device
// computes them over its ring), the token concatenator (kv::concat_tiers) puts the CPU part's
// logits and the window's in position order, the new token's last; one softmax; values in the
// same order. Exact: the same terms as monolithic attention over the kept tokens.
void CpuDeviceStage::decode_row(const DecodeRow& r) {
  kv::TieredLayerKv& kv = *r.kv;
  const int p = r.pos, k = r.cpu.k, hd = d_.head_dim, group = d_.group();
  const int n_off = kv.n_offloaded(), nw = kv.n_window();
  const int lo_pos = d_.sliding_window > 0 ? p - d_.sliding_window + 1 : 0;
  const kv::WindowStore* ws = kv.window();
  const int cap = ws ? ws->capacity() : 0;
  const int total = k + nw + 1;  // kept offloaded, window, the new token
  HG_CHECK(k == 0 || (r.cpu.logits != nullptr) != (r.cpu.keys != nullptr),
           "device stage: a CPU part carries either logits or K rows");
  kv::HeavyHitterAccumulator* heavy = r.heavy;
  if (heavy) heavy->scores_for_update(0, p + 1);  // grow once, outside the parallel region

#pragma omp parallel
  {
    std::vector<float> window_logits(cap);  // [window slots] in slot order, as the device has them
    std::vector<float> probs(total);        // [total] in original position order
    std::vector<float> kept_logits(r.cpu.keys ? k : 0);  // [k] exact-selected: this stage's
    std::vector<int32_t> at;                             // Keyformer: attended positions
#pragma omp for schedule(static)
    for (int qh = 0; qh < d_.n_heads; ++qh) {
      const int h = qh / group;
      const float* qv = r.q + int64_t(qh) * hd;
      const float* cpu_logits = k > 0 && r.cpu.logits ? r.cpu.logits + int64_t(qh) * k : nullptr;
      if (k > 0 && r.cpu.keys) {  // exact-selected: the kept tokens' logits with the true query
        const uint16_t* ks = r.cpu.keys + int64_t(h) * k * hd;
        for (int j = 0; j < k; ++j)
          kept_logits[j] = host::dot_bf16(qv, ks + int64_t(j) * hd, hd) * scale_;
        cpu_logits = kept_logits.data();
      }
      for (int i = 0; i < nw; ++i) {
        const int s = kv.window_slot(i);
        window_logits[s] = dot_f32(qv, ws->host_keys(h) + int64_t(s) * hd, hd) * scale_;
      }
      static const int32_t kNoSelection = 0;  // non-null: "a selection of k == 0 tokens"
      kv::concat_tiers(kv, k > 0 ? r.cpu.sel + int64_t(h) * k : &kNoSelection, k, cpu_logits,
                       window_logits.data(), 1, probs.data());
      probs[total - 1] = dot_f32(qv, r.k_new + int64_t(h) * hd, hd) * scale_;
      for (int i = 0; i < nw; ++i)  // sliding window: window positions too old to attend
        if (n_off + i < lo_pos) probs[k + i] = kNegInf;
      cpu::softmax(probs.data(), total);
      float* o = r.out + int64_t(qh) * hd;
      std::fill(o, o + hd, 0.f);
      const uint16_t* vs = k > 0 ? r.cpu.values + int64_t(h) * k * hd : nullptr;
      for (int j = 0; j < k; ++j) axpy_bf16(probs[j], vs + int64_t(j) * hd, o, hd);
      for (int i = 0; i < nw; ++i)
        axpy_f32(probs[k + i], ws->host_values(h) + int64_t(kv.window_slot(i)) * hd, o, hd);
      axpy_f32(probs[total - 1], r.v_new + int64_t(h) * hd, o, hd);
      if (heavy) {
        // H2O's score: attention mass per position, summed over the group's query heads. Query
        // heads of a group may run on different threads, so the adds are atomic.
        float* sc = heavy->scores_for_update(h, p + 1);
        const int32_t* sel = k > 0 ? r.cpu.sel + int64_t(h) * k : nullptr;
        if (heavy->keyformer()) {  // Keyformer: the Gumbel-softmax of the same logits instead
          at.resize(total);        // the attended positions, in probs' order
          for (int j = 0; j < k; ++j) at[j] = sel[j];
          for (int i = 0; i < nw; ++i) at[k + i] = n_off + i;
          at[total - 1] = p;
          // (masked window positions, probability 0, keep a vanishing share)
          heavy->keyformer_transform(probs.data(), at.data(), total, qh);
        }
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
  if (heavy) heavy->end_update();
  // The new token enters the window; the least recently generated one leaves it.
  kv.append(1, r.k_new, r.v_new);
}

// Exact attention as full attention does it (paper: prefill is exact for every policy). The
// step's tokens are appended first, in bulk (TieredLayerKv::append moves whole runs: old window
// tokens out in at most two ring segments, chunk tokens that leave at once straight to the host
// stores). Then each distinct sequence's K/V is laid out once as contiguous float32
// [n_kv_heads, length, head_dim] — offloaded rows widened from bf16, window rows in position
// order — and the attention loop is full's (cpu::attention's): one dot per position, softmax,
// one axpy per position, no per-position tier test. The layout costs length * n_kv_heads *
// head_dim * 2 conversions per layer and sequence, against n_chunk times that in the loop.
// For aog the same layout is the stream to the device (timed as T_tx).
ExactResult CpuDeviceStage::exact(int il, const ExactBatch& b, bool stream_offloaded) {
  (void)il;
  ExactResult res;
  const int n = b.n, hd = d_.head_dim, nkv = d_.n_kv_heads, group = d_.group();
  const int64_t q_w = int64_t(d_.n_heads) * hd, kv_w = int64_t(nkv) * hd;
  for (int t = 0; t < n;) {  // append runs of consecutive tokens of one sequence at once
    int e = t + 1;
    while (e < n && b.kv[e] == b.kv[t] && b.pos[e] == b.pos[e - 1] + 1) ++e;
    kv::TieredLayerKv& kv = *b.kv[t];
    HG_CHECK(kv.length() == b.pos[t], "hybrid attention: sequence " + std::to_string(b.seq[t]) +
                                          " holds " + std::to_string(kv.length()) +
                                          " tokens, the step appends at " +
                                          std::to_string(b.pos[t]));
    kv.append(e - t, b.k + t * kv_w, b.v + t * kv_w);
    t = e;
  }
  // Distinct sequences of the step and each token's index among them.
  std::vector<kv::TieredLayerKv*> distinct;
  std::vector<int> idx(n);
  for (int t = 0; t < n; ++t) {
    auto it = std::find(distinct.begin(), distinct.end(), b.kv[t]);
    idx[t] = int(it - distinct.begin());
    if (it == distinct.end()) distinct.push_back(b.kv[t]);
  }
  const auto t0 = omp_get_wtime();
  if (seq_k_.size() < distinct.size()) {
    seq_k_.resize(distinct.size());
    seq_v_.resize(distinct.size());
  }
  std::vector<int> len(distinct.size());
  for (size_t s = 0; s < distinct.size(); ++s) {
    const kv::TieredLayerKv& kv = *distinct[s];
    const int L = kv.length(), n_off = kv.n_offloaded(), nw = kv.n_window();
    len[s] = L;
    std::vector<float>& K = seq_k_[s];
    std::vector<float>& V = seq_v_[s];
    if (K.size() < size_t(L) * kv_w) {
      K.resize(size_t(L) * kv_w);
      V.resize(size_t(L) * kv_w);
    }
    const kv::WindowStore* ws = kv.window();
#pragma omp parallel for schedule(static)
    for (int h = 0; h < nkv; ++h) {
      float* kh = K.data() + int64_t(h) * L * hd;
      float* vh = V.data() + int64_t(h) * L * hd;
      if (n_off > 0) {  // the host stores are token-major per KV head: one run per head
        host::bf16_to_f32_row(kv.key_store().row(h, 0), kh, int64_t(n_off) * hd);
        host::bf16_to_f32_row(kv.value_store().row(h, 0), vh, int64_t(n_off) * hd);
      }
      for (int i = 0; i < nw; ++i) {
        const int64_t slot = kv.window_slot(i);
        std::copy_n(ws->host_keys(h) + slot * hd, hd, kh + int64_t(n_off + i) * hd);
        std::copy_n(ws->host_values(h) + slot * hd, hd, vh + int64_t(n_off + i) * hd);
      }
    }
    if (stream_offloaded) res.bytes_moved += uint64_t(n_off) * kv_w * 2;
  }
  if (stream_offloaded) res.t_tx = omp_get_wtime() - t0;

  // Heavy-hitter scores: per-thread partial sums, added once per thread (no atomics in the
  // loop). Offsets of each distinct sequence's [n_kv_heads, length] block.
  bool any_heavy = false;
  std::vector<int64_t> heavy_off(distinct.size() + 1, 0);
  std::vector<kv::HeavyHitterAccumulator*> heavy_of(distinct.size(), nullptr);
  for (int t = 0; t < n; ++t)
    if (b.heavy && b.heavy[t]) heavy_of[idx[t]] = b.heavy[t], any_heavy = true;
  for (size_t s = 0; s < distinct.size(); ++s) {
    heavy_off[s + 1] = heavy_off[s] + (heavy_of[s] ? int64_t(nkv) * len[s] : 0);
    if (heavy_of[s]) heavy_of[s]->scores_for_update(0, len[s]);  // grow outside the region
  }

#pragma omp parallel
  {
    std::vector<float> scores;
    std::vector<int32_t> at;  // Keyformer: attended positions
    std::vector<float> part(any_heavy ? size_t(heavy_off.back()) : 0, 0.f);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int t = 0; t < n; ++t)
      for (int qh = 0; qh < d_.n_heads; ++qh) {
        const int s = idx[t], h = qh / group, p = b.pos[t], L = len[s];
        const int lo = d_.sliding_window > 0 ? std::max(0, p - d_.sliding_window + 1) : 0;
        const float* kh = seq_k_[s].data() + int64_t(h) * L * hd;
        const float* vh = seq_v_[s].data() + int64_t(h) * L * hd;
        const float* qv = b.q + t * q_w + int64_t(qh) * hd;
        scores.resize(p - lo + 1);
        for (int j = lo; j <= p; ++j)
          scores[j - lo] = dot_f32(qv, kh + int64_t(j) * hd, hd) * scale_;
        cpu::softmax(scores.data(), p - lo + 1);
        float* o = b.out + t * q_w + int64_t(qh) * hd;
        std::fill(o, o + hd, 0.f);
        for (int j = lo; j <= p; ++j) axpy_f32(scores[j - lo], vh + int64_t(j) * hd, o, hd);
        if (heavy_of[s]) {
          if (heavy_of[s]->keyformer()) {  // Keyformer: the prompt's Gumbel-softmax (τ_init)
            at.resize(p - lo + 1);
            for (int j = lo; j <= p; ++j) at[j - lo] = j;
            heavy_of[s]->keyformer_transform(scores.data(), at.data(), p - lo + 1, qh);
          }
          float* sc = part.data() + heavy_off[s] + int64_t(h) * L;
          for (int j = lo; j <= p; ++j) sc[j] += scores[j - lo];
        }
      }
    if (any_heavy) {
#pragma omp critical(hybrid_heavy_scores)
      for (size_t s = 0; s < distinct.size(); ++s) {
        if (!heavy_of[s]) continue;
        for (int h = 0; h < nkv; ++h) {
          float* dst = heavy_of[s]->scores_for_update(h, 0);
          const float* src = part.data() + heavy_off[s] + int64_t(h) * len[s];
          for (int j = 0; j < len[s]; ++j) dst[j] += src[j];
        }
      }
    }
  }
  for (size_t s = 0; s < distinct.size(); ++s)
    if (heavy_of[s]) heavy_of[s]->end_update();
  return res;
}

}  // namespace hybridgen::runtime
