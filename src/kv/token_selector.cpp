#include "kv/token_selector.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "model/dequant.h"
#include "util/check.h"

namespace hybridgen::kv {

namespace {

void check_counts(const char* who, int n_kv_heads, int n_tokens, int k) {
  HG_CHECK(n_kv_heads >= 1 && n_tokens >= 0 && k >= 0,
           std::string(who) + ": need n_kv_heads >= 1, n_tokens >= 0, k >= 0 (got " +
               std::to_string(n_kv_heads) + ", " + std::to_string(n_tokens) + ", " +
               std::to_string(k) + ")");
}

// Scores compared as numbers with NaN below -inf; equal scores: lower index first.
struct Better {
  const float* s;
  bool operator()(int32_t a, int32_t b) const {
    const float sa = s[a], sb = s[b];
    const bool na = std::isnan(sa), nb = std::isnan(sb);
    if (na != nb) return nb;  // the non-NaN one is better
    if (!na && sa != sb) return sa > sb;
    return a < b;
  }
};

TokenSelection make(int n_kv_heads, int k) {
  TokenSelection s;
  s.n_kv_heads = n_kv_heads;
  s.k = k;
  s.idx.resize(static_cast<size_t>(n_kv_heads) * k);
  return s;
}

// score[t] = combine over the group's rows of rows[j * stride + t].
void combine_group(const float* rows, int group, int n, int64_t stride, GroupCombine c,
                   float* score) {
  std::copy_n(rows, n, score);
  for (int j = 1; j < group; ++j) {
    const float* r = rows + j * stride;
    if (c == GroupCombine::kMax) {
      // NaN-propagating max: a NaN logit is a fault upstream, keep it visible (it ranks last).
      for (int t = 0; t < n; ++t)
        score[t] =
            (std::isnan(score[t]) || std::isnan(r[t])) ? std::nanf("") : std::max(score[t], r[t]);
    } else {
      for (int t = 0; t < n; ++t) score[t] += r[t];
    }
  }
}

}  // namespace

TokenSelection select_all(int n_kv_heads, int n_tokens) {
  check_counts("select_all", n_kv_heads, n_tokens, 0);
  TokenSelection s = make(n_kv_heads, n_tokens);
  for (int h = 0; h < n_kv_heads; ++h)
    std::iota(s.idx.begin() + static_cast<int64_t>(h) * n_tokens,
              s.idx.begin() + static_cast<int64_t>(h + 1) * n_tokens, 0);
  return s;
}

void top_k_ascending(const float* score, int n, int k, int32_t* out) {
  if (k >= n) {
    std::iota(out, out + n, 0);
    return;
  }
  if (k <= 0) return;
  std::vector<int32_t> cand(n);
  std::iota(cand.begin(), cand.end(), 0);
  // O(n) partition around the k-th best; the comparator is a strict total order (index
  // tie-break), so the chosen set does not depend on the library's algorithm.
  std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), Better{score});
  std::sort(cand.begin(), cand.begin() + k);  // original order
  std::copy_n(cand.begin(), k, out);
}

TokenSelection select_top_k(const float* logits, int n_kv_heads, int group, int n_tokens,
                            int64_t head_stride, int k, GroupCombine combine) {
  check_counts("select_top_k", n_kv_heads, n_tokens, k);
  HG_CHECK(group >= 1, "select_top_k: group must be >= 1, got " + std::to_string(group));
  HG_CHECK(logits || n_tokens == 0, "select_top_k: null logits");
  HG_CHECK(head_stride >= n_tokens || n_kv_heads * group == 1,
           "select_top_k: head_stride " + std::to_string(head_stride) +
               " is shorter than n_tokens " + std::to_string(n_tokens));
  const int kk = std::min(k, n_tokens);
  TokenSelection s = make(n_kv_heads, kk);
  std::vector<float> score(n_tokens);  // [n_tokens] combined over the group
  for (int h = 0; h < n_kv_heads; ++h) {
    combine_group(logits + static_cast<int64_t>(h) * group * head_stride, group, n_tokens,
                  head_stride, combine, score.data());
    top_k_ascending(score.data(), n_tokens, k, s.idx.data() + static_cast<int64_t>(h) * kk);
  }
  return s;
}

double selection_recall(const float* logits, int group, int n_tokens, int64_t head_stride,
                        const TokenSelection& sel) {
  HG_CHECK(group >= 1 && n_tokens >= 0 && sel.k <= n_tokens,
           "selection_recall: bad group, token count or selection size");
  if (n_tokens == 0 || sel.n_kv_heads == 0) return 1;
  double sum = 0;
  const int n_heads = sel.n_kv_heads * group;
  for (int qh = 0; qh < n_heads; ++qh) {
    const float* x = logits + int64_t(qh) * head_stride;
    const float m = *std::max_element(x, x + n_tokens);
    double all = 0, kept = 0;
    for (int j = 0; j < n_tokens; ++j)
      all += std::exp(x[j] - m);  // float exp: a few ns, once per logit
    const int32_t* idx = sel.head(qh / group);
    for (int j = 0; j < sel.k; ++j) kept += std::exp(x[idx[j]] - m);
    sum += all > 0 ? kept / all : 1;
  }
  return sum / n_heads;
}

TokenSelection select_sinks_recent(int n_kv_heads, int n_tokens, int k, int n_sinks) {
  check_counts("select_sinks_recent", n_kv_heads, n_tokens, k);
  HG_CHECK(n_sinks >= 0,
           "select_sinks_recent: n_sinks must be >= 0, got " + std::to_string(n_sinks));
  if (k >= n_tokens) return select_all(n_kv_heads, n_tokens);
  const int sinks = std::min(n_sinks, k);
  TokenSelection s = make(n_kv_heads, k);
  for (int h = 0; h < n_kv_heads; ++h) {
    int32_t* out = s.idx.data() + static_cast<int64_t>(h) * k;
    for (int i = 0; i < sinks; ++i) out[i] = i;
    // recent: the last k - sinks tokens; they start at n - (k - sinks) >= sinks since k < n.
    for (int i = 0; i < k - sinks; ++i) out[sinks + i] = n_tokens - (k - sinks) + i;
  }
  return s;
}

// ---- H2O --------------------------------------------------------------------------------------
HeavyHitterAccumulator::HeavyHitterAccumulator(int n_kv_heads)
    : n_kv_heads_(n_kv_heads), score_(std::max(n_kv_heads, 0)) {
  HG_CHECK(n_kv_heads >= 1,
           "heavy-hitter accumulator: n_kv_heads must be >= 1, got " + std::to_string(n_kv_heads));
}

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

float gumbel_noise(uint64_t seed, int64_t update, int qh, int position) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<uint64_t>(update));
  h = splitmix64(h ^ (static_cast<uint64_t>(qh) << 32 | static_cast<uint32_t>(position)));
  const double u = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;  // (0, 1), never 0 or 1
  return static_cast<float>(-std::log(-std::log(u)));
}

void HeavyHitterAccumulator::set_keyformer(float tau_init, float tau_delta, uint64_t seed) {
  HG_CHECK(tau_init > 0 && tau_delta >= 0,
           "Keyformer: tau_init must be > 0 and tau_delta >= 0, got " + std::to_string(tau_init) +
               " and " + std::to_string(tau_delta));
  keyformer_ = true;
  tau_init_ = tau_init;
  tau_delta_ = tau_delta;
  seed_ = seed;
}

void HeavyHitterAccumulator::keyformer_transform(float* probs, const int32_t* pos, int n,
                                                 int qh) const {
  if (n <= 0) return;
  const float inv_tau = 1.0f / tau();
  // The smallest normal float stands in for log(0): a token with no attention mass keeps a
  // (vanishing) Gumbel-softmax share instead of a NaN.
  constexpr float kTiny = 1.17549435e-38f;
  float m = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < n; ++j) {
    probs[j] =
        (std::log(std::max(probs[j], kTiny)) + gumbel_noise(seed_, updates_, qh, pos[j])) * inv_tau;
    m = std::max(m, probs[j]);
  }
  double sum = 0;
  for (int j = 0; j < n; ++j) sum += (probs[j] = std::exp(probs[j] - m));
  const float inv = static_cast<float>(1.0 / sum);
  for (int j = 0; j < n; ++j) probs[j] *= inv;
}

void HeavyHitterAccumulator::load(const float* scores, int n_tokens, int64_t updates) {
  HG_CHECK(n_tokens >= 0 && updates >= 0, "heavy-hitter accumulator: bad state to load");
  for (int h = 0; h < n_kv_heads_; ++h)
    score_[h].assign(scores + int64_t(h) * n_tokens, scores + int64_t(h + 1) * n_tokens);
  updates_ = updates;
}

void HeavyHitterAccumulator::grow(int n_tokens) {
  HG_CHECK(n_tokens >= static_cast<int>(score_[0].size()),
           "heavy-hitter accumulator: the offloaded count went down from " +
               std::to_string(score_[0].size()) + " to " + std::to_string(n_tokens));
  for (auto& s : score_) s.resize(n_tokens, 0.f);
}

void HeavyHitterAccumulator::accumulate(const float* probs, int group, int n_tokens,
                                        int64_t head_stride) {
  HG_CHECK(group >= 1 && n_tokens >= 0, "heavy-hitter accumulator: bad group or n_tokens");
  grow(n_tokens);
  for (int h = 0; h < n_kv_heads_; ++h)
    for (int j = 0; j < group; ++j) {
      const float* p = probs + static_cast<int64_t>(h * group + j) * head_stride;
      for (int t = 0; t < n_tokens; ++t) score_[h][t] += p[t];
    }
}

void HeavyHitterAccumulator::accumulate_selected(const TokenSelection& sel, const float* probs,
                                                 int group, int64_t head_stride, int n_tokens) {
  HG_CHECK(sel.n_kv_heads == n_kv_heads_,
           "heavy-hitter accumulator: selection has " + std::to_string(sel.n_kv_heads) +
               " KV heads, the accumulator " + std::to_string(n_kv_heads_));
  HG_CHECK(group >= 1, "heavy-hitter accumulator: group must be >= 1");
  grow(n_tokens);
  for (int h = 0; h < n_kv_heads_; ++h) {
    const int32_t* idx = sel.head(h);
    for (int j = 0; j < group; ++j) {
      const float* p = probs + static_cast<int64_t>(h * group + j) * head_stride;
      for (int t = 0; t < sel.k; ++t) {
        HG_CHECK(idx[t] >= 0 && idx[t] < n_tokens,
                 "heavy-hitter accumulator: selected token " + std::to_string(idx[t]) +
                     " is outside the " + std::to_string(n_tokens) + " offloaded tokens");
        score_[h][idx[t]] += p[t];
      }
    }
  }
}

TokenSelection HeavyHitterAccumulator::select(int n_tokens, int k, int n_recent) const {
  check_counts("heavy-hitter select", n_kv_heads_, n_tokens, k);
  HG_CHECK(n_recent >= 0, "heavy-hitter select: n_recent must be >= 0");
  if (k >= n_tokens) return select_all(n_kv_heads_, n_tokens);
  const int recent = std::min(n_recent, k);
  const int first_recent = n_tokens - recent;  // tokens [first_recent, n) are reserved
  TokenSelection s = make(n_kv_heads_, k);
  std::vector<float> score(first_recent);
  for (int h = 0; h < n_kv_heads_; ++h) {
    const std::vector<float>& acc = score_[h];
    for (int t = 0; t < first_recent; ++t)
      score[t] = t < static_cast<int>(acc.size()) ? acc[t] : 0.f;
    int32_t* out = s.idx.data() + static_cast<int64_t>(h) * k;
    // Heavy hitters among the older tokens, then the recent ones: both ascending, and every
    // heavy index < first_recent, so the row is ascending.
    top_k_ascending(score.data(), first_recent, k - recent, out);
    for (int i = 0; i < recent; ++i) out[k - recent + i] = first_recent + i;
  }
  return s;
}

// ---- InfiniGen-style partial dimensions --------------------------------------------------------
TokenSelection select_partial_dims(const float* q, int64_t q_head_stride, int n_kv_heads, int group,
                                   int head_dim, const cpu::KeysView& keys, int n_tokens, int r,
                                   int k, GroupCombine combine) {
  check_counts("select_partial_dims", n_kv_heads, n_tokens, k);
  HG_CHECK(group >= 1 && head_dim >= 1, "select_partial_dims: group and head_dim must be >= 1");
  HG_CHECK(r >= 1,
           "select_partial_dims: r (dimensions kept) must be >= 1, got " + std::to_string(r));
  if (k >= n_tokens) return select_all(n_kv_heads, n_tokens);
  HG_CHECK(q && keys.data, "select_partial_dims: null q or keys");
  r = std::min(r, head_dim);
  TokenSelection s = make(n_kv_heads, k);
  std::vector<float> mag(head_dim);
  std::vector<int32_t> dims(r);
  std::vector<float> approx(static_cast<size_t>(group) * n_tokens);  // [group, n_tokens]
  std::vector<float> score(n_tokens);
  for (int h = 0; h < n_kv_heads; ++h) {
    const float* qh = q + static_cast<int64_t>(h) * group * q_head_stride;  // [group, head_dim]
    std::fill(mag.begin(), mag.end(), 0.f);
    for (int j = 0; j < group; ++j)
      for (int i = 0; i < head_dim; ++i) mag[i] += std::fabs(qh[j * q_head_stride + i]);
    top_k_ascending(mag.data(), head_dim, r, dims.data());
    for (int t = 0; t < n_tokens; ++t) {
      const int64_t off = h * keys.head_stride + static_cast<int64_t>(t) * keys.token_stride;
      for (int j = 0; j < group; ++j) approx[static_cast<size_t>(j) * n_tokens + t] = 0.f;
      for (int d : dims) {
        float kv;
        switch (keys.dtype) {
          case cpu::KeyDType::kF32:
            kv = static_cast<const float*>(keys.data)[off + d];
            break;
          case cpu::KeyDType::kF16:
            kv = f16_to_f32(static_cast<const uint16_t*>(keys.data)[off + d]);
            break;
          default:
            kv = bf16_to_f32(static_cast<const uint16_t*>(keys.data)[off + d]);
            break;
        }
        for (int j = 0; j < group; ++j)
          approx[static_cast<size_t>(j) * n_tokens + t] += qh[j * q_head_stride + d] * kv;
      }
    }
    combine_group(approx.data(), group, n_tokens, n_tokens, combine, score.data());
    top_k_ascending(score.data(), n_tokens, k, s.idx.data() + static_cast<int64_t>(h) * k);
  }
  return s;
}

}  // namespace hybridgen::kv
