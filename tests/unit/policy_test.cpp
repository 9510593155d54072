// The policy table (runtime/policy.h): every policy is a row, and the runtime's per-row decisions
// (plan_policy, plan_row, reported_choice) say what the paper's baselines do.
#include "runtime/policy.h"

#include <gtest/gtest.h>

#include <set>

#include "test_support.h"

namespace hybridgen::runtime {
namespace {

HybridConfig config_for(const std::string& policy, int window = 64, int k = 0) {
  AttentionOptions o;
  o.policy = policy;
  o.window = window;
  o.k_min = 16;
  o.k = k;
  return resolve_attention_options(o, 1024, 64, 4);
}

TEST(PolicyTable, EveryPolicyHasOneRowAndRoundTrips) {
  std::set<std::string> names;
  for (const PolicyRow& r : policy_table()) {
    EXPECT_TRUE(names.insert(r.name).second) << "duplicate row " << r.name;
    EXPECT_EQ(parse_policy(r.name), r.policy);
    EXPECT_STREQ(policy_name(r.policy), r.name);
    EXPECT_EQ(&policy_row(r.policy), &r);
  }
  EXPECT_EQ(names.size(), 8u);
  const std::string err = test::error_of([] { parse_policy("flexgen"); });
  EXPECT_TRUE(test::Contains(err, "--policy")) << err;
  EXPECT_TRUE(test::Contains(err, "infinigen")) << err;  // the valid names, from the table
}

TEST(PolicyTable, AllOffloadedBaselinesHaveNoWindowAndNoPipeline) {
  for (const char* p : {"aog", "aoc"}) {
    const HybridConfig c = config_for(p, 100);
    EXPECT_EQ(c.window, 0) << p;
    const PolicyPlan pp = plan_policy(c, 1024);
    EXPECT_FALSE(pp.pipelined) << p;
    EXPECT_FALSE(pp.uses_scheduler) << p;
    EXPECT_FALSE(pp.uses_heavy) << p;
  }
  EXPECT_EQ(policy_row(Policy::kAog).decode, DecodePath::kStreamAll);
  EXPECT_EQ(policy_row(Policy::kAog).logits_on, LogitsOn::kDevice);
  EXPECT_EQ(policy_row(Policy::kAoc).decode, DecodePath::kHostExact);
  EXPECT_EQ(config_for("hybrid", 100).window, 100);
}

TEST(PolicyTable, RowsSayWhatTheCpuStageScoresAndKeeps) {
  const SchedulerPlan post{32, SelectionMode::kPostQkt}, pre{32, SelectionMode::kPreQkt};
  // hybrid follows the scheduler's plan; K at or above what is offloaded keeps everything.
  HybridConfig h = config_for("hybrid");
  EXPECT_EQ(plan_row(h, post, 500).scoring, Scoring::kPostTopK);
  EXPECT_EQ(plan_row(h, post, 500).k, 32);
  EXPECT_EQ(plan_row(h, pre, 500).scoring, Scoring::kPreK);
  EXPECT_EQ(plan_row(h, pre, 500).predictor, Predictor::kHeavy);
  EXPECT_EQ(plan_row(h, pre, 20).scoring, Scoring::kAll);
  EXPECT_EQ(plan_row(h, pre, 20).k, 20);
  EXPECT_EQ(plan_row(h, pre, 0).scoring, Scoring::kNone);
  EXPECT_TRUE(plan_policy(h, 1024).uses_scheduler);
  EXPECT_TRUE(plan_policy(h, 1024).uses_heavy);
  h.selection = SelectionControl::kOff;
  EXPECT_EQ(plan_row(h, post, 500).scoring, Scoring::kAll);
  EXPECT_EQ(plan_row(h, post, 500).k, 500);
  EXPECT_FALSE(plan_policy(h, 1024).uses_scheduler);
  EXPECT_FALSE(plan_policy(h, 1024).uses_heavy);
  EXPECT_EQ(plan_policy(h, 1024).max_k, 1024 - 64);

  // Fixed-K baselines: K from --k (default K_min), their own mode and predictor.
  const HybridConfig kf = config_for("keyformer", 64, 40);
  EXPECT_EQ(plan_row(kf, post, 500).scoring, Scoring::kPreK);  // the plan's mode is ignored
  EXPECT_EQ(plan_row(kf, post, 500).predictor, Predictor::kKeyformer);
  EXPECT_EQ(plan_row(kf, pre, 500).k, 40);
  EXPECT_FALSE(plan_policy(kf, 1024).uses_scheduler);
  EXPECT_TRUE(plan_policy(kf, 1024).uses_heavy);  // Keyformer's accumulated scores
  EXPECT_EQ(plan_policy(kf, 1024).max_k, 40);
  const HybridConfig h2o = config_for("h2o");
  const RowPlan r2 = plan_row(h2o, post, 500);
  EXPECT_EQ(r2.scoring, Scoring::kPreK);
  EXPECT_EQ(r2.k, 16);  // K_min
  EXPECT_EQ(r2.n_recent, 8);
  EXPECT_EQ(r2.predictor, Predictor::kHeavy);
  EXPECT_TRUE(plan_policy(h2o, 1024).uses_heavy);
  const RowPlan rs = plan_row(config_for("streamingllm"), post, 500);
  EXPECT_EQ(rs.scoring, Scoring::kPreK);
  EXPECT_EQ(rs.k, 4);  // the sinks
  EXPECT_EQ(rs.predictor, Predictor::kSinksRecent);
  const RowPlan ri = plan_row(config_for("infinigen"), post, 500);
  EXPECT_EQ(ri.predictor, Predictor::kPartial);
  EXPECT_FALSE(plan_policy(config_for("infinigen"), 1024).uses_heavy);
}

TEST(PolicyTable, ReportedChoiceIsTheRowsFixedChoice) {
  int k = 0;
  std::string mode;
  reported_choice(config_for("aog"), SchedulerPlan{16, SelectionMode::kPreQkt}, &k, &mode);
  EXPECT_EQ(k, 0);
  EXPECT_EQ(mode, "all");
  reported_choice(config_for("streamingllm"), SchedulerPlan{16, SelectionMode::kPostQkt}, &k,
                  &mode);
  EXPECT_EQ(k, 4);
  EXPECT_EQ(mode, "pre-qkt");
  const HybridConfig kf = config_for("keyformer", 64, 40);
  reported_choice(kf, effective_plan(kf, nullptr), &k, &mode);
  EXPECT_EQ(k, 40);
  EXPECT_EQ(mode, "pre-qkt");
}

// --policy auto: full while the whole context's KV fits beside the weights, else hybrid with the
// largest window that fits; --gpu-memory-mb caps the KV; weights that do not fit are an error
// naming what was asked and what is free.
TEST(PolicyTable, AutoPicksFullWhenItFitsElseTheLargestWindow) {
  DeviceBudget b;
  b.free_bytes = 80'000'000'000ull;
  b.weight_bytes = 16'000'000'000ull;
  b.activation_bytes = 1'000'000'000ull;
  b.full_kv_bytes_per_token = 262'144;  // Llama-3.1-8B shapes, float32 K+V
  b.window_bytes_per_token = 131'072;   // bf16 ring
  b.n_ctx = 32768;
  b.max_sequences = 1;
  AutoChoice c = choose_auto_policy(b);  // 8.6 GB of KV in 63 GB
  EXPECT_EQ(c.policy, Policy::kFull);
  EXPECT_TRUE(test::Contains(c.reason, "fits")) << c.reason;
  b.max_sequences = 8;  // 68.7 GB of float32 KV does not fit; the bf16 window of it all does
  c = choose_auto_policy(b);
  EXPECT_EQ(c.policy, Policy::kHybrid);
  EXPECT_EQ(c.window, b.n_ctx);
  b.max_sequences = 16;  // 137 GB: a window of part of the context
  c = choose_auto_policy(b);
  EXPECT_EQ(c.policy, Policy::kHybrid);
  EXPECT_EQ(c.window, int(63'000'000'000ull / (131'072ull * 16)));
  EXPECT_LT(c.window, b.n_ctx);
  b.max_sequences = 1;
  b.cap_bytes = 1'000'000'000ull;  // --gpu-memory-mb 1000: offloading forced
  c = choose_auto_policy(b);
  EXPECT_EQ(c.policy, Policy::kHybrid);
  EXPECT_EQ(c.window, int(1'000'000'000ull / 131'072ull));
  EXPECT_TRUE(test::Contains(c.reason, "--gpu-memory-mb")) << c.reason;
  b.free_bytes = 10'000'000'000ull;  // the weights alone do not fit
  const std::string err = test::error_of([&] { choose_auto_policy(b); });
  EXPECT_TRUE(test::Contains(err, "out of device memory")) << err;
  EXPECT_TRUE(test::Contains(err, "17000 MB")) << err;
  EXPECT_TRUE(test::Contains(err, "10000 MB are free")) << err;
}

}  // namespace
}  // namespace hybridgen::runtime
