// The CUDA backend running the hybrid runtime with the CUDA device stage (device-pointer mode:
// the layers on the GPU, kernels/cuda_backend.cpp), against two references nobody changed here:
// the CUDA backend's own full attention (float32 K/V of the whole context) and the CPU backend
// with the CPU device stage (runtime/cpu_device_stage.cpp).
//
// Tolerances (stated; every element of every intermediate must pass):
//   layer by layer through the tensor callback, |got - ref| <= 2.5e-2 * max(1, max |ref| of that
//   tensor). The floor: the CPU and CUDA backends' full attention differ by 2.5e-2 of the row's
//   scale (tests/unit/cuda_tensor_callback_test.cpp: float32 summation order and the bf16
//   activation roundings it flips); hybrid adds bf16 K/V (window ring and host stores) against
//   full's float32 K/V: each logit moves by <= 2^-9 |q||k|/sqrt(d) and each output by
//   <= 2^-9 max |V|, an order below that floor.
//   greedy tokens, teacher-forced: the CUDA backend's greedy token equals the CPU backend's at
//   >= 36 of 40 decode steps with the exact query (the bf16 agreement of the device-stage test),
//   >= 32 with the speculative query (the GPU's speculated q differs from the CPU's by the
//   backends' float32 summation order, which can flip a top-K choice at a near-tie as well).
//   selections: with identical CPU-stage inputs (both runtimes driven by one CPU Transformer,
//   exact query), the same token indices at every layer, step and KV head; h2o's predictor adds
//   up the device stage's probabilities (bf16 window on CUDA), so >= 90% of its rows agree.
//
// Without a GPU (or in a build without CUDA) the GPU tests skip and say why; the CPU-side tests
// at the end run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "hybridgen/engine.h"
#include "kv/kv_cache.h"
#include "memory/allocator.h"
#include "model/model_loader.h"
#include "runtime/backend.h"
#include "runtime/cpu_device_stage.h"
#include "runtime/cuda_device_stage.h"
#include "runtime/hybrid_attention.h"
#include "runtime/transformer.h"
#include "test_support.h"

namespace hybridgen {
namespace {

using runtime::HybridConfig;
using runtime::Policy;
using runtime::SelectionControl;

constexpr int kCtx = 64;
constexpr double kTol = 2.5e-2;

std::string model_dir(const std::string& name) {
  return std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/" + name;
}

#define SKIP_WITHOUT_GPU()                          \
  do {                                              \
    std::string why;                                \
    if (!cuda_available(&why)) GTEST_SKIP() << why; \
  } while (0)

struct Dumped {
  std::string name;
  int il, n, width;
  std::vector<float> data;
};

// Runs one forward step and returns every named intermediate, in order.
std::vector<Dumped> step(Backend& b, kv::KvCacheManager& cache, const Batch& batch,
                         std::vector<float>& logits) {
  std::vector<Dumped> out;
  b.set_tensor_callback([&](const char* name, int il, const float* data, int n, int width) {
    out.push_back({name, il, n, width, std::vector<float>(data, data + size_t(n) * width)});
  });
  b.forward(batch, cache, logits);
  b.set_tensor_callback(nullptr);
  return out;
}

// Worst normalized error of got against ref over every intermediate; ADD_FAILUREs past kTol.
double compare(const std::vector<Dumped>& got, const std::vector<Dumped>& ref, const char* what,
               int step_no) {
  EXPECT_EQ(got.size(), ref.size()) << what;
  double worst = 0;
  int bad = 0;
  for (size_t i = 0; i < std::min(got.size(), ref.size()); ++i) {
    const Dumped &a = got[i], &b = ref[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.il, b.il);
    if (a.data.size() != b.data.size()) {
      ADD_FAILURE() << what << ": " << a.name << " sizes differ";
      continue;
    }
    double scale = 1;
    for (float x : b.data) scale = std::max(scale, double(std::fabs(x)));
    for (size_t e = 0; e < b.data.size(); ++e) {
      const double err = std::fabs(double(a.data[e]) - b.data[e]) / scale;
      if (!std::isfinite(a.data[e]) || !(err <= kTol)) {
        if (bad++ < 3)
          ADD_FAILURE() << what << " step " << step_no << ": " << a.name << " layer " << a.il
                        << " element " << e << ": " << a.data[e] << " vs " << b.data[e]
                        << " (normalized error " << err << ")";
        continue;
      }
      worst = std::max(worst, err);
    }
  }
  return worst;
}

HybridConfig exact_config(int window) {
  HybridConfig c;
  c.policy = Policy::kHybrid;
  c.window = window;
  c.selection = SelectionControl::kOff;
  c.speculative = false;
  c.cpu_threads = 1;
  c.logits_path = cpu::LogitsPath::kPortable;
  return c;
}

struct Case {
  std::string model;
  int window, batch;
};

class CudaBackendHybrid : public ::testing::TestWithParam<Case> {};

// Hybrid with selection off and the exact query on the CUDA backend equals full on the CUDA
// backend and hybrid on the CPU backend's device stage, layer by layer, at prefill and at each of
// 10 decode steps (30 + 10 tokens: windows 1 and 33 evict).
TEST_P(CudaBackendHybrid, ExactHybridEqualsFullAndTheCpuStageLayerByLayer) {
  SKIP_WITHOUT_GPU();
  const Case& c = GetParam();
  LoadedModel m = load_model(model_dir(c.model), false, 0, WeightChoice::kBF16);
  const ModelConfig cfg = m.config;
  const kv::KvShape shape{cfg.n_layers, cfg.n_kv_heads, cfg.head_dim};
  const HybridConfig hc = exact_config(c.window);
  auto pinned = make_cuda_pinned_allocator();
  CudaBackendOptions bo;
  bo.hybrid = &hc;
  bo.host_alloc = pinned.get();
  std::unique_ptr<Backend> full = make_cuda_backend(m.config, m.weights, kCtx, c.batch);
  std::unique_ptr<Backend> hyb = make_cuda_backend(m.config, m.weights, kCtx, c.batch, bo);
  ASSERT_NE(hyb->hybrid_runtime(), nullptr);
  ASSERT_EQ(full->hybrid_runtime(), nullptr);
  Transformer cpu(std::move(m.config), std::move(m.weights));
  auto plain = memory::make_plain_allocator();
  runtime::HybridAttention cpu_rt(hc, cpu, kCtx, c.batch, *plain);
  cpu.set_attention_runner(&cpu_rt);

  kv::KvCacheManager cache_full(shape, kCtx, c.batch), cache_hyb(shape, kCtx, c.batch),
      cache_cpu(shape, kCtx, c.batch);
  std::vector<int> seqs;
  for (int b = 0; b < c.batch; ++b) {
    seqs.push_back(cache_full.open_sequence());
    ASSERT_EQ(cache_hyb.open_sequence(), seqs.back());
    ASSERT_EQ(cache_cpu.open_sequence(), seqs.back());
  }
  uint32_t x = 4242;
  auto next = [&]() {
    x = x * 1664525u + 1013904223u;
    return int32_t((x >> 8) % uint32_t(cfg.vocab_size));
  };
  Batch prefill;
  for (int b = 0; b < c.batch; ++b)
    for (int i = 0, n = b == 0 ? 30 : 17; i < n; ++i) prefill.add(next(), seqs[b], i == n - 1);
  std::vector<float> lf, lh, lc;
  double worst_full = 0, worst_cpu = 0;
  for (int s = 0; s <= 10; ++s) {
    Batch batch;
    if (s == 0) {
      batch = prefill;
    } else {
      for (int b = 0; b < c.batch; ++b) batch.add(next(), seqs[b], true);
    }
    const auto df = step(*full, cache_full, batch, lf);
    const auto dh = step(*hyb, cache_hyb, batch, lh);
    const auto dc = step(cpu, cache_cpu, batch, lc);
    ASSERT_EQ(dh.size(), size_t(2 + 7 * cfg.n_layers));
    worst_full = std::max(worst_full, compare(dh, df, "cuda hybrid vs cuda full", s));
    worst_cpu = std::max(worst_cpu, compare(dh, dc, "cuda hybrid vs cpu hybrid", s));
    if (HasFailure()) break;
  }
  cpu.set_attention_runner(nullptr);
  const AttentionStats st = hyb->hybrid_runtime()->stats();
  EXPECT_EQ(st.decode_steps, 10);
  EXPECT_EQ(st.layer_passes, int64_t(10) * c.batch * cfg.n_layers);
  EXPECT_EQ(st.decode_steps, cpu_rt.stats().decode_steps);
  std::printf(
      "[ %s window %d batch %d ] worst normalized |cuda hybrid - cuda full| %.3g, "
      "|cuda hybrid - cpu hybrid| %.3g (tolerance %.3g)\n",
      c.model.c_str(), c.window, c.batch, worst_full, worst_cpu, kTol);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (std::string m : {"tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-opt"})
    for (int w : {0, 1, 33, kCtx})
      for (int b : {1, 2}) v.push_back({m, w, b});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Tiny, CudaBackendHybrid, ::testing::ValuesIn(cases()),
                         [](const auto& info) {
                           std::string n = info.param.model + "_w" +
                                           std::to_string(info.param.window) + "_b" +
                                           std::to_string(info.param.batch);
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

LoadOptions engine_options(const std::string& device, const std::string& policy) {
  LoadOptions o;
  o.model_path = model_dir("tiny-qwen2");
  o.n_ctx = kCtx;
  o.max_sequences = 1;
  o.n_threads = 2;
  o.weight_format = WeightFormat::kBF16;
  o.device = device;
  o.attention.policy = policy;
  o.attention.window = 8;
  o.attention.k_min = 6;
  o.attention.k = policy == "streamingllm" ? 0 : 6;  // no timing-driven K
  o.attention.cpu_threads = 1;
  return o;
}

int32_t argmax(const std::vector<float>& v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

// Every policy through Engine on --device cuda: 40 decode steps with evictions (window 8),
// finite logits, the same kinds of passes as the CPU backend and the same greedy tokens
// (teacher-forced with the CPU's) within the bf16 agreement; exact and speculative query.
TEST(CudaBackendHybridPolicies, EveryPolicyDecodes40StepsLikeTheCpuBackend) {
  SKIP_WITHOUT_GPU();
  for (const bool speculative : {false, true})
    for (const char* p :
         {"hybrid", "aog", "aoc", "h2o", "streamingllm", "keyformer", "infinigen"}) {
      std::unique_ptr<Engine> e[2];
      for (int d = 0; d < 2; ++d) {
        LoadOptions o = engine_options(d ? "cuda" : "cpu", p);
        o.attention.speculative = speculative;
        o.attention.speculation_min_cosine = 0;  // speculate everywhere: the same layers on both
        e[d] = Engine::load(o);
      }
      const int vocab = e[0]->info().vocab_size;
      int seq[2], same = 0;
      std::vector<float> logits[2];
      std::vector<int32_t> prompt;
      for (int i = 0; i < 16; ++i) prompt.push_back((i * 37 + 3) % vocab);
      for (int d = 0; d < 2; ++d) {
        seq[d] = e[d]->open_sequence();
        const Engine::StepInput in{seq[d], prompt};
        e[d]->step({&in, 1}, logits[d]);
      }
      for (int s = 0; s < 40; ++s) {
        for (float v : logits[1]) ASSERT_TRUE(std::isfinite(v)) << p << " step " << s;
        const int32_t tok = argmax(logits[0]);
        same += argmax(logits[1]) == tok;
        for (int d = 0; d < 2; ++d) {
          const Engine::StepInput in{seq[d], {&tok, 1}};
          e[d]->step({&in, 1}, logits[d]);
        }
      }
      const AttentionStats a = e[0]->attention_stats(), b = e[1]->attention_stats();
      EXPECT_EQ(b.policy, a.policy);
      EXPECT_EQ(b.decode_steps, a.decode_steps) << p;
      EXPECT_EQ(b.layer_passes, a.layer_passes) << p;
      EXPECT_EQ(b.passes_post_qkt, a.passes_post_qkt) << p;
      EXPECT_EQ(b.passes_pre_qkt, a.passes_pre_qkt) << p;
      EXPECT_GE(same, speculative ? 32 : 36)
          << p << (speculative ? " speculative" : " exact query");
      if (speculative && std::string(p) == "hybrid") {  // the GPU's speculative query is the CPU's
        EXPECT_NEAR(b.speculation_cosine, a.speculation_cosine, 0.02);
      }
      std::printf(
          "[ %s, %s query ] greedy token equal to the CPU backend's at %d/40 steps; "
          "T_gpu %.3g s, T_cpu %.3g s, T_tx %.3g s\n",
          p, speculative ? "speculative" : "exact", same, b.t_device, b.t_cpu, b.t_tx);
      for (int d = 0; d < 2; ++d) e[d]->close_sequence(seq[d]);
    }
}

// --policy auto on --device cuda: full while the KV fits, hybrid with the largest window under
// --gpu-memory-mb; a window over the cap is an error naming the flags.
TEST(CudaBackendHybridPolicies, AutoPolicyAndTheMemoryCap) {
  SKIP_WITHOUT_GPU();
  LoadOptions o = engine_options("cuda", "");  // the default on --device cuda: auto
  o.attention.window = -1;
  EXPECT_EQ(Engine::load(o)->attention_stats().policy, "full");
  // tiny-qwen2: 2 layers x 1 KV head x 16 dims: full keeps 256 B per token (float32 K and V),
  // the window 128 B (bf16). 4000 B: the 64-token context (16 KiB) does not fit; 31 tokens do.
  o.attention.policy = "auto";
  o.attention.device_memory_mb = 0.004;
  const AttentionStats st = Engine::load(o)->attention_stats();
  EXPECT_EQ(st.policy, "hybrid");
  EXPECT_EQ(st.window, 31);
  o.attention.policy = "hybrid";
  o.attention.window = 64;
  const std::string err = test::error_of([&] { Engine::load(o); });
  EXPECT_NE(err.find("--gpu-memory-mb"), std::string::npos) << err;
  EXPECT_NE(err.find("--window"), std::string::npos) << err;
  EXPECT_NE(err.find("-b"), std::string::npos) << err;
}

// Records each decode row's selection (per KV head) before the wrapped stage merges it.
class RecordingStage final : public runtime::DeviceStage {
 public:
  explicit RecordingStage(std::unique_ptr<runtime::DeviceStage> inner) : inner_(std::move(inner)) {}
  const char* name() const override { return inner_->name(); }
  kv::WindowFactory window_factory() override { return inner_->window_factory(); }
  const float* to_host(const float* src, size_t n, std::vector<float>& s) override {
    return inner_->to_host(src, n, s);
  }
  void from_host(float* dst, const float* src, size_t n) override {
    inner_->from_host(dst, src, n);
  }
  void decode(int il, const runtime::DecodeRow* rows, int n) override {
    for (int b = 0; b < n; ++b)
      sel->emplace_back(rows[b].cpu.sel, rows[b].cpu.sel + size_t(rows[b].cpu.k) * n_kv_heads);
    inner_->decode(il, rows, n);
  }
  runtime::ExactResult exact(int il, const runtime::ExactBatch& b, bool s) override {
    return inner_->exact(il, b, s);
  }
  void begin_step() override { inner_->begin_step(); }
  std::optional<double> step_seconds() override { return inner_->step_seconds(); }
  std::vector<std::vector<int32_t>>* sel = nullptr;
  int n_kv_heads = 0;

 private:
  std::unique_ptr<runtime::DeviceStage> inner_;
};

// Both runtimes on one CPU Transformer's q, k, v (the CPU one's output goes on): identical
// CPU-stage inputs.
class Both final : public AttentionRunner {
 public:
  Both(AttentionRunner& a, AttentionRunner& b, int width) : a_(a), b_(b), width_(width) {}
  void begin_step(const Batch& batch, const int32_t* pos) override {
    n_ = batch.size();
    a_.begin_step(batch, pos);
    b_.begin_step(batch, pos);
  }
  void layer_input(int il, const float* x) override {
    a_.layer_input(il, x);
    b_.layer_input(il, x);
  }
  void attend(int il, const float* q, const float* k, const float* v, float* out) override {
    std::vector<float> scratch(size_t(n_) * width_);
    b_.attend(il, q, k, v, scratch.data());
    a_.attend(il, q, k, v, out);
  }
  void end_step() override {
    a_.end_step();
    b_.end_step();
  }

 private:
  AttentionRunner &a_, &b_;
  int width_, n_ = 0;
};

TEST(CudaSelection, SameTokenIndicesAsTheCpuStageWithIdenticalInputs) {
  SKIP_WITHOUT_GPU();
  for (Policy p : {Policy::kHybrid, Policy::kKeyformer, Policy::kInfinigen, Policy::kStreamingLlm,
                   Policy::kH2o})
    for (int window : {0, 12}) {
      LoadedModel m = load_model(model_dir("tiny-llama"), false, 0, WeightChoice::kF32);
      kv::KvCacheManager cache(
          kv::KvShape{m.config.n_layers, m.config.n_kv_heads, m.config.head_dim}, kCtx, 2);
      Transformer model(std::move(m.config), std::move(m.weights));
      const ModelConfig& cfg = model.config();
      const runtime::ModelDims dims = runtime::dims_of(model);
      auto alloc = memory::make_plain_allocator();
      HybridConfig hc = exact_config(window);
      hc.policy = p;
      hc.selection = SelectionControl::kPost;
      hc.k_min = 5;
      hc.k_fixed = p == Policy::kStreamingLlm ? 0 : 5;
      std::vector<std::vector<int32_t>> sel[2];
      std::unique_ptr<runtime::HybridRuntime> rt[2];
      for (int d = 0; d < 2; ++d) {
        auto inner = d ? runtime::make_cuda_device_stage(dims, *alloc)
                       : std::unique_ptr<runtime::DeviceStage>(
                             std::make_unique<runtime::CpuDeviceStage>(dims, *alloc));
        auto rec = std::make_unique<RecordingStage>(std::move(inner));
        rec->sel = &sel[d];
        rec->n_kv_heads = cfg.n_kv_heads;
        rt[d] = std::make_unique<runtime::HybridRuntime>(
            hc, dims, std::make_unique<runtime::CpuQueryProvider>(model), std::move(rec), kCtx, 2,
            *alloc);
      }
      Both both(*rt[0], *rt[1], cfg.n_heads * cfg.head_dim);
      model.set_attention_runner(&both);
      const int s0 = cache.open_sequence(), s1 = cache.open_sequence();
      std::vector<float> logits;
      Batch prefill;
      for (int i = 0; i < 24; ++i) prefill.add((i * 29 + 1) % cfg.vocab_size, s0, i == 23);
      for (int i = 0; i < 19; ++i) prefill.add((i * 13 + 7) % cfg.vocab_size, s1, i == 18);
      model.forward(prefill, cache, logits);
      for (int s = 0; s < 20; ++s) {
        Batch d;
        d.add((s * 11 + 2) % cfg.vocab_size, s0, true);
        d.add((s * 17 + 5) % cfg.vocab_size, s1, true);
        model.forward(d, cache, logits);
      }
      model.set_attention_runner(nullptr);
      ASSERT_EQ(sel[0].size(), sel[1].size());
      ASSERT_EQ(sel[0].size(), size_t(20 * 2 * cfg.n_layers));
      int same = 0, nonempty = 0;
      for (size_t i = 0; i < sel[0].size(); ++i) {
        same += sel[0][i] == sel[1][i];
        nonempty += !sel[0][i].empty();
      }
      EXPECT_GT(nonempty, 0) << runtime::policy_name(p);
      if (p == Policy::kH2o)
        EXPECT_GE(same, int(sel[0].size() * 9 / 10)) << "window " << window;
      else
        EXPECT_EQ(same, int(sel[0].size())) << runtime::policy_name(p) << " window " << window;
      std::printf(
          "[ %s window %d ] identical selections in %d/%zu rows (%d with offloaded "
          "tokens)\n",
          runtime::policy_name(p), window, same, sel[0].size(), nonempty);
    }
}

// ---- CPU-side (run everywhere) --------------------------------------------------------------

// --policy auto on --device cpu is full (no device memory to budget), and the empty policy (the
// tools' default) is full there too.
TEST(CudaEngineCpuSide, AutoOnTheCpuIsFull) {
  for (const char* p : {"auto", ""}) {
    LoadOptions o = engine_options("cpu", p);
    EXPECT_EQ(Engine::load(o)->attention_stats().policy, "full") << "'" << p << "'";
  }
}

// Without a usable GPU, --device cuda fails at load with the reason, for every policy (the
// Engine refuses no policy itself any more).
TEST(CudaEngineCpuSide, WithoutAGpuTheErrorSaysWhy) {
  std::string why;
  if (cuda_available(&why)) GTEST_SKIP() << "a GPU is available";
  for (const char* p : {"", "auto", "full", "hybrid", "aog", "aoc", "h2o"}) {
    const std::string err = test::error_of([&] { Engine::load(engine_options("cuda", p)); });
    EXPECT_NE(err.find("--device cuda"), std::string::npos) << p << ": " << err;
    EXPECT_EQ(err.find("policy full only"), std::string::npos) << p << ": " << err;
  }
}

// The shared prefill through the CUDA device stage (Engine::prefill_snapshot on --device cuda
// captures the tiers: the bf16 window exported, the host stores widened; restore_sequence appends
// them back through CudaDeviceStage::restore). Written without a GPU: it compiles and skips here;
// it has NOT run. Restoring a CUDA snapshot into a fresh CUDA engine of the same policy must give
// the same window and stores, so the greedy tokens of 24 steps must equal its own prefill's.
TEST(CudaBackendHybridPolicies, SharedPrefillRestoresThroughTheCudaStage) {
  SKIP_WITHOUT_GPU();
  for (const char* p : {"hybrid", "h2o", "aog"}) {
    SCOPED_TRACE(p);
    std::vector<int32_t> prompt;
    auto own = Engine::load(engine_options("cuda", p));
    const int vocab = own->info().vocab_size;
    for (int i = 0; i < 16; ++i) prompt.push_back((i * 37 + 3) % vocab);
    const PrefillSnapshot snap = own->prefill_snapshot({prompt});
    EXPECT_EQ(snap.kv_precision, "bf16 window + bf16 offloaded");
    auto restored = Engine::load(engine_options("cuda", p));
    ASSERT_EQ(restored->restore_problem(snap), "");
    GenerateOptions g;
    g.n_predict = 24;
    g.sampling.temperature = 0;
    g.stop_at_eog = false;
    const auto a = own->generate_batch({prompt}, g);
    const auto b = restored->generate_batch(snap, g);
    EXPECT_EQ(a[0].tokens, b[0].tokens);
    EXPECT_TRUE(b[0].stats.prefill_restored);
  }
  // full keeps its KV in the CUDA backend: no snapshot, no restore, said so.
  auto full = Engine::load(engine_options("cuda", "full"));
  EXPECT_NE(test::error_of([&] {
              full->prefill_snapshot({{1, 2, 3}});
            }).find("--policy full"),
            std::string::npos);
}

}  // namespace
}  // namespace hybridgen
