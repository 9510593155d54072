// The shared prefill (hybridgen/prefill_snapshot.h): one prefill captured once and restored into
// a fresh engine of every policy of the policy table decodes like that policy's own prefill.
//
// Exactness. Prefill is exact attention for every policy, but a tiered policy's prefill reads
// its OFFLOADED K/V as stored (bf16) and the window's as float32, so what a prefill computes for
// layers >= 1 depends on the window (which rows were offloaded), not on the policy. Hence:
//   - a snapshot of policy full restored into full, and a snapshot of any tiered engine of
//     window W restored into any policy of window W (window 0: aog, aoc), give the very K/V rows,
//     logits and prompt statistics of that policy's own prefill: the decode is asserted
//     BIT-EXACT (logits and greedy tokens), for every row of the policy table;
//   - a float32 snapshot of full restored into a tiered policy differs from its own prefill by
//     that bf16 rounding alone (measured below, not hidden); for the policies without selection
//     (hybrid off, aog, aoc) the greedy tokens are identical and the logits within
//     tol = 4 * G0(P), G0(P) = max |prefill logits of P's own prefill - full's| (the rounding's
//     effect on the prefill's own output; the factor 4 covers its growth over 16 decode steps of
//     this random-weight model); selective policies can keep other tokens from the perturbed
//     scores and are only reported.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "hybridgen/engine.h"
#include "runtime/policy.h"
#include "test_support.h"

namespace {

using namespace hybridgen;

constexpr int kCtx = 640;
constexpr int kSteps = 16;

LoadOptions options(const std::string& policy, const std::string& selection = "adaptive") {
  LoadOptions o;
  o.model_path = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/tiny-llama";
  o.n_ctx = kCtx;
  o.max_sequences = 2;
  o.n_threads = 2;
  o.weight_format = WeightFormat::kF32;
  o.device = "cpu";
  o.attention.policy = policy;
  o.attention.window = 32;
  o.attention.k_min = 16;
  o.attention.k = policy == "streamingllm" ? 0 : 16;  // fixed K: nothing timing-driven
  o.attention.selection = selection;
  o.attention.cpu_threads = 1;
  o.attention.speculation_min_cosine = 0;  // speculate on every layer in both runs
  return o;
}

// Two prompts: 520 tokens (two prefill chunks of generate_batch's 512) and 300.
std::vector<std::vector<int32_t>> prompts(int vocab) {
  std::vector<std::vector<int32_t>> p(2);
  for (int i = 0; i < 520; ++i) p[0].push_back((i * 37 + 3) % vocab);
  for (int i = 0; i < 300; ++i) p[1].push_back((i * 91 + 17) % vocab);
  return p;
}

int32_t argmax(const float* v, int n) { return int32_t(std::max_element(v, v + n) - v); }

// Decode trace: per step, both sequences' logits [2, vocab] (step 0: the prefill's).
struct Trace {
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> tokens;
};

// The policy's own prefill, chunked as Engine::generate_batch chunks it (512 tokens per forward
// step, the prompts in order), then kSteps greedy decode steps of both sequences.
// snapshot != null: restore it instead.
Trace run(Engine& e, const std::vector<std::vector<int32_t>>& p, const PrefillSnapshot* snapshot) {
  const int vocab = e.info().vocab_size;
  Trace t;
  std::vector<float> logits;
  int seq[2];
  if (snapshot) {
    for (int i = 0; i < 2; ++i) seq[i] = e.restore_sequence(*snapshot, i);
    logits = snapshot->sequences[0].logits;
    logits.insert(logits.end(), snapshot->sequences[1].logits.begin(),
                  snapshot->sequences[1].logits.end());
  } else {
    for (int i = 0; i < 2; ++i) seq[i] = e.open_sequence();
    std::vector<float> l1;
    const Engine::StepInput c1{seq[0], std::span<const int32_t>(p[0].data(), 512)};
    e.step({&c1, 1}, l1);
    const Engine::StepInput c2[2] = {
        {seq[0], std::span<const int32_t>(p[0].data() + 512, p[0].size() - 512)},
        {seq[1], std::span<const int32_t>(p[1])}};
    e.step(c2, logits);
  }
  std::vector<int32_t> tok(2);
  for (int s = 0; s <= kSteps; ++s) {
    t.logits.push_back(logits);
    if (s == kSteps) break;
    for (int i = 0; i < 2; ++i) {
      tok[i] = argmax(&logits[size_t(i) * vocab], vocab);
      t.tokens.push_back(tok[i]);
    }
    const Engine::StepInput in[2] = {{seq[0], std::span<const int32_t>(&tok[0], 1)},
                                     {seq[1], std::span<const int32_t>(&tok[1], 1)}};
    e.step(in, logits);
  }
  for (int i = 0; i < 2; ++i) e.close_sequence(seq[i]);
  return t;
}

double max_diff(const Trace& a, const Trace& b) {
  double m = 0;
  for (size_t s = 0; s < a.logits.size(); ++s)
    for (size_t j = 0; j < a.logits[s].size(); ++j)
      m = std::max(m, double(std::fabs(a.logits[s][j] - b.logits[s][j])));
  return m;
}

class SharedPrefill : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto full = Engine::load(options("full"));
    p_ = new std::vector<std::vector<int32_t>>(prompts(full->info().vocab_size));
    snap_full_ = new PrefillSnapshot(full->prefill_snapshot(*p_));
    full_own_ = new Trace(run(*full, *p_, nullptr));
    snap_w_ = new PrefillSnapshot(Engine::load(options("hybrid", "off"))->prefill_snapshot(*p_));
    snap_0_ = new PrefillSnapshot(Engine::load(options("aog"))->prefill_snapshot(*p_));
  }
  static void TearDownTestSuite() {
    delete p_;
    delete snap_full_;
    delete snap_w_;
    delete snap_0_;
    delete full_own_;
  }
  // The snapshot whose prefill is the policy's own (same window).
  static const PrefillSnapshot& same_window(const std::string& policy) {
    return policy == "full"                     ? *snap_full_
           : policy == "aog" || policy == "aoc" ? *snap_0_
                                                : *snap_w_;
  }
  static std::vector<std::vector<int32_t>>* p_;
  static PrefillSnapshot *snap_full_, *snap_w_, *snap_0_;
  static Trace* full_own_;
};
std::vector<std::vector<int32_t>>* SharedPrefill::p_ = nullptr;
PrefillSnapshot* SharedPrefill::snap_full_ = nullptr;
PrefillSnapshot* SharedPrefill::snap_w_ = nullptr;
PrefillSnapshot* SharedPrefill::snap_0_ = nullptr;
Trace* SharedPrefill::full_own_ = nullptr;

// Every policy of the table (hybrid under each deterministic selection), 16 decode steps of two
// sequences.
std::vector<std::pair<std::string, std::string>> every_policy() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const runtime::PolicyRow& row : runtime::policy_table()) {
    const std::string policy = row.name;
    if (policy == "hybrid")
      for (const char* sel : {"off", "post", "pre"}) out.emplace_back(policy, sel);
    else
      out.emplace_back(policy, "adaptive");
  }
  return out;
}

TEST_F(SharedPrefill, SnapshotHoldsThePrefill) {
  ASSERT_EQ(snap_full_->sequences.size(), 2u);
  EXPECT_EQ(snap_full_->source_policy, "full");
  EXPECT_EQ(snap_full_->kv_precision, "f32");
  const PrefillSnapshot::Sequence& q = snap_full_->sequences[0];
  EXPECT_EQ(q.n_tokens(), 520);
  ASSERT_EQ(int(q.k.size()), snap_full_->n_layers);
  EXPECT_EQ(q.k[0].size(), size_t(520) * snap_full_->n_kv_heads * snap_full_->head_dim);
  ASSERT_EQ(int(q.h2o.size()), snap_full_->n_layers);
  // H2O's mass: every prompt token's softmax sums to 1 per query head, so a KV head's scores sum
  // to (query heads per KV head) * tokens.
  const int group = 2;  // tiny-llama: 4 heads, 2 KV heads
  for (int l = 0; l < snap_full_->n_layers; ++l) {
    double sum = 0;
    for (int j = 0; j < 520; ++j) sum += q.h2o[l][j];  // KV head 0
    EXPECT_NEAR(sum, group * 520.0, 1e-2) << "layer " << l;
  }
  EXPECT_EQ(q.stat_updates, 2);  // two prefill chunks
  EXPECT_EQ(snap_full_->sequences[1].stat_updates, 1);
}

TEST_F(SharedPrefill, TieredSnapshotsHoldTheirTiersAndBothStatistics) {
  EXPECT_EQ(snap_w_->kv_precision, "f32 window + bf16 offloaded");
  EXPECT_EQ(snap_w_->source_window, 32);
  EXPECT_EQ(snap_0_->source_window, 0);
  for (const PrefillSnapshot* s : {snap_w_, snap_0_}) {
    const PrefillSnapshot::Sequence& q = s->sequences[0];
    EXPECT_EQ(int(q.h2o.size()), s->n_layers);
    EXPECT_EQ(int(q.keyformer.size()), s->n_layers);
    EXPECT_EQ(q.stat_updates, 2);
    // Layer 0's K/V come from the embeddings alone, so they equal full's: window rows exactly,
    // offloaded rows rounded to bf16 (to nearest even).
    const size_t row = size_t(s->n_kv_heads) * s->head_dim;
    const int n_off = 520 - s->source_window;
    const auto& a = q.k[0];
    const auto& f = snap_full_->sequences[0].k[0];
    int bad = 0;
    for (int p = 0; p < 520; ++p)
      for (size_t e = 0; e < row; ++e) {
        float want = f[p * row + e];
        if (p < n_off) {
          uint32_t bits;
          std::memcpy(&bits, &want, 4);
          bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
          std::memcpy(&want, &bits, 4);
        }
        bad += a[p * row + e] != want;
      }
    EXPECT_EQ(bad, 0) << "window " << s->source_window;
  }
}

TEST_F(SharedPrefill, EveryPolicyDecodesBitExactFromItsWindowsPrefill) {
  for (const auto& [policy, sel] : every_policy()) {
    SCOPED_TRACE(policy + " selection " + sel);
    auto own_e = Engine::load(options(policy, sel));
    const Trace own = policy == "full" ? *full_own_ : run(*own_e, *p_, nullptr);
    auto rest_e = Engine::load(options(policy, sel));
    const PrefillSnapshot& s = same_window(policy);
    ASSERT_EQ(rest_e->restore_problem(s), "");
    const Trace rest = run(*rest_e, *p_, &s);
    EXPECT_EQ(own.tokens, rest.tokens);
    const double d = max_diff(own, rest);
    std::printf("%-12s %-8s from %-6s (window %3d): max |restored - own| = %.3g\n", policy.c_str(),
                sel.c_str(), s.source_policy.c_str(), s.source_window, d);
    EXPECT_EQ(d, 0.0);
  }
}

TEST_F(SharedPrefill, FloatSnapshotOfFullDiffersFromATieredPrefillByItsBf16RoundingOnly) {
  for (const auto& [policy, sel] : every_policy()) {
    if (policy == "full") continue;
    SCOPED_TRACE(policy + " selection " + sel);
    auto own_e = Engine::load(options(policy, sel));
    const Trace own = run(*own_e, *p_, nullptr);
    auto rest_e = Engine::load(options(policy, sel));
    const Trace rest = run(*rest_e, *p_, snap_full_);
    double g0 = 0;  // the bf16 rounding's effect on the prefill's own logits
    for (size_t j = 0; j < own.logits[0].size(); ++j)
      g0 = std::max(g0, double(std::fabs(own.logits[0][j] - full_own_->logits[0][j])));
    const double d = max_diff(own, rest);
    const bool selective = !(sel == "off" || policy == "aog" || policy == "aoc");
    std::printf("%-12s %-8s from full: max |restored - own| = %.3g, G0 %.3g, tokens %s\n",
                policy.c_str(), sel.c_str(), d, g0,
                own.tokens == rest.tokens ? "identical" : "differ");
    if (selective) continue;
    EXPECT_GT(g0, 0);
    EXPECT_EQ(own.tokens, rest.tokens);
    EXPECT_LE(d, 4 * g0);
  }
}

// generate_batch from the snapshot: the same tokens as generate_batch's own prefill.
TEST_F(SharedPrefill, GenerateBatchFromTheSnapshot) {
  GenerateOptions g;
  g.n_predict = 8;
  g.sampling.temperature = 0;
  g.stop_at_eog = false;
  for (const char* policy : {"full", "h2o", "keyformer"}) {
    auto e = Engine::load(options(policy));
    const auto own = e->generate_batch(*p_, g);
    const auto rest = e->generate_batch(same_window(policy), g);
    ASSERT_EQ(rest.size(), 2u);
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(own[i].tokens, rest[i].tokens) << policy << " sequence " << i;
      EXPECT_TRUE(rest[i].stats.prefill_restored);
      EXPECT_FALSE(own[i].stats.prefill_restored);
    }
  }
}

TEST_F(SharedPrefill, RestoreProblemsAreNamed) {
  auto full = Engine::load(options("full"));
  PrefillSnapshotOptions no_stats;
  no_stats.attention_stats = false;
  const PrefillSnapshot bare = full->prefill_snapshot(*p_, no_stats);
  EXPECT_TRUE(bare.sequences[0].h2o.empty());
  auto h2o = Engine::load(options("h2o"));
  EXPECT_NE(h2o->restore_problem(bare).find("h2o scores"), std::string::npos)
      << h2o->restore_problem(bare);
  EXPECT_NE(test::error_of([&] { h2o->restore_sequence(bare, 0); }).find("attention_stats"),
            std::string::npos);
  EXPECT_EQ(h2o->open_sequences(), 0);  // nothing left open by the failed restore
  {  // a snapshot on an engine with a live sequence would reset its scheduler: refused
    const int seq = h2o->open_sequence();
    EXPECT_NE(test::error_of([&] { h2o->prefill_snapshot(*p_, no_stats); }).find("are open"),
              std::string::npos);
    h2o->close_sequence(seq);
  }
  PrefillSnapshotOptions h2o_only;
  h2o_only.keyformer_stats = false;
  const PrefillSnapshot mass = full->prefill_snapshot(*p_, h2o_only);
  EXPECT_EQ(int(mass.sequences[0].h2o.size()), mass.n_layers);
  EXPECT_TRUE(mass.sequences[0].keyformer.empty());
  EXPECT_EQ(h2o->restore_problem(mass), "");
  EXPECT_NE(Engine::load(options("keyformer"))->restore_problem(mass).find("keyformer_stats"),
            std::string::npos);
  auto aog = Engine::load(options("aog"));
  EXPECT_EQ(aog->restore_problem(bare), "");  // no statistics needed
  LoadOptions small = options("hybrid", "off");
  small.n_ctx = 400;
  EXPECT_NE(Engine::load(small)->restore_problem(*snap_full_).find("context size 400"),
            std::string::npos);
  LoadOptions other = options("full");
  other.model_path = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/tiny-qwen2";
  EXPECT_NE(Engine::load(other)->restore_problem(*snap_full_).find("does not fit"),
            std::string::npos);
  // Same shapes, other weights: the same checkpoint in bf16, and random weights of its config.
  LoadOptions bf16 = options("full");
  bf16.weight_format = WeightFormat::kBF16;
  EXPECT_NE(Engine::load(bf16)->restore_problem(*snap_full_).find("does not belong"),
            std::string::npos)
      << Engine::load(bf16)->restore_problem(*snap_full_);
  LoadOptions random = options("full");
  random.random_weights = true;
  EXPECT_NE(Engine::load(random)->restore_problem(*snap_full_).find("does not belong"),
            std::string::npos);
}

}  // namespace
