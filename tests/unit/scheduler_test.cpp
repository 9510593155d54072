// Feedback scheduler (Algorithm 1) on simulated latencies. No OpenMP here: this test also runs
// in the ThreadSanitizer build.
#include "runtime/scheduler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "hybridgen/error.h"

namespace hybridgen::runtime {
namespace {

SchedulerConfig config(int k_min, int step = 100, double factor = 0.5) {
  SchedulerConfig c;
  c.k_min = k_min;
  c.increase_step = step;
  c.decrease_factor = factor;
  return c;
}

constexpr StageLatencies kFast{10, 4, 5};   // T_cpu + T_tx = 9 <= 10: line 8 true
constexpr StageLatencies kEqual{10, 6, 4};  // = T_gpu: still line 8 (<=)
constexpr StageLatencies kSlow{10, 8, 5};   // 13 > 10: line 10 else

TEST(FeedbackScheduler, StartsAtKMinInPostQkt) {  // lines 6-7
  FeedbackScheduler s(config(256));
  EXPECT_EQ(s.k(), 256);
  EXPECT_EQ(s.mode(), SelectionMode::kPostQkt);
  EXPECT_TRUE(s.trace().empty());
}

TEST(FeedbackScheduler, WalksEveryBranchOfAlgorithm1) {
  FeedbackScheduler s(config(256, 100, 0.5));
  const int n = 10000;
  // lines 8-9: slack -> increase by the step (and equality counts as slack)
  SchedulerDecision d = s.update(0, 3, kFast, n);
  EXPECT_EQ(d.branch, SchedulerBranch::kIncrease);
  EXPECT_EQ(d.k_before, 256);
  EXPECT_EQ(d.k, 356);
  EXPECT_EQ(d.mode, SelectionMode::kPostQkt);
  d = s.update(1, 3, kEqual, n);
  EXPECT_EQ(d.branch, SchedulerBranch::kIncrease);
  EXPECT_EQ(d.k, 456);
  for (int i = 0; i < 8; ++i) s.update(2 + i, 3, kFast, n);
  EXPECT_EQ(s.k(), 1256);
  // lines 11-12: CPU-bound and K > K_min -> multiplicative decrease, floored at K_min
  d = s.update(10, 3, kSlow, n);
  EXPECT_EQ(d.branch, SchedulerBranch::kDecrease);
  EXPECT_EQ(d.k, 628);
  EXPECT_EQ(d.mode, SelectionMode::kPostQkt);
  d = s.update(11, 3, kSlow, n);
  EXPECT_EQ(d.k, 314);
  d = s.update(12, 3, kSlow, n);
  EXPECT_EQ(d.branch, SchedulerBranch::kDecrease);
  EXPECT_EQ(d.k, 256);  // 157 would break K >= K_min
  // lines 13-14: CPU-bound at K = K_min -> Pre-QKT, K unchanged
  d = s.update(13, 3, kSlow, n);
  EXPECT_EQ(d.branch, SchedulerBranch::kSwitchToPre);
  EXPECT_EQ(d.k_before, 256);
  EXPECT_EQ(d.k, 256);
  EXPECT_EQ(d.mode_before, SelectionMode::kPostQkt);
  EXPECT_EQ(d.mode, SelectionMode::kPreQkt);
  // Still CPU-bound in Pre-QKT at K_min: line 14 again, a no-op.
  d = s.update(14, 3, kSlow, n);
  EXPECT_EQ(d.branch, SchedulerBranch::kSwitchToPre);
  EXPECT_EQ(d.mode, SelectionMode::kPreQkt);
  // Slack in Pre-QKT: line 9 raises K; Algorithm 1 has no switch back to Post-QKT.
  d = s.update(15, 3, kFast, n);
  EXPECT_EQ(d.branch, SchedulerBranch::kIncrease);
  EXPECT_EQ(d.k, 356);
  EXPECT_EQ(d.mode, SelectionMode::kPreQkt);
  d = s.update(16, 3, kSlow, n);  // and line 12 lowers it again, still Pre-QKT
  EXPECT_EQ(d.branch, SchedulerBranch::kDecrease);
  EXPECT_EQ(d.k, 256);
  EXPECT_EQ(d.mode, SelectionMode::kPreQkt);

  EXPECT_EQ(s.decisions(), 17);
  EXPECT_EQ(s.count(SchedulerBranch::kIncrease), 11);
  EXPECT_EQ(s.count(SchedulerBranch::kDecrease), 4);
  EXPECT_EQ(s.count(SchedulerBranch::kSwitchToPre), 2);
  ASSERT_EQ(s.trace().size(), 17u);
  EXPECT_EQ(s.trace()[13].to_string(),
            "step 13 layer 3: T_gpu 10 T_cpu 8 T_tx 5 offloaded 10000 recall 1.0000 -> "
            "switch-to-pre: "
            "K 256 -> 256, post-qkt -> pre-qkt");
  // reset(): lines 6-7 again.
  s.reset();
  EXPECT_EQ(s.plan().k, 256);
  EXPECT_EQ(s.plan().mode, SelectionMode::kPostQkt);
}

TEST(FeedbackScheduler, DecreaseAlwaysMakesProgressTowardKMin) {
  // factor 0.99 on a small K would floor to K itself; the decrease still takes one token.
  FeedbackScheduler s(config(10, 5, 0.99));
  s.update(0, -1, kFast, 100);  // K 15
  EXPECT_EQ(s.update(1, -1, kSlow, 100).k, 14);
  for (int i = 0; i < 4; ++i) s.update(2 + i, -1, kSlow, 100);
  EXPECT_EQ(s.k(), 10);
  EXPECT_EQ(s.update(6, -1, kSlow, 100).branch, SchedulerBranch::kSwitchToPre);
}

TEST(FeedbackScheduler, KNeverAboveTheOffloadedCount) {
  FeedbackScheduler s(config(4, 1000));
  EXPECT_EQ(s.update(0, 0, kFast, 50).k, 50);
  EXPECT_EQ(s.update(1, 0, kFast, 50).k, 50);
  EXPECT_EQ(s.update(2, 0, kFast, 2000).k, 1050);
  // A smaller offloaded count (another sequence) clamps K before the decision.
  const SchedulerDecision d = s.update(3, 0, kSlow, 20);
  EXPECT_EQ(d.k_before, 20);
  EXPECT_EQ(d.k, 10);
}

TEST(FeedbackScheduler, PropertyKStaysWithinBoundsOnRandomLatencies) {
  std::mt19937 rng(2024);
  std::uniform_real_distribution<double> lat(0.0, 2.0);
  for (int trial = 0; trial < 200; ++trial) {
    const int k_min = 1 + static_cast<int>(rng() % 300);
    SchedulerConfig c = config(k_min, 1 + static_cast<int>(rng() % 500),
                               std::uniform_real_distribution<double>(0.0, 0.999)(rng));
    c.trace_capacity = 16;
    FeedbackScheduler s(c);
    int n_off = k_min + static_cast<int>(rng() % 1000);
    bool was_pre = false;
    for (int step = 0; step < 500; ++step) {
      n_off += static_cast<int>(rng() % 3);  // offloaded tokens grow as decoding proceeds
      const SchedulerDecision d = s.update(step, step % 32, {lat(rng), lat(rng), lat(rng)}, n_off);
      ASSERT_GE(d.k, k_min) << "trial " << trial << ": " << d.to_string();
      ASSERT_LE(d.k, n_off) << "trial " << trial << ": " << d.to_string();
      // The only way into Pre-QKT is line 14, at K = K_min, and it never leaves (as written).
      if (d.mode_before == SelectionMode::kPostQkt && d.mode == SelectionMode::kPreQkt) {
        ASSERT_EQ(d.k_before, k_min);
      }
      if (was_pre) {
        ASSERT_EQ(d.mode, SelectionMode::kPreQkt);
      }
      was_pre = d.mode == SelectionMode::kPreQkt;
    }
    EXPECT_LE(s.trace().size(), 16u);  // capped, keeping the most recent decisions
    EXPECT_GE(s.trace().size(), 8u);
    EXPECT_EQ(s.trace().back().step, 499);
    EXPECT_EQ(s.decisions(), 500);
  }
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(FeedbackScheduler, BadConfigurationIsAClearError) {
  EXPECT_NE(error_of([] { FeedbackScheduler s(config(0)); }).find("K_min must be >= 1, got 0"),
            std::string::npos);
  EXPECT_NE(error_of([] { FeedbackScheduler s(config(-5)); }).find("got -5"), std::string::npos);
  EXPECT_NE(error_of([] { FeedbackScheduler s(config(8, 0)); }).find("increase_step"),
            std::string::npos);
  EXPECT_NE(error_of([] { FeedbackScheduler s(config(8, 1, 1.0)); }).find("decrease_factor"),
            std::string::npos);
  FeedbackScheduler s(config(512));
  EXPECT_NE(error_of([&] {
              s.update(0, 0, kFast, 300);
            }).find("K_min = 512 is above the 300 offloaded tokens"),
            std::string::npos);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NE(error_of([&] {
              s.update(0, 0, {10, nan, 1}, 1000);
            }).find("latencies must be >= 0"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              s.update(0, 0, {10, 1, -1}, 1000);
            }).find("latencies must be >= 0"),
            std::string::npos);
  EXPECT_EQ(s.decisions(), 0);  // rejected inputs change nothing
  EXPECT_EQ(s.k(), 512);
}

// The recall guard (issue 13): CPU-bound steps with recall below the threshold hold K (no
// decrease, no switch to Pre-QKT); at or above it, Algorithm 1 as written; lines 8-9 are never
// blocked; guard 0 is Algorithm 1 exactly.
TEST(FeedbackScheduler, RecallGuardHoldsKWhileRecallIsLow) {
  SchedulerConfig c = config(64, 64);
  c.recall_guard = 0.9;
  FeedbackScheduler s(c);
  const StageLatencies fast{10, 1, 1}, slow{1, 10, 1};
  s.update(0, -1, fast, 10000, 0.5);  // slack: increase even at low recall
  EXPECT_EQ(s.k(), 128);
  SchedulerDecision d = s.update(1, -1, slow, 10000, 0.89);
  EXPECT_EQ(d.branch, SchedulerBranch::kHoldLowRecall);
  EXPECT_EQ(s.k(), 128);
  d = s.update(2, -1, slow, 10000, 0.9);  // at the threshold: decrease
  EXPECT_EQ(d.branch, SchedulerBranch::kDecrease);
  EXPECT_EQ(s.k(), 64);
  d = s.update(3, -1, slow, 10000, 0.2);  // at K_min, low recall: no switch to Pre-QKT
  EXPECT_EQ(d.branch, SchedulerBranch::kHoldLowRecall);
  EXPECT_EQ(s.mode(), SelectionMode::kPostQkt);
  d = s.update(4, -1, slow, 10000, 0.95);
  EXPECT_EQ(d.branch, SchedulerBranch::kSwitchToPre);
  EXPECT_EQ(s.count(SchedulerBranch::kHoldLowRecall), 2);
  EXPECT_NE(d.to_string().find("recall 0.9500"), std::string::npos) << d.to_string();

  c.recall_guard = 0;  // off
  FeedbackScheduler off(c);
  off.update(0, -1, fast, 10000, 0.1);
  EXPECT_EQ(off.update(1, -1, slow, 10000, 0.1).branch, SchedulerBranch::kDecrease);

  c.recall_guard = 1.5;
  EXPECT_NE(error_of([&] { FeedbackScheduler bad(c); }).find("recall_guard"), std::string::npos);
  EXPECT_NE(error_of([&] { s.update(5, -1, slow, 10000, -0.1); }).find("recall must be in"),
            std::string::npos);
}

}  // namespace
}  // namespace hybridgen::runtime
