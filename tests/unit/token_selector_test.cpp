#include "kv/token_selector.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "hybridgen/error.h"

namespace hybridgen::kv {
namespace {

using V = std::vector<int32_t>;
V row(const TokenSelection& s, int h) { return V(s.head(h), s.head(h) + s.k); }

TEST(TokenSelector, SelectionOffIsEveryToken) {
  const TokenSelection s = select_all(2, 5);
  EXPECT_EQ(s.k, 5);
  EXPECT_EQ(row(s, 0), (V{0, 1, 2, 3, 4}));
  EXPECT_EQ(row(s, 1), (V{0, 1, 2, 3, 4}));
}

TEST(TokenSelector, PostQktTopKPerKvHeadInOriginalOrder) {
  // 2 KV heads x group 2, 6 tokens; logits: [4, 6] (stride 8, padding ignored)
  const float nan = std::nanf("");
  std::vector<float> logits = {
      // KV head 0, query head 0 and 1
      0.f,
      5.f,
      1.f,
      2.f,
      9.f,
      3.f,
      nan,
      nan,  //
      8.f,
      0.f,
      1.f,
      2.f,
      0.f,
      4.f,
      nan,
      nan,  //
      // KV head 1
      1.f,
      1.f,
      1.f,
      1.f,
      1.f,
      1.f,
      nan,
      nan,  // all tied
      0.f,
      0.f,
      0.f,
      7.f,
      0.f,
      0.f,
      nan,
      nan,
  };
  // max: head 0 scores {8,5,1,2,9,4} -> top 3 = tokens 4, 0, 1 -> ascending {0,1,4}
  //      head 1 scores {1,1,1,7,1,1} -> 3, then ties broken to the lowest index: 0, 1
  TokenSelection s = select_top_k(logits.data(), 2, 2, 6, 8, 3, GroupCombine::kMax);
  EXPECT_EQ(s.k, 3);
  EXPECT_EQ(row(s, 0), (V{0, 1, 4}));
  EXPECT_EQ(row(s, 1), (V{0, 1, 3}));
  // sum: head 0 {8,5,2,4,9,7} -> 4, 0, 5 ; head 1 {1,1,1,8,1,1} -> 3, 0, 1
  s = select_top_k(logits.data(), 2, 2, 6, 8, 3, GroupCombine::kSum);
  EXPECT_EQ(row(s, 0), (V{0, 4, 5}));
  EXPECT_EQ(row(s, 1), (V{0, 1, 3}));
  // max and sum differ where one head needs a token the other ignores: token 0 (8 vs 0).
  s = select_top_k(logits.data(), 2, 2, 6, 8, 1, GroupCombine::kMax);
  EXPECT_EQ(row(s, 0), (V{4}));
  // K >= n: all tokens.
  s = select_top_k(logits.data(), 2, 2, 6, 8, 6);
  EXPECT_EQ(row(s, 0), (V{0, 1, 2, 3, 4, 5}));
  s = select_top_k(logits.data(), 2, 2, 6, 8, 100);
  EXPECT_EQ(s.k, 6);
  EXPECT_EQ(row(s, 1), (V{0, 1, 2, 3, 4, 5}));
  s = select_top_k(logits.data(), 2, 2, 6, 8, 0);
  EXPECT_EQ(s.k, 0);
}

TEST(TokenSelector, TiesAndNansAreDeterministic) {
  const float nan = std::nanf("");
  std::vector<float> score = {2.f, nan, 2.f, 2.f, -INFINITY, 2.f, nan};
  std::vector<int32_t> out(4);
  top_k_ascending(score.data(), 7, 4, out.data());
  EXPECT_EQ(out, (V{0, 2, 3, 5}));
  out.resize(6);  // -inf beats NaN; of the two NaNs the lower index wins
  top_k_ascending(score.data(), 7, 6, out.data());
  EXPECT_EQ(out, (V{0, 1, 2, 3, 4, 5}));
}

TEST(TokenSelector, SinksPlusRecent) {
  TokenSelection s = select_sinks_recent(2, 20, 7);
  EXPECT_EQ(row(s, 0), (V{0, 1, 2, 3, 17, 18, 19}));
  EXPECT_EQ(row(s, 1), row(s, 0));
  s = select_sinks_recent(1, 20, 3);  // fewer than the sinks: the first k
  EXPECT_EQ(row(s, 0), (V{0, 1, 2}));
  s = select_sinks_recent(1, 6, 5);  // sinks and recent meet without overlap
  EXPECT_EQ(row(s, 0), (V{0, 1, 2, 3, 5}));
  s = select_sinks_recent(1, 6, 6);
  EXPECT_EQ(row(s, 0), (V{0, 1, 2, 3, 4, 5}));
  s = select_sinks_recent(1, 10, 4, 0);  // no sinks: a plain window
  EXPECT_EQ(row(s, 0), (V{6, 7, 8, 9}));
}

TEST(TokenSelector, HeavyHittersFromAccumulatedProbabilities) {
  HeavyHitterAccumulator acc(2);
  // step 1: 5 tokens, group 2. probs: [4, 5]
  std::vector<float> p1 = {
      0.1f, 0.6f, 0.1f, 0.1f, 0.1f,  // KV head 0
      0.1f, 0.5f, 0.2f, 0.1f, 0.1f,  //
      0.7f, 0.0f, 0.1f, 0.1f, 0.1f,  // KV head 1
      0.5f, 0.1f, 0.1f, 0.1f, 0.2f,
  };
  acc.accumulate(p1.data(), 2, 5, 5);
  EXPECT_FLOAT_EQ(acc.score(0)[1], 1.1f);
  // step 2: 7 tokens (two new ones start at 0) but only a selection was attended:
  // head 0 attended {2, 6}, head 1 {3, 4}. probs: [4, 2]
  TokenSelection sel;
  sel.n_kv_heads = 2;
  sel.k = 2;
  sel.idx = {2, 6, 3, 4};
  std::vector<float> p2 = {0.5f, 0.5f, 0.5f, 0.4f, 0.3f, 0.7f, 0.6f, 0.4f};
  acc.accumulate_selected(sel, p2.data(), 2, 2, 7);
  // head 0: {0.2, 1.1, 0.3+1.0, 0.2, 0.2, 0, 0.9}; head 1: {1.2, 0.1, 0.2, 0.2+1.0, 0.3+1.1, 0, 0}
  TokenSelection s = acc.select(7, 3);
  EXPECT_EQ(row(s, 0), (V{1, 2, 6}));
  EXPECT_EQ(row(s, 1), (V{0, 3, 4}));
  s = acc.select(7, 3, 1);  // reserve the most recent token, 2 heavy hitters
  EXPECT_EQ(row(s, 0), (V{1, 2, 6}));
  EXPECT_EQ(row(s, 1), (V{0, 4, 6}));
  s = acc.select(7, 9);
  EXPECT_EQ(s.k, 7);
  sel.idx = {2, 9, 3, 4};
  EXPECT_THROW(acc.accumulate_selected(sel, p2.data(), 2, 2, 7), Error);  // 9 is not offloaded
  EXPECT_THROW(acc.accumulate(p1.data(), 2, 5, 5), Error);                // the count cannot shrink
}

TEST(TokenSelector, PartialDimensionPredictor) {
  // 1 KV head, group 2, head_dim 4, 5 tokens, r = 1. |q| per dim summed over the group:
  // q0 = {0.1, 3, 0, 0.1}, q1 = {0.2, -2, 0, 0.1} -> dim 1 dominates.
  std::vector<float> q = {0.1f, 3.f, 0.f, 0.1f, 0.2f, -2.f, 0.f, 0.1f};
  // keys: [5, 4] f32. Along dim 1: {1, -4, 2, 0.5, 3}; other dims large but ignored with r = 1.
  std::vector<float> k = {
      9,  1,    9,  9,   //
      9,  -4,   9,  9,   //
      -9, 2,    -9, -9,  //
      0,  0.5f, 0,  0,   //
      0,  3,    0,  0,
  };
  const cpu::KeysView keys{k.data(), cpu::KeyDType::kF32, 20, 4};
  // approx logits, head 0: 3*{1,-4,2,0.5,3} = {3,-12,6,1.5,9}; head 1: -2*{...} = {-2,8,-4,-1,-6}
  // max: {3, 8, 6, 1.5, 9} -> top 2: tokens 4, 1
  TokenSelection s = select_partial_dims(q.data(), 4, 1, 2, 4, keys, 5, 1, 2);
  EXPECT_EQ(row(s, 0), (V{1, 4}));
  // sum: {1, -4, 2, 0.5, 3} -> tokens 4, 2
  s = select_partial_dims(q.data(), 4, 1, 2, 4, keys, 5, 1, 2, GroupCombine::kSum);
  EXPECT_EQ(row(s, 0), (V{2, 4}));
  // r = head_dim: exact logits. head 0 token 0: 0.9+3+0+0.9 = 4.8 ...; just check it runs and
  // equals Post-QKT top-K on the exact logits.
  std::vector<float> exact(2 * 5);
  for (int j = 0; j < 2; ++j)
    for (int t = 0; t < 5; ++t) {
      float a = 0;
      for (int i = 0; i < 4; ++i) a += q[j * 4 + i] * k[t * 4 + i];
      exact[j * 5 + t] = a;
    }
  s = select_partial_dims(q.data(), 4, 1, 2, 4, keys, 5, 4, 3);
  EXPECT_EQ(row(s, 0), row(select_top_k(exact.data(), 1, 2, 5, 5, 3), 0));
  s = select_partial_dims(q.data(), 4, 1, 2, 4, keys, 5, 1, 5);  // K >= n
  EXPECT_EQ(row(s, 0), (V{0, 1, 2, 3, 4}));
  EXPECT_THROW(select_partial_dims(q.data(), 4, 1, 2, 4, keys, 5, 0, 2), Error);
}

TEST(TokenSelector, BadArgumentsAreClearErrors) {
  std::vector<float> l(10);
  EXPECT_THROW(select_top_k(l.data(), 1, 1, 10, 10, -1), Error);
  EXPECT_THROW(select_top_k(l.data(), 1, 0, 10, 10, 1), Error);
  EXPECT_THROW(select_top_k(l.data(), 2, 1, 10, 5, 1), Error);  // stride shorter than a row
  EXPECT_THROW(select_sinks_recent(0, 10, 1), Error);
  EXPECT_THROW(HeavyHitterAccumulator(0), Error);
}

// Recall against a direct double-precision computation: softmax over each query head's logits,
// the kept mass of its KV head's selection, mean over query heads.
TEST(TokenSelector, SelectionRecallIsTheKeptSoftmaxMass) {
  const int n_kv = 2, group = 2, n = 7, stride = 9;
  std::vector<float> logits(size_t(n_kv) * group * stride, 99.f);  // padding must be ignored
  for (int qh = 0; qh < n_kv * group; ++qh)
    for (int j = 0; j < n; ++j) logits[size_t(qh) * stride + j] = 0.3f * ((qh * 5 + j * 3) % 7);
  TokenSelection sel;
  sel.n_kv_heads = n_kv;
  sel.k = 3;
  sel.idx = {0, 2, 6, 1, 3, 4};
  double want = 0;
  for (int qh = 0; qh < n_kv * group; ++qh) {
    double all = 0, kept = 0;
    for (int j = 0; j < n; ++j) all += std::exp(double(logits[size_t(qh) * stride + j]));
    for (int j = 0; j < 3; ++j)
      kept += std::exp(double(logits[size_t(qh) * stride + sel.idx[(qh / group) * 3 + j]]));
    want += kept / all / (n_kv * group);
  }
  EXPECT_NEAR(selection_recall(logits.data(), group, n, stride, sel), want, 1e-6);
  EXPECT_NEAR(selection_recall(logits.data(), group, n, stride, select_all(n_kv, n)), 1.0, 1e-6);
}

// Keyformer's score function against its definition computed here from the LOGITS in double:
// softmax((x + ζ) / τ) with τ = τ_init + τ_delta * accumulations; the accumulator is handed the
// attention probabilities softmax(x) (what the device stages have). And the noise is Gumbel(0, 1):
// mean = Euler-Mascheroni γ, variance π²/6.
TEST(TokenSelector, KeyformerScoreIsTheGumbelSoftmaxOfTheLogits) {
  HeavyHitterAccumulator acc(1);
  acc.set_keyformer(1.0f, 0.25f, 42);
  const std::vector<float> x = {0.5f, -1.0f, 2.0f, 0.0f, 1.5f};
  const std::vector<int32_t> pos = {0, 3, 4, 7, 9};
  for (int update = 0; update < 3; ++update) {
    std::vector<float> p(x.size());
    double z = 0;
    for (float v : x) z += std::exp(double(v));
    for (size_t j = 0; j < x.size(); ++j) p[j] = float(std::exp(double(x[j])) / z);
    acc.keyformer_transform(p.data(), pos.data(), int(p.size()), 2);
    const double tau = 1.0 + 0.25 * update;
    EXPECT_FLOAT_EQ(acc.tau(), float(tau));
    std::vector<double> want(x.size());
    double zs = 0;
    for (size_t j = 0; j < x.size(); ++j)
      zs += want[j] = std::exp((x[j] + gumbel_noise(42, update, 2, pos[j])) / tau);
    for (size_t j = 0; j < x.size(); ++j) EXPECT_NEAR(p[j], want[j] / zs, 2e-6) << j;
    acc.end_update();
  }
  EXPECT_EQ(acc.updates(), 3);
  acc.clear();  // a new sequence: the schedule starts again
  EXPECT_FLOAT_EQ(acc.tau(), 1.0f);
  double mean = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double g = gumbel_noise(7, i / 1000, i % 7, i);
    mean += g / n;
    sq += g * g / n;
  }
  EXPECT_NEAR(mean, 0.5772156649, 0.01);
  EXPECT_NEAR(sq - mean * mean, 3.14159265 * 3.14159265 / 6, 0.03);
  EXPECT_THROW(acc.set_keyformer(0.f, 0.01f, 1), Error);
}

}  // namespace
}  // namespace hybridgen::kv
