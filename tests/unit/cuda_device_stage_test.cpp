// The CUDA device stage (runtime/cuda_device_stage.h) against the CPU device stage, the
// reference: the same HybridRuntime, the same CPU stage and query provider, driven by the CPU
// Transformer (host_io), with only the device stage swapped. Both runtimes see the SAME q, k, v at
// every layer (ComparingStages) and their attention outputs are compared element by element.
//
// Tolerances (stated, every element must pass):
//   window 0: every token is offloaded, both stages hold the same bf16 K/V; only the summation
//     order differs: |cuda - cpu| <= 1e-5 + 1e-4 |cpu|.
//   window > 0: the CUDA window holds bf16 K/V where the CPU window holds float32 (a bf16 ring
//     halves the device memory): the output is a convex combination of V rows, so rounding V moves
//     it by <= 2^-9 max|V|, and rounding K moves each logit by <= 2^-9 |q||k| / sqrt(d), i.e. the
//     probabilities by about that fraction: |cuda - cpu| <= 0.03 max|V of the layer| + 1e-5.
//
// Host stores: after the 40 decode steps (evictions batched per step on CUDA, one device-to-host
// copy per step) both stages' host stores hold the same rows, bit for bit.
//
// Without a GPU (or in a build without CUDA) every test skips and says why.
#include "runtime/cuda_device_stage.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "kv/kv_cache.h"
#include "memory/allocator.h"
#include "model/model_loader.h"
#include "runtime/cpu_device_stage.h"
#include "runtime/hybrid_attention.h"
#include "runtime/transformer.h"

namespace hybridgen {
namespace {

using runtime::HybridConfig;
using runtime::HybridRuntime;
using runtime::Policy;
using runtime::SelectionControl;

constexpr int kCtx = 64;

std::string model_dir(const std::string& name) {
  return std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/" + name;
}

#define SKIP_WITHOUT_GPU()                                                \
  do {                                                                    \
    std::string why;                                                      \
    if (!runtime::cuda_device_stage_available(&why)) GTEST_SKIP() << why; \
  } while (0)

HybridConfig exact_config(int window) {
  HybridConfig c;
  c.policy = Policy::kHybrid;
  c.window = window;
  c.selection = SelectionControl::kOff;
  c.speculative = false;
  c.cpu_threads = 1;
  c.logits_path = cpu::LogitsPath::kPortable;  // float32 query on both
  return c;
}

std::unique_ptr<HybridRuntime> make_runtime(const HybridConfig& cfg, const Transformer& model,
                                            int batch, memory::HostAllocator& alloc, bool cuda) {
  const runtime::ModelDims dims = runtime::dims_of(model);
  std::unique_ptr<runtime::DeviceStage> stage =
      cuda ? runtime::make_cuda_device_stage(dims, alloc)
           : std::unique_ptr<runtime::DeviceStage>(
                 std::make_unique<runtime::CpuDeviceStage>(dims, alloc));
  return std::make_unique<HybridRuntime>(cfg, dims,
                                         std::make_unique<runtime::CpuQueryProvider>(model),
                                         std::move(stage), kCtx, batch, alloc);
}

// Both runtimes on the same inputs; the CPU stage's output goes on (so both keep seeing the same
// q, k, v), the CUDA stage's is compared with it.
class ComparingStages final : public AttentionRunner {
 public:
  ComparingStages(AttentionRunner& cpu, AttentionRunner& cuda, int width, bool tight)
      : cpu_(cpu), cuda_(cuda), width_(width), tight_(tight) {}
  void begin_step(const Batch& batch, const int32_t* pos) override {
    n_ = batch.size();
    cpu_.begin_step(batch, pos);
    cuda_.begin_step(batch, pos);
  }
  void layer_input(int il, const float* x) override {
    cpu_.layer_input(il, x);
    cuda_.layer_input(il, x);
  }
  void attend(int il, const float* q, const float* k, const float* v, float* out) override {
    std::vector<float> got(size_t(n_) * width_);
    cuda_.attend(il, q, k, v, got.data());
    cpu_.attend(il, q, k, v, out);
    float vmax = 0;  // this step's V; the window's V are earlier steps' of similar scale
    for (int i = 0; i < n_ * v_width; ++i) vmax = std::max(vmax, std::fabs(v[i]));
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << "layer " << il << " element " << i;
      const double err = std::fabs(double(got[i]) - out[i]);
      const double tol = tight_ ? 1e-5 + 1e-4 * std::fabs(out[i]) : 1e-5 + 0.03 * vmax_seen;
      max_err = std::max(max_err, err);
      if (!(err <= tol) && bad++ < 5)
        ADD_FAILURE() << "layer " << il << " element " << i << ": cuda " << got[i] << ", cpu "
                      << out[i] << " (tolerance " << tol << ")";
    }
    vmax_seen = std::max(vmax_seen, double(vmax));
    ++compared;
  }
  void end_step() override {
    cpu_.end_step();
    cuda_.end_step();
  }
  int v_width = 0;
  double vmax_seen = 0;
  double max_err = 0;
  int bad = 0;
  int64_t compared = 0;

 private:
  AttentionRunner& cpu_;
  AttentionRunner& cuda_;
  int width_, n_ = 0;
  bool tight_;
};

struct Case {
  std::string model;
  int window;
  int batch;
};

class CudaDeviceStageExactness : public ::testing::TestWithParam<Case> {};

TEST_P(CudaDeviceStageExactness, EqualsTheCpuDeviceStageLayerByLayer) {
  SKIP_WITHOUT_GPU();
  const Case& c = GetParam();
  LoadedModel m = load_model(model_dir(c.model), false, 0, WeightChoice::kF32);
  kv::KvCacheManager cache(kv::KvShape{m.config.n_layers, m.config.n_kv_heads, m.config.head_dim},
                           kCtx, c.batch);
  Transformer model(std::move(m.config), std::move(m.weights));
  const ModelConfig& cfg = model.config();
  auto alloc = memory::make_plain_allocator();
  auto cpu = make_runtime(exact_config(c.window), model, c.batch, *alloc, false);
  auto cuda = make_runtime(exact_config(c.window), model, c.batch, *alloc, true);
  // With the first V seen, the loose tolerance needs a scale from step 0: prefill V.
  ComparingStages cmp(*cpu, *cuda, cfg.n_heads * cfg.head_dim, c.window == 0);
  cmp.v_width = cfg.n_kv_heads * cfg.head_dim;
  cmp.vmax_seen = 1.0;  // tiny random models: |V| of order 1 (a floor for the first layer)
  model.set_attention_runner(&cmp);

  uint32_t x = 12345;
  auto next = [&]() {
    x = x * 1664525u + 1013904223u;
    return int32_t((x >> 8) % uint32_t(cfg.vocab_size));
  };
  std::vector<int> seqs;
  for (int b = 0; b < c.batch; ++b) seqs.push_back(cache.open_sequence());
  std::vector<float> logits;
  Batch prefill;
  for (int b = 0; b < c.batch; ++b)
    for (int i = 0; i < (b == 0 ? 20 : 13); ++i) prefill.add(next(), seqs[b], true);
  model.forward(prefill, cache, logits);
  const int steps = 40;
  // Decode steps in which some ring evicts (its window full before the append): each must ship
  // its evictions in exactly one device-to-host copy.
  int64_t evicting_steps = 0, evicted_rows = 0, last_step_rows = 0;
  for (int s = 0; s < steps; ++s) {
    bool evicts = false;
    const int64_t rows_before = evicted_rows;
    for (int b = 0; b < c.batch; ++b)
      for (int l = 0; l < cfg.n_layers; ++l) {
        const kv::TieredLayerKv& t = cuda->cache().layer(seqs[b], l);
        if (t.window_budget() > 0 && t.n_window() == t.window_budget()) {
          evicts = true;
          ++evicted_rows;
        }
      }
    evicting_steps += evicts;
    last_step_rows = evicted_rows - rows_before;
    Batch d;
    for (int b = 0; b < c.batch; ++b) d.add(next(), seqs[b], true);
    model.forward(d, cache, logits);
    for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  }
  model.set_attention_runner(nullptr);
  // The host stores after N decode steps with evictions hold exactly (bit for bit) the rows the
  // CPU device stage holds: both round the same float32 K/V to bf16 (RNE), the CUDA stage in
  // its ring, then batched per step to the host (the last step's batch is published here).
  const auto before = runtime::cuda_eviction_counters(cuda->device_stage());
  cuda->sync_host_stores();
  const auto ev = runtime::cuda_eviction_counters(cuda->device_stage());
  // Each ship is one device-to-host copy, so a step that shipped twice (or a per-layer copy)
  // makes this count exceed the evicting steps.
  EXPECT_EQ(ev.steps_shipped, uint64_t(evicting_steps)) << "one device-to-host copy per step";
  EXPECT_EQ(ev.rows_published, uint64_t(evicted_rows));
  // The last step's batch was shipped at its end, published only now (asynchronous).
  EXPECT_EQ(ev.rows_published - before.rows_published, uint64_t(last_step_rows));
  for (int b = 0; b < c.batch; ++b)
    for (int l = 0; l < cfg.n_layers; ++l) {
      const kv::TieredLayerKv& g = cuda->cache().layer(seqs[b], l);
      const kv::TieredLayerKv& r = cpu->cache().layer(seqs[b], l);
      ASSERT_EQ(g.n_offloaded(), r.n_offloaded()) << "seq " << b << " layer " << l;
      ASSERT_EQ(g.n_window(), r.n_window()) << "seq " << b << " layer " << l;
      int64_t diff = 0;
      for (int h = 0; h < cfg.n_kv_heads; ++h)
        for (int i = 0; i < g.n_offloaded(); ++i)
          for (int e = 0; e < cfg.head_dim; ++e) {
            diff += g.key_store().row(h, i)[e] != r.key_store().row(h, i)[e];
            diff += g.value_store().row(h, i)[e] != r.value_store().row(h, i)[e];
          }
      EXPECT_EQ(diff, 0) << "host store elements differing: seq " << b << " layer " << l;
    }
  EXPECT_EQ(cmp.bad, 0);
  EXPECT_EQ(cmp.compared, int64_t(steps + 1) * cfg.n_layers);
  const AttentionStats st = cuda->stats();
  EXPECT_EQ(st.decode_steps, steps);
  EXPECT_EQ(st.layer_passes, int64_t(steps) * c.batch * cfg.n_layers);
  // The CUDA window holds bf16: half the CPU window's float32 bytes.
  EXPECT_EQ(2 * st.window_reserved, cpu->stats().window_reserved);
  std::printf("[ %s window %d batch %d ] max |cuda stage - cpu stage| = %.3g (%s tolerance)\n",
              c.model.c_str(), c.window, c.batch, cmp.max_err, c.window == 0 ? "tight" : "bf16");
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (std::string m : {"tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-opt"})
    for (int w : {0, 1, 33, kCtx})
      for (int b : {1, 2}) v.push_back({m, w, b});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Tiny, CudaDeviceStageExactness, ::testing::ValuesIn(cases()),
                         [](const auto& info) {
                           std::string n = info.param.model + "_w" +
                                           std::to_string(info.param.window) + "_b" +
                                           std::to_string(info.param.batch);
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

// Every policy of the table runs 40 decode steps with evictions on the CUDA stage: finite logits,
// every pass counted, the same kinds of passes as on the CPU stage, and, fed the CPU stage's
// greedy tokens (teacher-forced, so one early difference does not change every later input), the
// same greedy token at >= 90% of the steps (bf16 window: the stated agreement).
TEST(CudaDeviceStage, EveryPolicyRunsAndAgreesWithTheCpuStage) {
  SKIP_WITHOUT_GPU();
  for (Policy p : {Policy::kHybrid, Policy::kAog, Policy::kAoc, Policy::kH2o, Policy::kStreamingLlm,
                   Policy::kKeyformer, Policy::kInfinigen}) {
    std::vector<int32_t> greedy[2];
    AttentionStats st[2];
    for (int cuda = 0; cuda < 2; ++cuda) {
      LoadedModel m = load_model(model_dir("tiny-qwen2"), false, 0, WeightChoice::kF32);
      kv::KvCacheManager cache(
          kv::KvShape{m.config.n_layers, m.config.n_kv_heads, m.config.head_dim}, kCtx, 1);
      Transformer model(std::move(m.config), std::move(m.weights));
      auto alloc = memory::make_plain_allocator();
      HybridConfig cfg = exact_config(8);
      cfg.policy = p;
      cfg.selection = SelectionControl::kAdaptive;
      cfg.k_min = 6;
      cfg.k_fixed = p == Policy::kStreamingLlm ? 0 : 6;  // hybrid too: no timing-driven K
      auto rt = make_runtime(cfg, model, 1, *alloc, cuda == 1);
      model.set_attention_runner(rt.get());
      const int seq = cache.open_sequence();
      std::vector<float> logits;
      Batch prefill;
      for (int i = 0; i < 16; ++i) prefill.add((i * 37) % model.config().vocab_size, seq, i == 15);
      model.forward(prefill, cache, logits);
      for (int s = 0; s < 40; ++s) {
        for (float v : logits) ASSERT_TRUE(std::isfinite(v)) << runtime::policy_name(p);
        greedy[cuda].push_back(
            int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
        Batch d;
        d.add(greedy[0][s], seq, true);  // the CPU stage's token (teacher-forced on CUDA)
        model.forward(d, cache, logits);
      }
      st[cuda] = rt->stats();
      model.set_attention_runner(nullptr);
    }
    EXPECT_EQ(st[1].layer_passes, st[0].layer_passes) << runtime::policy_name(p);
    EXPECT_EQ(st[1].passes_post_qkt, st[0].passes_post_qkt) << runtime::policy_name(p);
    EXPECT_EQ(st[1].passes_pre_qkt, st[0].passes_pre_qkt) << runtime::policy_name(p);
    int same = 0;
    for (size_t i = 0; i < greedy[0].size(); ++i) same += greedy[0][i] == greedy[1][i];
    EXPECT_GE(same, 36) << runtime::policy_name(p);
    std::printf("[ %s ] greedy token equal to the CPU stage's at %d/40 steps\n",
                runtime::policy_name(p), same);
  }
}

}  // namespace
}  // namespace hybridgen
