#include "runtime/prefill_capture.h"

#include <algorithm>
#include <chrono>

#include "cpu/ops.h"
#include "runtime/host_loops.h"
#include "runtime/transformer.h"

namespace hybridgen::runtime {

PromptStatsAttention::PromptStatsAttention(kv::KvCacheManager& cache, const ModelDims& dims,
                                           AttentionRunner* inner, KeysOf keys_of, bool stats,
                                           bool keyformer, float keyformer_tau_init,
                                           float keyformer_tau_delta)
    : cache_(cache),
      d_(dims),
      full_(cache, dims.n_heads, dims.head_dim, dims.sliding_window),
      inner_(inner ? inner : &full_),
      keys_of_(std::move(keys_of)),
      stats_(stats),
      keyformer_(keyformer),
      tau_init_(keyformer_tau_init),
      tau_delta_(keyformer_tau_delta) {
  if (!keys_of_)  // the KV-cache manager's rows (FullAttention)
    keys_of_ = [this](int seq, int il, std::vector<float>& K) {
      const int len = cache_.length(seq), hd = d_.head_dim;
      const kv::LayerView view = cache_.view(seq, il);
      K.resize(size_t(d_.n_kv_heads) * len * hd);
      for (int h = 0; h < d_.n_kv_heads; ++h)
        for (int j = 0; j < len; ++j)
          std::copy_n(view.key(h, j), hd, &K[(size_t(h) * len + j) * hd]);
      return len;
    };
}

void PromptStatsAttention::begin_step(const Batch& batch, const int32_t* pos) {
  inner_->begin_step(batch, pos);
  batch_ = &batch;
  pos_ = pos;
}

const kv::HeavyHitterAccumulator* PromptStatsAttention::h2o(int seq, int il) const {
  const size_t i = size_t(seq) * d_.n_layers + il;
  return i < h2o_.size() ? h2o_[i].get() : nullptr;
}

const kv::HeavyHitterAccumulator* PromptStatsAttention::keyformer(int seq, int il) const {
  const size_t i = size_t(seq) * d_.n_layers + il;
  return keyformer_ && i < kf_.size() ? kf_[i].get() : nullptr;
}

void PromptStatsAttention::attend(int il, const float* q, const float* k, const float* v,
                                  float* out) {
  inner_->attend(il, q, k, v, out);  // the engine's own attention (stores K/V)
  if (!stats_) return;
  const auto t0 = std::chrono::steady_clock::now();
  const Batch& b = *batch_;
  const int n = b.size(), hd = d_.head_dim, group = d_.group(), nkv = d_.n_kv_heads;
  const int64_t q_w = int64_t(d_.n_heads) * hd;
  const float scale = d_.scale();
  // Distinct sequences of the step, their tokens, their accumulators (grown outside the region).
  std::vector<int> seqs;
  std::vector<std::vector<int>> toks;
  for (int t = 0; t < n; ++t) {
    auto it = std::find(seqs.begin(), seqs.end(), b.seq[t]);
    if (it == seqs.end()) {
      seqs.push_back(b.seq[t]);
      toks.emplace_back();
      it = seqs.end() - 1;
    }
    toks[it - seqs.begin()].push_back(t);
  }
  std::vector<kv::HeavyHitterAccumulator*> H(seqs.size()), K(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    const size_t i = size_t(seqs[s]) * d_.n_layers + il;
    if (h2o_.size() <= i) {
      h2o_.resize(i + 1);
      kf_.resize(i + 1);
    }
    if (!h2o_[i]) {
      h2o_[i] = std::make_unique<kv::HeavyHitterAccumulator>(nkv);
      kf_[i] = std::make_unique<kv::HeavyHitterAccumulator>(nkv);
      // The runtime's seed of (slot, layer): HybridRuntime's heavy_[slot * n_layers + layer].
      kf_[i]->set_keyformer(tau_init_, tau_delta_, 0x6b6579666f726d72ull + uint64_t(i));
    }
    H[s] = h2o_[i].get();
    K[s] = kf_[i].get();
  }
  if (keys_.size() < seqs.size()) keys_.resize(seqs.size());
  std::vector<int> lens(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    lens[s] = keys_of_(seqs[s], il, keys_[s]);
    H[s]->scores_for_update(0, lens[s]);
    K[s]->scores_for_update(0, lens[s]);
  }
  // One (sequence, KV head) per iteration: its scores are written by one thread, in token order.
#pragma omp parallel
  {
    std::vector<float> probs, gumbel;
    std::vector<int32_t> at;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int s = 0; s < int(seqs.size()); ++s)
      for (int h = 0; h < nkv; ++h) {
        const float* kh = keys_[s].data() + size_t(h) * lens[s] * hd;
        float* sh = H[s]->scores_for_update(h, 0);
        float* sk = K[s]->scores_for_update(h, 0);
        for (int t : toks[s]) {
          const int p = pos_[t];
          const int lo = d_.sliding_window > 0 ? std::max(0, p - d_.sliding_window + 1) : 0;
          const int m = p - lo + 1;
          probs.resize(m);
          gumbel.resize(m);
          at.resize(m);
          for (int j = lo; j <= p; ++j) at[j - lo] = j;
          for (int qh = h * group; qh < (h + 1) * group; ++qh) {
            const float* qv = q + t * q_w + int64_t(qh) * hd;
            for (int j = lo; j <= p; ++j)
              probs[j - lo] = host::dot_f32(qv, kh + int64_t(j) * hd, hd) * scale;
            cpu::softmax(probs.data(), m);
            for (int j = 0; j < m; ++j) sh[lo + j] += probs[j];
            if (!keyformer_) continue;
            std::copy(probs.begin(), probs.end(), gumbel.begin());
            K[s]->keyformer_transform(gumbel.data(), at.data(), m, qh);
            for (int j = 0; j < m; ++j) sk[lo + j] += gumbel[j];
          }
        }
      }
  }
  for (size_t s = 0; s < seqs.size(); ++s) {
    H[s]->end_update();
    K[s]->end_update();
  }
  stats_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  (void)k;
  (void)v;
}

}  // namespace hybridgen::runtime
