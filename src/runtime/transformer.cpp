#include "runtime/transformer.h"

#include <cmath>
#include <cstring>

#include "cpu/ops.h"
#include "util/check.h"

namespace hybridgen {

Transformer::Transformer(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  if (!config_.learned_positions) inv_freq_ = config_.rope_inv_freq();
}

void Transformer::norm(const float* x, const std::vector<float>& w, const std::vector<float>& b,
                       int n, float* out) const {
  if (config_.layer_norm)
    cpu::layer_norm(x, w.data(), b.data(), n, config_.d_model, config_.norm_eps, out);
  else
    cpu::rms_norm(x, w.data(), n, config_.d_model, config_.norm_eps, out);
}

FullAttention::FullAttention(kv::KvCacheManager& cache, int n_heads, int head_dim,
                             int sliding_window)
    : cache_(cache), n_heads_(n_heads), head_dim_(head_dim), sliding_window_(sliding_window) {}

void FullAttention::begin_step(const Batch& batch, const int32_t* pos) {
  batch_ = &batch;
  pos_ = pos;
}

void FullAttention::attend(int il, const float* q, const float* k, const float* v, float* out) {
  const int n = batch_->size();
  const int64_t kv_w = int64_t(cache_.shape().n_kv_heads) * head_dim_;
  for (int t = 0; t < n; ++t) cache_.write(batch_->seq[t], il, pos_[t], k + t * kv_w, v + t * kv_w);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
  cpu::attention(q, n, n_heads_, head_dim_, batch_->seq.data(), pos_, cache_, il, scale,
                 sliding_window_, out);
}

void Transformer::forward(const Batch& batch, kv::KvCacheManager& cache,
                          std::vector<float>& logits) {
  const ModelConfig& c = config_;
  const int n = batch.size();
  HG_CHECK(n > 0, "forward: empty batch");
  const int d = c.d_model, hd = c.head_dim;
  const int q_w = c.n_heads * hd, kv_w = c.n_kv_heads * hd, qkv_w = q_w + 2 * kv_w;
  const int ffn_w = c.relu_ffn ? c.d_ff : 2 * c.d_ff;
  auto dump = [&](const char* name, int il, const float* data, int rows, int width) {
    if (callback_) callback_(name, il, data, rows, width);
  };

  for (int t = 0; t < n; ++t)
    HG_CHECK(batch.tokens[t] >= 0 && batch.tokens[t] < c.vocab_size,
             "token id " + std::to_string(batch.tokens[t]) + " is outside the vocabulary (" +
                 std::to_string(c.vocab_size) + " tokens)");
  // Positions: each token goes at the end of its sequence.
  std::vector<int32_t> pos(n);
  for (int t = 0; t < n; ++t) pos[t] = cache.reserve(batch.seq[t], 1);

  std::vector<float> x(size_t(n) * d);         // [n, d] residual stream
  std::vector<float> h(size_t(n) * d);         // [n, d] normed input / projection output
  std::vector<float> qkv(size_t(n) * qkv_w);   // [n, q | k | v]
  std::vector<float> q(size_t(n) * q_w);       // [n, n_heads, head_dim]
  std::vector<float> k(size_t(n) * kv_w);      // [n, n_kv_heads, head_dim]
  std::vector<float> v(size_t(n) * kv_w);      // [n, n_kv_heads, head_dim]
  std::vector<float> att(size_t(n) * q_w);     // [n, n_heads, head_dim]
  std::vector<float> ffn(size_t(n) * ffn_w);   // [n, 2 d_ff] (gate | up) or [n, d_ff]
  std::vector<float> act(size_t(n) * c.d_ff);  // [n, d_ff]

  weights_.token_embedding.lookup(batch.tokens.data(), n, x.data());
  if (c.learned_positions) {
    for (int t = 0; t < n; ++t) {
      const int64_t p = int64_t(pos[t]) + c.position_offset;
      HG_CHECK(pos[t] < c.max_positions,
               "position " + std::to_string(pos[t]) + " is past the model's " +
                   std::to_string(c.max_positions) + " learned positions");
      const float* pe = weights_.position_embedding.data() + p * d;
      for (int i = 0; i < d; ++i) x[size_t(t) * d + i] += pe[i];
    }
  }
  dump("inp_embd", -1, x.data(), n, d);

  FullAttention full(cache, c.n_heads, hd, c.sliding_window);
  AttentionRunner& attn = runner_ ? *runner_ : static_cast<AttentionRunner&>(full);
  attn.begin_step(batch, pos.data());
  for (int il = 0; il < c.n_layers; ++il) {
    const LayerWeights& L = weights_.layers[il];
    attn.layer_input(il, x.data());
    // --- attention block ---
    norm(x.data(), L.attn_norm, L.attn_norm_b, n, h.data());
    dump("attn_norm", il, h.data(), n, d);
    L.qkv.forward(h.data(), qkv.data(), n);
    for (int t = 0; t < n; ++t) {
      const float* row = qkv.data() + size_t(t) * qkv_w;
      std::memcpy(&q[size_t(t) * q_w], row, sizeof(float) * q_w);
      std::memcpy(&k[size_t(t) * kv_w], row + q_w, sizeof(float) * kv_w);
      std::memcpy(&v[size_t(t) * kv_w], row + q_w + kv_w, sizeof(float) * kv_w);
    }
    if (!c.learned_positions) {
      const bool neox = c.rope_style == RopeStyle::kNeox;
      cpu::rope(q.data(), n, c.n_heads, hd, c.rope_dim, pos.data(), inv_freq_.data(), neox);
      cpu::rope(k.data(), n, c.n_kv_heads, hd, c.rope_dim, pos.data(), inv_freq_.data(), neox);
    }
    dump("q", il, q.data(), n, q_w);
    dump("k", il, k.data(), n, kv_w);
    dump("v", il, v.data(), n, kv_w);
    attn.attend(il, q.data(), k.data(), v.data(), att.data());
    dump("attn_out", il, att.data(), n, q_w);
    L.out.forward(att.data(), h.data(), n);
    cpu::add(x.data(), h.data(), int64_t(n) * d);

    // --- feed-forward block ---
    norm(x.data(), L.ffn_norm, L.ffn_norm_b, n, h.data());
    dump("ffn_norm", il, h.data(), n, d);
    L.up.forward(h.data(), ffn.data(), n);
    if (c.relu_ffn) {
      cpu::relu(ffn.data(), int64_t(n) * c.d_ff);
      L.down.forward(ffn.data(), h.data(), n);
    } else {
      cpu::swiglu(ffn.data(), n, c.d_ff, act.data());
      L.down.forward(act.data(), h.data(), n);
    }
    cpu::add(x.data(), h.data(), int64_t(n) * d);
    dump("l_out", il, x.data(), n, d);
  }
  attn.end_step();

  // --- head: only the rows that want logits ---
  std::vector<int> rows;
  for (int t = 0; t < n; ++t)
    if (batch.want_logits[t]) rows.push_back(t);
  logits.assign(rows.size() * size_t(c.vocab_size), 0.f);
  if (rows.empty()) return;
  std::vector<float> last(rows.size() * size_t(d));  // [n_out, d]
  for (size_t r = 0; r < rows.size(); ++r)
    std::memcpy(&last[r * d], &x[size_t(rows[r]) * d], sizeof(float) * d);
  norm(last.data(), weights_.final_norm, weights_.final_norm_b, int(rows.size()), last.data());
  dump("result_norm", -1, last.data(), int(rows.size()), d);
  weights_.lm_head.forward(last.data(), logits.data(), int(rows.size()));
}

}  // namespace hybridgen
