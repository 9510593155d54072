#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "hybridgen/error.h"

namespace hybridgen {
namespace {

std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

std::map<int, int> histogram(SamplingParams p, const std::vector<float>& logits, int n) {
  Sampler s(p);
  std::map<int, int> h;
  for (int i = 0; i < n; ++i) ++h[s.sample(logits, {})];
  return h;
}

TEST(Sampler, GreedyIsArgmax) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p);
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 2.0f, -1.f, 1.9f}, {}), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1;
  p.min_p = 0;
  auto logits = logits_of({0.25, 0.25, 0.25, 0.25});
  Sampler a(p), b(p);
  std::vector<int> ta, tb;
  for (int i = 0; i < 50; ++i) {
    ta.push_back(a.sample(logits, {}));
    tb.push_back(b.sample(logits, {}));
  }
  EXPECT_EQ(ta, tb);
  p.seed += 1;
  Sampler c(p);
  std::vector<int> tc;
  for (int i = 0; i < 50; ++i) tc.push_back(c.sample(logits, {}));
  EXPECT_NE(ta, tc);
}

TEST(Sampler, TemperatureOneFollowsTheDistribution) {
  SamplingParams p;
  p.temperature = 1;
  p.top_k = 0;
  p.top_p = 1;
  p.min_p = 0;
  auto h = histogram(p, logits_of({0.5, 0.3, 0.2}), 20000);
  // Binomial standard deviation at n = 20000 is at most 0.0035: 5 sigma bounds.
  EXPECT_NEAR(h[0] / 20000.0, 0.5, 0.018);
  EXPECT_NEAR(h[1] / 20000.0, 0.3, 0.018);
  EXPECT_NEAR(h[2] / 20000.0, 0.2, 0.018);
}

TEST(Sampler, TopKTopPMinPCut) {
  SamplingParams p;
  p.temperature = 1;
  p.top_p = 1;
  p.min_p = 0;
  p.top_k = 2;
  auto probs = logits_of({0.4, 0.3, 0.2, 0.1});
  auto h = histogram(p, probs, 5000);
  EXPECT_EQ(h.count(2) + h.count(3), 0u) << "top-k 2 keeps tokens 0 and 1 only";
  EXPECT_NEAR(h[0] / 5000.0, 0.4 / 0.7, 0.04);

  p.top_k = 0;
  p.top_p = 0.65f;  // 0.4 + 0.3 reaches 0.65
  h = histogram(p, probs, 5000);
  EXPECT_EQ(h.count(2) + h.count(3), 0u);

  p.top_p = 1;
  p.min_p = 0.6f;  // keeps p >= 0.24: tokens 0 and 1
  h = histogram(p, probs, 5000);
  EXPECT_EQ(h.count(2) + h.count(3), 0u);
  EXPECT_GT(h[1], 0);
}

TEST(Sampler, RepetitionPenaltyDemotesRecentTokens) {
  SamplingParams p;
  p.temperature = 0;
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  std::vector<float> logits = {3.0f, 2.0f, -1.0f};
  std::vector<int32_t> history = {0};
  EXPECT_EQ(s.sample(logits, history), 1);  // 3/2 = 1.5 < 2
  EXPECT_EQ(s.sample(logits, {}), 0);
}

TEST(Sampler, BadParametersNameTheFlag) {
  SamplingParams p;
  p.top_p = 1.5f;
  try {
    Sampler s(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--top-p"), std::string::npos);
  }
}

}  // namespace
}  // namespace hybridgen
