// The hybrid runtime in the decode loop (runtime/hybrid_attention.h) against the one-tier
// reference, on the tiny checkpoints of every architecture (GQA and MHA, QKV bias, sliding
// window, learned positions).
//
// Exactness (DESIGN.md, rung 1): with selection off and the exact query, hybrid attention must
// equal monolithic attention up to rounding. The only rounding the tiers add is the bf16 storage
// of offloaded K and V, so the reference here is the CPU backend's attention with exactly the
// offloaded positions' K/V rounded to bf16 (RoundedReference below): equal within float32
// summation-order error, for windows from 0 to the whole context, batch 1 and 2, across
// evictions.
#include "runtime/hybrid_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "cpu/ops.h"
#include "kv/kv_cache.h"
#include "memory/allocator.h"
#include "model/dequant.h"
#include "model/model_loader.h"
#include "model/safetensors.h"
#include "runtime/cpu_device_stage.h"
#include "runtime/transformer.h"
#include "test_support.h"

namespace hybridgen {
namespace {

using runtime::HybridAttention;
using runtime::HybridConfig;
using runtime::Policy;
using runtime::SelectionControl;
using test::Contains;
using test::error_of;

std::string model_dir(const std::string& name) {
  return std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/" + name;
}

constexpr int kCtx = 64;

// One-tier attention where the K/V of positions below a cutoff are rounded to bf16 first:
// exactly what the tiers store for offloaded tokens. Cutoff for a token of sequence s: positions
// below it are offloaded by the time the hybrid runtime computes that token's attention.
//   prefill chunk (s has several tokens in the batch): appended first, so the window holds the
//     last W of them: cutoff = (last position of s in the batch + 1) - W;
//   decode step (one token per sequence): attention runs before the step's eviction, over the
//     W window tokens and the new one: cutoff = pos - W.
//
// With a selection map (selective paths), a decode token attends only to the offloaded tokens
// the runtime kept for its KV head (the map, filled by HybridConfig::decode_observer), the
// window and itself: exact attention over (selected ∪ window ∪ new token), computed here from
// the one-tier cache with the true query, independent of the runtime's tiers and merge.
struct KeptSet {
  int n_off = 0, k = 0;
  std::vector<int32_t> idx;  // [n_kv_heads, k] positions (host-local index == position)
};
using KeptMap = std::map<std::pair<int, int>, KeptSet>;  // (layer, sequence) -> this step's

// Accumulated-score predictors, re-derived here from the reference's own attention: H2O sums the
// attention probabilities of each attended position (over the group's query heads, prompt and
// decode steps); Keyformer sums softmax((x + ζ) / τ) of the attended logits x, τ = 1 + 0.01 *
// (steps since the prompt), ζ the runtime's Gumbel stream (kv::gumbel_noise: the noise is an
// input, like a seed). Before each decode step the runtime's selection must be a top-K of these
// scores (H2O: with its K/2 most recent offloaded tokens reserved).
enum class Accumulated { kNone, kH2o, kHeavy, kKeyformer };  // kHeavy: H2O mass, no recent

class RoundedReference final : public AttentionRunner {
 public:
  RoundedReference(kv::KvCacheManager& cache, const ModelConfig& c, int window,
                   const KeptMap* kept = nullptr, Accumulated acc = Accumulated::kNone)
      : cache_(cache), c_(c), window_(window), kept_(kept), acc_(acc) {}
  int64_t selections_checked = 0;
  void begin_step(const Batch& batch, const int32_t* pos) override {
    batch_ = &batch;
    pos_.assign(pos, pos + batch.size());
    end_.clear();
    std::map<int, int> count;
    for (int t = 0; t < batch.size(); ++t) {
      end_[batch.seq[t]] = std::max(end_[batch.seq[t]], pos[t] + 1);
      ++count[batch.seq[t]];
    }
    decode_ = true;
    for (const auto& [s, n] : count) decode_ = decode_ && n == 1;
  }
  void layer_input(int, const float*) override {}
  void attend(int il, const float* q, const float* k, const float* v, float* out) override {
    const int n = batch_->size(), hd = c_.head_dim, nkv = c_.n_kv_heads;
    const int group = c_.n_heads / nkv;
    for (int t = 0; t < n; ++t) updates_.try_emplace({il, batch_->seq[t]}, 0);
    for (int t = 0; t < n; ++t)
      cache_.write(batch_->seq[t], il, pos_[t], k + int64_t(t) * nkv * hd,
                   v + int64_t(t) * nkv * hd);
    const float scale = 1.0f / std::sqrt(float(hd));
    for (int t = 0; t < n; ++t) {
      const kv::LayerView view = cache_.view(batch_->seq[t], il);
      const int p = pos_[t];
      int cut = decode_ ? p - window_ : end_[batch_->seq[t]] - window_;
      const KeptSet* ks = nullptr;
      if (decode_ && kept_) {
        const auto it = kept_->find({il, batch_->seq[t]});
        EXPECT_TRUE(it != kept_->end()) << "no selection observed at layer " << il;
        if (it != kept_->end()) ks = &it->second, cut = ks->n_off;
      }
      const int lo = c_.sliding_window > 0 ? std::max(0, p - c_.sliding_window + 1) : 0;
      auto val = [&](const float* x, int j, int i) {
        return j < cut ? bf16_to_f32(f32_to_bf16(x[i])) : x[i];
      };
      const int seq = batch_->seq[t];
      std::vector<std::vector<double>>& score = scores_[{il, seq}];
      if (score.empty()) score.assign(nkv, std::vector<double>(size_t(cache_.capacity()), 0.0));
      if (ks && acc_ != Accumulated::kNone && lo == 0 && ks->k < ks->n_off) check_top_k(*ks, score);
      const int64_t update = updates_[{il, seq}];
      for (int qh = 0; qh < c_.n_heads; ++qh) {
        const int h = qh / group;
        const float* qv = q + (int64_t(t) * c_.n_heads + qh) * hd;
        std::vector<float> s(p - lo + 1);
        std::vector<char> kept(p + 1, 1);
        if (ks) {  // offloaded positions: only the selected ones
          std::fill(kept.begin(), kept.begin() + std::min(cut, p + 1), 0);
          for (int j = 0; j < ks->k; ++j) kept[ks->idx[size_t(h) * ks->k + j]] = 1;
        }
        for (int j = lo; j <= p; ++j) {
          float d = 0;
          for (int i = 0; i < hd; ++i) d += qv[i] * val(view.key(h, j), j, i);
          s[j - lo] = kept[j] ? d * scale : -INFINITY;
        }
        const std::vector<float> logits = s;
        cpu::softmax(s.data(), int(s.size()));
        if (acc_ == Accumulated::kH2o || acc_ == Accumulated::kHeavy)
          for (int j = lo; j <= p; ++j) score[h][j] += s[j - lo];
        if (acc_ == Accumulated::kKeyformer) {
          const double tau = 1.0 + 0.01 * double(update);
          const uint64_t seed = 0x6b6579666f726d72ull + uint64_t(seq) * c_.n_layers + il;
          std::vector<double> g(p - lo + 1, 0.0);
          double m = -INFINITY, z = 0;
          for (int j = lo; j <= p; ++j)
            if (kept[j])
              m = std::max(
                  m, g[j - lo] = (logits[j - lo] + kv::gumbel_noise(seed, update, qh, j)) / tau);
          for (int j = lo; j <= p; ++j)
            if (kept[j]) z += g[j - lo] = std::exp(g[j - lo] - m);
          for (int j = lo; j <= p; ++j)
            if (kept[j]) score[h][j] += g[j - lo] / z;
        }
        float* o = out + (int64_t(t) * c_.n_heads + qh) * hd;
        std::fill(o, o + hd, 0.f);
        for (int j = lo; j <= p; ++j)
          for (int i = 0; i < hd; ++i) o[i] += s[j - lo] * val(view.value(h, j), j, i);
      }
    }
  }
  void end_step() override {
    for (auto& [key, n] : updates_) (void)key, ++n;
  }

 private:
  // The runtime's selection per KV head is a top-K of the reference's scores over the offloaded
  // positions [0, n_off): every kept (non-reserved) token scores at least as much as every
  // dropped one (up to float summation order).
  void check_top_k(const KeptSet& ks, const std::vector<std::vector<double>>& score) {
    const int n_recent = acc_ == Accumulated::kH2o ? ks.k / 2 : 0;
    const int first_recent = ks.n_off - n_recent;
    for (int h = 0; h < c_.n_kv_heads; ++h) {
      std::vector<char> in(ks.n_off, 0);
      for (int j = 0; j < ks.k; ++j) in[ks.idx[size_t(h) * ks.k + j]] = 1;
      double lo_kept = INFINITY, hi_dropped = -INFINITY;
      for (int j = 0; j < ks.n_off; ++j) {
        if (j >= first_recent) {
          EXPECT_TRUE(in[j]) << "recent offloaded token " << j << " not kept";
          continue;
        }
        if (in[j])
          lo_kept = std::min(lo_kept, score[h][j]);
        else
          hi_dropped = std::max(hi_dropped, score[h][j]);
      }
      EXPECT_GE(lo_kept, hi_dropped - 1e-4 * (1 + std::fabs(hi_dropped)))
          << "KV head " << h << ": the selection is not a top-K of the accumulated scores";
      ++selections_checked;
    }
  }

  kv::KvCacheManager& cache_;
  ModelConfig c_;
  int window_;
  const KeptMap* kept_;
  Accumulated acc_;
  std::map<std::pair<int, int>, std::vector<std::vector<double>>> scores_;  // [n_kv][ctx]
  std::map<std::pair<int, int>, int64_t> updates_;  // accumulations per (layer, sequence)
  const Batch* batch_ = nullptr;
  std::vector<int32_t> pos_;
  std::map<int, int> end_;
  bool decode_ = false;
};

// Runs the hybrid runtime and the rounded reference on the SAME q, k, v at every layer and
// compares their attention outputs; the hybrid's output goes on. (Comparing only final logits
// would mix in chaos: a K element that lands on the other side of a bf16 rounding boundary in
// one run flips by 2^-8 relative.)
class ComparingRunner final : public AttentionRunner {
 public:
  ComparingRunner(AttentionRunner& hybrid, AttentionRunner& reference, int width)
      : hybrid_(hybrid), reference_(reference), width_(width) {}
  void begin_step(const Batch& batch, const int32_t* pos) override {
    n_ = batch.size();
    hybrid_.begin_step(batch, pos);
    reference_.begin_step(batch, pos);
  }
  void layer_input(int il, const float* x) override {
    hybrid_.layer_input(il, x);
    reference_.layer_input(il, x);
  }
  void attend(int il, const float* q, const float* k, const float* v, float* out) override {
    std::vector<float> ref(size_t(n_) * width_);
    hybrid_.attend(il, q, k, v, out);  // first: it reports its selection to the reference
    reference_.attend(il, q, k, v, ref.data());
    for (size_t i = 0; i < ref.size(); ++i) {
      const double err = std::fabs(double(out[i]) - ref[i]);
      max_err = std::max(max_err, err);
      if (!(err <= 1e-5 + 1e-4 * std::fabs(ref[i])) && bad++ < 5)
        ADD_FAILURE() << "layer " << il << " element " << i << ": hybrid " << out[i]
                      << ", reference " << ref[i];
    }
    ++compared;
  }
  void end_step() override {
    hybrid_.end_step();
    reference_.end_step();
  }
  double max_err = 0;
  int bad = 0;
  int64_t compared = 0;

 private:
  AttentionRunner& hybrid_;
  AttentionRunner& reference_;
  int width_, n_ = 0;
};

// Token ids of a reproducible script: sequence b has a prompt of prompt_len[b] tokens, then
// every sequence decodes `steps` more (teacher-forced ids), one token per sequence per step.
struct Script {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> decode;  // [steps][batch]
};

Script make_script(int vocab, const std::vector<int>& prompt_len, int steps) {
  uint32_t x = 12345;
  auto next = [&]() {
    x = x * 1664525u + 1013904223u;
    return int32_t((x >> 8) % uint32_t(vocab));
  };
  Script s;
  for (int len : prompt_len) {
    s.prompts.emplace_back();
    for (int i = 0; i < len; ++i) s.prompts.back().push_back(next());
  }
  for (int i = 0; i < steps; ++i) {
    s.decode.emplace_back();
    for (size_t b = 0; b < prompt_len.size(); ++b) s.decode.back().push_back(next());
  }
  return s;
}

// Runs the script through `model`: one prefill step holding every prompt, then the decode
// steps. Returns every logits row in order.
std::vector<float> run_script(Transformer& model, kv::KvCacheManager& cache, const Script& s) {
  std::vector<int> seqs;
  for (size_t b = 0; b < s.prompts.size(); ++b) seqs.push_back(cache.open_sequence());
  std::vector<float> all, logits;
  Batch prefill;
  for (size_t b = 0; b < s.prompts.size(); ++b)
    for (int32_t tok : s.prompts[b]) prefill.add(tok, seqs[b], true);
  model.forward(prefill, cache, logits);
  all.insert(all.end(), logits.begin(), logits.end());
  for (const auto& step : s.decode) {
    Batch b;
    for (size_t i = 0; i < step.size(); ++i) b.add(step[i], seqs[i], true);
    model.forward(b, cache, logits);
    all.insert(all.end(), logits.begin(), logits.end());
  }
  for (int q : seqs) cache.close_sequence(q);
  return all;
}

struct Loaded {
  std::unique_ptr<Transformer> model;
  std::unique_ptr<kv::KvCacheManager> cache;
};

Loaded load(const std::string& name, int batch) {
  LoadedModel m = load_model(model_dir(name), false, 0, WeightChoice::kF32);
  Loaded l;
  l.cache = std::make_unique<kv::KvCacheManager>(
      kv::KvShape{m.config.n_layers, m.config.n_kv_heads, m.config.head_dim}, kCtx, batch);
  l.model = std::make_unique<Transformer>(std::move(m.config), std::move(m.weights));
  return l;
}

HybridConfig exact_config(int window) {
  HybridConfig c;
  c.policy = Policy::kHybrid;
  c.window = window;
  c.selection = SelectionControl::kOff;
  c.speculative = false;
  c.cpu_threads = 1;
  // float32 query (the AVX-512 BF16 path rounds the query to bf16: not "exact")
  c.logits_path = cpu::logits_path_supported(cpu::LogitsPath::kAvx512, cpu::KeyDType::kBF16)
                      ? cpu::LogitsPath::kAvx512
                      : cpu::LogitsPath::kPortable;
  return c;
}

struct Case {
  std::string model;
  int window;
  int batch;
};

class HybridExactness : public ::testing::TestWithParam<Case> {};

TEST_P(HybridExactness, SelectionOffExactQueryEqualsFullUpToBf16Storage) {
  const Case& c = GetParam();
  const std::vector<int> prompt_len =
      c.batch == 1 ? std::vector<int>{20} : std::vector<int>{20, 13};
  const int steps = 40;  // 20 + 40 = 60 < kCtx; windows 0..5 evict on every step

  // Layer by layer on identical inputs: tight.
  Loaded hyb = load(c.model, c.batch);
  const ModelConfig cfg = hyb.model->config();
  const Script script = make_script(cfg.vocab_size, prompt_len, steps);
  auto alloc = memory::make_plain_allocator();
  HybridAttention hybrid(exact_config(c.window), *hyb.model, kCtx, c.batch, *alloc);
  kv::KvCacheManager ref_cache(kv::KvShape{cfg.n_layers, cfg.n_kv_heads, cfg.head_dim}, kCtx,
                               c.batch);
  RoundedReference rounded(ref_cache, cfg, std::min(c.window, kCtx));
  ComparingRunner compare(hybrid, rounded, cfg.n_heads * cfg.head_dim);
  hyb.model->set_attention_runner(&compare);
  for (int b = 0; b < c.batch; ++b) ref_cache.open_sequence();
  const std::vector<float> got = run_script(*hyb.model, *hyb.cache, script);
  EXPECT_EQ(compare.bad, 0);
  EXPECT_EQ(compare.compared, int64_t(steps + 1) * cfg.n_layers);
  // The split path really ran: every decode step, every layer, every sequence.
  const AttentionStats st = hybrid.stats();
  EXPECT_EQ(st.decode_steps, steps);
  EXPECT_EQ(st.layer_passes, int64_t(steps) * c.batch * cfg.n_layers);
  EXPECT_EQ(st.passes_post_qkt + st.passes_pre_qkt, 0);

  // End to end against the one-tier engine (no rounding anywhere): the bf16 storage of
  // offloaded K/V is the only difference, so logits stay close and top-1 agrees.
  Loaded full = load(c.model, c.batch);
  const std::vector<float> want = run_script(*full.model, *full.cache, script);
  ASSERT_EQ(got.size(), want.size());
  double max_logit_err = 0;
  int top1_same = 0;
  const int rows = int(got.size() / cfg.vocab_size);
  for (int r = 0; r < rows; ++r) {
    const float* a = &got[size_t(r) * cfg.vocab_size];
    const float* b = &want[size_t(r) * cfg.vocab_size];
    for (int i = 0; i < cfg.vocab_size; ++i) {
      ASSERT_TRUE(std::isfinite(a[i]));
      max_logit_err = std::max(max_logit_err, double(std::fabs(a[i] - b[i])));
    }
    top1_same +=
        std::max_element(a, a + cfg.vocab_size) - a == std::max_element(b, b + cfg.vocab_size) - b;
  }
  // (bf16 K/V of these random tiny models move logits by up to ~0.25: measured 0.24 at most)
  EXPECT_LT(max_logit_err, 0.5);
  EXPECT_GE(top1_same, rows * 95 / 100);
  std::printf(
      "[ %s window %d batch %d ] per layer max |hybrid - rounded full| = %.3g; logits "
      "vs full: max |err| %.3g, top-1 same %d/%d\n",
      c.model.c_str(), c.window, c.batch, compare.max_err, max_logit_err, top1_same, rows);
}

std::vector<Case> exactness_cases() {
  std::vector<Case> cases;
  for (std::string m : {"tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-opt"})
    for (int w : {0, 1, 5, 33, 1000})  // 1000 > context: clamped, nothing offloaded
      for (int b : {1, 2}) cases.push_back({m, w, b});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Tiny, HybridExactness, ::testing::ValuesIn(exactness_cases()),
                         [](const auto& info) {
                           std::string n = info.param.model + "_w" +
                                           std::to_string(info.param.window) + "_b" +
                                           std::to_string(info.param.batch);
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

// With nothing offloaded (window >= context) the speculative pipeline has nothing to do: the
// result equals full attention (no bf16 rounding anywhere) even with speculation on.
TEST(HybridAttention, NothingOffloadedEqualsFullWithSpeculation) {
  Loaded ref = load("tiny-llama", 2);
  const Script script = make_script(ref.model->config().vocab_size, {20, 13}, 30);
  const std::vector<float> want = run_script(*ref.model, *ref.cache, script);
  Loaded hyb = load("tiny-llama", 2);
  auto alloc = memory::make_plain_allocator();
  HybridConfig cfg = exact_config(kCtx);
  cfg.speculative = true;
  cfg.selection = SelectionControl::kAdaptive;
  cfg.k_min = 4;
  HybridAttention hybrid(cfg, *hyb.model, kCtx, 2, *alloc);
  hyb.model->set_attention_runner(&hybrid);
  const std::vector<float> got = run_script(*hyb.model, *hyb.cache, script);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-4 + 1e-4 * std::fabs(want[i])) << "at " << i;
}

// Speculation on, selection off: the CPU stage runs one layer ahead on its own thread with the
// speculated query. Its effect on the logits is measured, not hidden (printed): on these random
// tiny models consecutive layers' inputs are unrelated, so the speculated query is poor (about
// 60% top-1 agreement); the default model's figure is in the benchmarks. Asserted here: the run
// stays finite, the pipeline ran every pass, and prefill rows (exact path) are identical.
TEST(HybridAttention, SpeculativePipelineRunsEveryPass) {
  for (std::string name : {"tiny-llama", "tiny-opt"}) {
    Loaded exact = load(name, 2);
    const Script script = make_script(exact.model->config().vocab_size, {20, 13}, 40);
    auto alloc = memory::make_plain_allocator();
    HybridAttention ex(exact_config(4), *exact.model, kCtx, 2, *alloc);
    exact.model->set_attention_runner(&ex);
    const std::vector<float> want = run_script(*exact.model, *exact.cache, script);

    Loaded spec = load(name, 2);
    HybridConfig cfg = exact_config(4);
    cfg.speculative = true;
    HybridAttention sp(cfg, *spec.model, kCtx, 2, *alloc);
    spec.model->set_attention_runner(&sp);
    const std::vector<float> got = run_script(*spec.model, *spec.cache, script);
    ASSERT_EQ(got.size(), want.size());
    const int vocab = spec.model->config().vocab_size;
    int same_top1 = 0, rows = int(got.size() / vocab);
    double max_err = 0;
    for (int r = 0; r < rows; ++r) {
      const float* a = &got[size_t(r) * vocab];
      const float* b = &want[size_t(r) * vocab];
      for (int i = 0; i < vocab; ++i) {
        ASSERT_TRUE(std::isfinite(a[i]));
        max_err = std::max(max_err, double(std::fabs(a[i] - b[i])));
      }
      same_top1 += std::max_element(a, a + vocab) - a == std::max_element(b, b + vocab) - b;
    }
    const AttentionStats st = sp.stats();
    EXPECT_EQ(st.decode_steps, 40);
    EXPECT_EQ(st.layer_passes, 40 * 2 * spec.model->config().n_layers);
    for (size_t i = 0; i < size_t(33) * vocab; ++i)  // the prefill step's rows: 20 + 13 tokens
      ASSERT_EQ(got[i], want[i]) << name << " at " << i;
    std::printf(
        "[ %s ] speculation: top-1 same at %d of %d rows, max |Δlogit| %.3g, device "
        "waited %.3f ms in total\n",
        name.c_str(), same_top1, rows, max_err, 1e3 * st.t_wait);
  }
}

// Every selective policy runs end to end; the selection kinds and K are what the policy says.
TEST(HybridAttention, PoliciesSelectWhatTheySay) {
  struct P {
    Policy policy;
    bool post;  // Post-QKT passes expected (else Pre-QKT)
    int k;
  };
  for (const P& p : {P{Policy::kKeyformer, false, 6}, P{Policy::kH2o, false, 6},
                     P{Policy::kInfinigen, false, 6}, P{Policy::kStreamingLlm, false, 4}}) {
    Loaded l = load("tiny-qwen2", 1);
    const Script script = make_script(l.model->config().vocab_size, {30}, 20);
    auto alloc = memory::make_plain_allocator();
    HybridConfig cfg = exact_config(8);
    cfg.policy = p.policy;
    cfg.selection = SelectionControl::kAdaptive;
    cfg.k_fixed = p.policy == Policy::kStreamingLlm ? 0 : 6;
    cfg.speculative = true;
    HybridAttention h(cfg, *l.model, kCtx, 1, *alloc);
    l.model->set_attention_runner(&h);
    const std::vector<float> got = run_script(*l.model, *l.cache, script);
    for (float x : got) ASSERT_TRUE(std::isfinite(x));
    const AttentionStats st = h.stats();
    const int64_t passes = 20 * l.model->config().n_layers;
    EXPECT_EQ(st.layer_passes, passes) << runtime::policy_name(p.policy);
    EXPECT_EQ(p.post ? st.passes_post_qkt : st.passes_pre_qkt, passes)
        << runtime::policy_name(p.policy);
    EXPECT_DOUBLE_EQ(st.mean_k, p.k) << runtime::policy_name(p.policy);
  }
}

// Every selective path against an independent reference: each decode step of each layer equals
// exact attention over (the offloaded tokens it kept ∪ the window ∪ the new token) with the true
// query, computed by RoundedReference from the one-tier cache. Both logits modes: exact-selected
// with the speculative pipeline on (the speculated query only chooses), and speculative logits
// with the exact query (then the CPU stage's logits are the true ones). Models: GQA with RoPE,
// a sliding window, MHA with learned positions and biases.
TEST(HybridAttention, EverySelectivePathEqualsExactAttentionOverItsSelection) {
  struct P {
    Policy policy;
    SelectionControl selection;
    runtime::Predictor predictor;
    int k;
  };
  const std::vector<P> paths = {
      {Policy::kHybrid, SelectionControl::kPost, runtime::Predictor::kHeavy, 5},
      {Policy::kHybrid, SelectionControl::kPre, runtime::Predictor::kHeavy, 5},
      {Policy::kHybrid, SelectionControl::kPre, runtime::Predictor::kPartial, 5},
      {Policy::kHybrid, SelectionControl::kPre, runtime::Predictor::kSinksRecent, 5},
      {Policy::kHybrid, SelectionControl::kAdaptive, runtime::Predictor::kHeavy, 0},
      {Policy::kKeyformer, SelectionControl::kAdaptive, runtime::Predictor::kHeavy, 5},
      {Policy::kH2o, SelectionControl::kAdaptive, runtime::Predictor::kHeavy, 6},
      {Policy::kStreamingLlm, SelectionControl::kAdaptive, runtime::Predictor::kHeavy, 0},
      {Policy::kInfinigen, SelectionControl::kAdaptive, runtime::Predictor::kHeavy, 5},
  };
  for (std::string model : {"tiny-llama", "tiny-mistral", "tiny-opt"})
    for (const P& p : paths)
      for (runtime::LogitsOn mode : {runtime::LogitsOn::kDevice, runtime::LogitsOn::kCpu}) {
        const std::string what = model + " " + runtime::policy_name(p.policy) + " selection " +
                                 std::to_string(int(p.selection)) + " predictor " +
                                 std::to_string(int(p.predictor)) + " " +
                                 runtime::logits_on_name(mode);
        SCOPED_TRACE(what);
        const int window = 6, steps = 24;
        Loaded hyb = load(model, 2);
        const ModelConfig cfg = hyb.model->config();
        const Script script = make_script(cfg.vocab_size, {22, 15}, steps);
        auto alloc = memory::make_plain_allocator();
        HybridConfig hc = exact_config(window);
        hc.policy = p.policy;
        hc.selection = p.selection;
        hc.predictor = p.predictor;
        hc.k_fixed = p.k;
        hc.k_min = 4;
        hc.logits_on = mode;
        hc.speculative = mode == runtime::LogitsOn::kDevice;  // speculative logits: exact query
        hc.speculation_warmup_steps = 0;  // speculate everywhere (no fallback to the true query)
        KeptMap kept;
        int64_t selective = 0;
        hc.decode_observer = [&](int layer, int seq, int n_off, int k, const int32_t* sel) {
          KeptSet& e = kept[{layer, seq}];
          e.n_off = n_off;
          e.k = k;
          e.idx.assign(sel, sel + size_t(k) * cfg.n_kv_heads);
          if (k < n_off) ++selective;
        };
        HybridAttention hybrid(hc, *hyb.model, kCtx, 2, *alloc);
        kv::KvCacheManager ref_cache(kv::KvShape{cfg.n_layers, cfg.n_kv_heads, cfg.head_dim}, kCtx,
                                     2);
        const Accumulated acc = p.policy == Policy::kH2o         ? Accumulated::kH2o
                                : p.policy == Policy::kKeyformer ? Accumulated::kKeyformer
                                : p.policy == Policy::kHybrid &&
                                        p.selection == SelectionControl::kPre &&
                                        p.predictor == runtime::Predictor::kHeavy
                                    ? Accumulated::kHeavy
                                    : Accumulated::kNone;
        RoundedReference ref(ref_cache, cfg, window, &kept, acc);
        ComparingRunner compare(hybrid, ref, cfg.n_heads * cfg.head_dim);
        hyb.model->set_attention_runner(&compare);
        for (int b = 0; b < 2; ++b) ref_cache.open_sequence();
        run_script(*hyb.model, *hyb.cache, script);
        EXPECT_EQ(compare.bad, 0);
        EXPECT_EQ(compare.compared, int64_t(steps + 1) * cfg.n_layers);
        EXPECT_GT(selective, int64_t(steps) * cfg.n_layers) << "the selection must drop tokens";
        if (acc != Accumulated::kNone && model != "tiny-mistral") {  // (sliding window: positional)
          EXPECT_GT(ref.selections_checked, int64_t(steps) * cfg.n_layers);
        }
        const AttentionStats st = hybrid.stats();
        EXPECT_EQ(st.cpu_logits, runtime::logits_on_name(mode));
        const uint64_t staged_k = st.key_bytes_moved;
        if (mode == runtime::LogitsOn::kDevice)
          EXPECT_EQ(staged_k, st.value_bytes_moved);  // K rows travel with the V rows
        else
          EXPECT_EQ(staged_k, 0u);
      }
}

// aog and aoc against full attention over bf16-rounded K/V: every token is offloaded (window 0),
// the new one too, by its append before the attention, so every attended position is rounded
// (RoundedReference with window -1: cut = pos + 1).
TEST(HybridAttention, AllOffloadedBaselinesEqualFullOverBf16KV) {
  for (Policy policy : {Policy::kAog, Policy::kAoc})
    for (std::string model : {"tiny-llama", "tiny-mistral", "tiny-opt"}) {
      SCOPED_TRACE(model + " " + runtime::policy_name(policy));
      const int steps = 20;
      Loaded hyb = load(model, 2);
      const ModelConfig cfg = hyb.model->config();
      const Script script = make_script(cfg.vocab_size, {20, 13}, steps);
      auto alloc = memory::make_plain_allocator();
      HybridConfig hc = exact_config(0);
      hc.policy = policy;
      HybridAttention hybrid(hc, *hyb.model, kCtx, 2, *alloc);
      kv::KvCacheManager ref_cache(kv::KvShape{cfg.n_layers, cfg.n_kv_heads, cfg.head_dim}, kCtx,
                                   2);
      RoundedReference ref(ref_cache, cfg, -1);
      ComparingRunner compare(hybrid, ref, cfg.n_heads * cfg.head_dim);
      hyb.model->set_attention_runner(&compare);
      for (int b = 0; b < 2; ++b) ref_cache.open_sequence();
      run_script(*hyb.model, *hyb.cache, script);
      EXPECT_EQ(compare.bad, 0);
      EXPECT_EQ(compare.compared, int64_t(steps + 1) * cfg.n_layers);
      EXPECT_EQ(hybrid.stats().decode_steps, steps);
    }
}

// The speculative query against an independent computation from the checkpoint's own tensors
// (tiny-qwen2: float32, Q bias, default RoPE, HF layout): RMSNorm with layer il's
// input_layernorm, x · q_proj^T + q_proj.bias, then HF's rotate-half RoPE at the position.
TEST(HybridAttention, SpeculativeQueryIsNormTimesWqPlusBiasWithRope) {
  const std::string dir = model_dir("tiny-qwen2");
  Loaded l = load("tiny-qwen2", 1);
  const ModelConfig c = l.model->config();
  auto st = SafetensorsModel::open_dir(dir);
  std::ifstream cf(dir + "/config.json");
  const nlohmann::json cj = nlohmann::json::parse(cf);
  const double theta = cj["rope_parameters"]["rope_theta"].get<double>();
  const double eps = cj["rms_norm_eps"].get<double>();
  const int d = cj["hidden_size"].get<int>(), nh = cj["num_attention_heads"].get<int>();
  const int hd = d / nh;
  auto tensor = [&](const std::string& name) {
    const TensorInfo* t = st->find(name);
    EXPECT_TRUE(t != nullptr && t->dtype == DType::kF32) << name;
    return reinterpret_cast<const float*>(t->data);
  };
  runtime::CpuQueryProvider provider(*l.model);
  uint32_t rng = 7;
  std::vector<float> x(d);
  for (float& v : x)
    v = float(int((rng = rng * 1664525u + 1013904223u) >> 9) % 2001 - 1000) / 500.f;
  for (int il = 0; il < c.n_layers; ++il)
    for (int32_t pos : {0, 1, 17, 200}) {
      const std::string pre = "model.layers." + std::to_string(il) + ".";
      const float* w_norm = tensor(pre + "input_layernorm.weight");
      const float* wq = tensor(pre + "self_attn.q_proj.weight");  // [nh * hd, d]
      const float* bq = tensor(pre + "self_attn.q_proj.bias");
      double ms = 0;
      for (float v : x) ms += double(v) * v / d;
      std::vector<double> h(d), q(size_t(nh) * hd), want(q.size());
      for (int i = 0; i < d; ++i) h[i] = x[i] / std::sqrt(ms + eps) * w_norm[i];
      for (int r = 0; r < nh * hd; ++r) {
        double a = bq[r];
        for (int i = 0; i < d; ++i) a += double(wq[size_t(r) * d + i]) * h[i];
        q[r] = a;
      }
      for (int head = 0; head < nh; ++head)
        for (int i = 0; i < hd / 2; ++i) {
          const double ang = pos * std::pow(theta, -2.0 * i / hd);
          const double a = q[head * hd + i], b = q[head * hd + i + hd / 2];
          want[head * hd + i] = a * std::cos(ang) - b * std::sin(ang);
          want[head * hd + i + hd / 2] = b * std::cos(ang) + a * std::sin(ang);
        }
      std::vector<float> got(want.size());
      provider.query(il, x.data(), 1, &pos, got.data());
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i])))
            << "layer " << il << " position " << pos << " element " << i;
    }
}

// The recall signal: Post-QKT passes report the kept tokens' softmax mass, in (0, 1], per layer;
// a full selection (K >= offloaded) has none to report; the guard holds K when it is low.
TEST(HybridAttention, RecallIsReportedAndGuardsTheScheduler) {
  Loaded l = load("tiny-llama", 1);
  const ModelConfig c = l.model->config();
  const Script script = make_script(c.vocab_size, {30}, 20);
  auto alloc = memory::make_plain_allocator();
  HybridConfig cfg = exact_config(4);
  cfg.selection = SelectionControl::kPost;
  cfg.k_fixed = 3;
  HybridAttention h(cfg, *l.model, kCtx, 1, *alloc);
  l.model->set_attention_runner(&h);
  run_script(*l.model, *l.cache, script);
  const AttentionStats st = h.stats();
  ASSERT_EQ(st.recall_per_layer.size(), size_t(c.n_layers));
  EXPECT_GT(st.recall, 0);
  EXPECT_LT(st.recall, 1);  // 3 of 26+ tokens cannot carry all the mass of random keys
  for (double r : st.recall_per_layer) EXPECT_TRUE(r > 0 && r <= 1) << r;
  EXPECT_LE(st.recall_min_step, st.recall);
  EXPECT_TRUE(Contains(format_attention_stats(st, true), "recall per layer"));
}

// The feedback scheduler drives K: starts at K_min, never below it, and the trace records it.
TEST(HybridAttention, SchedulerKeepsKAtLeastKMin) {
  Loaded l = load("tiny-llama", 1);
  const Script script = make_script(l.model->config().vocab_size, {30}, 25);
  auto alloc = memory::make_plain_allocator();
  HybridConfig cfg = exact_config(4);
  cfg.selection = SelectionControl::kAdaptive;
  cfg.k_min = 5;
  cfg.speculative = true;
  HybridAttention h(cfg, *l.model, kCtx, 1, *alloc);
  l.model->set_attention_runner(&h);
  run_script(*l.model, *l.cache, script);
  ASSERT_NE(h.scheduler(), nullptr);
  EXPECT_EQ(h.scheduler()->decisions(), 25);  // one per decode step (>= K_min offloaded)
  for (const auto& d : h.scheduler()->trace()) EXPECT_GE(d.k, 5);
  EXPECT_FALSE(h.stats().scheduler_trace.empty());
}

// The memory report against the arithmetic of the tiers (TierBytes' formulas).
TEST(HybridAttention, MemoryReportMatchesArithmetic) {
  Loaded l = load("tiny-llama", 2);
  const ModelConfig c = l.model->config();
  const int window = 7, steps = 10;
  const Script script = make_script(c.vocab_size, {20, 13}, steps);
  auto alloc = memory::make_plain_allocator();
  HybridAttention h(exact_config(window), *l.model, kCtx, 2, *alloc);
  l.model->set_attention_runner(&h);
  std::vector<int> seqs = {l.cache->open_sequence(), l.cache->open_sequence()};
  std::vector<float> logits;
  Batch b;
  for (size_t s = 0; s < 2; ++s)
    for (int32_t t : script.prompts[s]) b.add(t, seqs[s], false);
  l.model->forward(b, *l.cache, logits);
  for (const auto& step : script.decode) {
    Batch d;
    for (int s = 0; s < 2; ++s) d.add(step[s], seqs[s], true);
    l.model->forward(d, *l.cache, logits);
  }
  const uint64_t E = uint64_t(c.n_kv_heads) * c.head_dim;
  uint64_t win = 0, off = 0;
  for (int len : {20 + steps, 13 + steps}) {
    win += uint64_t(std::min(len, window));
    off += uint64_t(len - std::min(len, window));
  }
  const AttentionStats st = h.stats();
  EXPECT_EQ(st.window_used, win * E * 4 * 2 * c.n_layers);
  EXPECT_EQ(st.window_reserved, 2ull * window * E * 4 * 2 * c.n_layers);
  EXPECT_EQ(st.key_store_used, off * E * 2 * c.n_layers);
  EXPECT_EQ(st.value_store_used, off * E * 2 * c.n_layers);
  EXPECT_EQ(st.key_store_reserved, 2ull * (kCtx - window) * E * 2 * c.n_layers);
  // Staging: 2 pipeline slots x 2 rows of V and (exact-selected, the default) of K for up to
  // (context - window) tokens, plus the CPU-logits buffers; bounded by that.
  const uint64_t v_staging = 2ull * 2 * (kCtx - window) * E * 2 * 2;
  EXPECT_GE(st.staging_bytes, v_staging);
  EXPECT_LE(st.staging_bytes, v_staging + 2ull * 2 * c.n_heads * (kCtx - window) * 4 * 2);
  const std::string report = format_attention_stats(st, true);
  EXPECT_TRUE(Contains(report, "key store"));
  EXPECT_TRUE(Contains(report, "value store"));
}

TEST(HybridAttention, BadOptionsNameTheFlag) {
  AttentionOptions o;
  o.policy = "hybrd";
  EXPECT_TRUE(
      Contains(error_of([&] { runtime::resolve_attention_options(o, 64, 16, 2); }), "--policy"));
  o = AttentionOptions();
  o.policy = "hybrid";
  o.window = -5;
  EXPECT_TRUE(
      Contains(error_of([&] { runtime::resolve_attention_options(o, 64, 16, 2); }), "--window"));
  o.window = 10;
  o.k_min = 0;
  EXPECT_TRUE(
      Contains(error_of([&] { runtime::resolve_attention_options(o, 64, 16, 2); }), "--k-min"));
  o.k_min = 4;
  o.selection = "sometimes";
  EXPECT_TRUE(
      Contains(error_of([&] { runtime::resolve_attention_options(o, 64, 16, 2); }), "--selection"));
  o.selection = "post";
  o.predictor = "oracle";
  EXPECT_TRUE(
      Contains(error_of([&] { runtime::resolve_attention_options(o, 64, 16, 2); }), "--predictor"));
  // Documented clamps: a window over the context keeps everything on the device; -1 is 10%.
  o.predictor = "heavy";
  o.window = 1000;
  EXPECT_EQ(runtime::resolve_attention_options(o, 64, 16, 2).window, 64);
  o.window = -1;
  EXPECT_EQ(runtime::resolve_attention_options(o, 640, 16, 2).window, 64);
  o.policy = "aoc";
  EXPECT_EQ(runtime::resolve_attention_options(o, 640, 16, 2).window, 0);
}

// K_min above the offloaded count: every offloaded token is used (documented), and the
// scheduler is not consulted until K_min tokens are offloaded.
TEST(HybridAttention, KMinAboveOffloadedUsesEverything) {
  Loaded l = load("tiny-llama", 1);
  const Script script = make_script(l.model->config().vocab_size, {10}, 10);
  auto alloc = memory::make_plain_allocator();
  HybridConfig cfg = exact_config(4);
  cfg.selection = SelectionControl::kAdaptive;
  cfg.k_min = 100;
  HybridAttention h(cfg, *l.model, kCtx, 1, *alloc);
  l.model->set_attention_runner(&h);
  run_script(*l.model, *l.cache, script);
  const AttentionStats st = h.stats();
  EXPECT_EQ(st.passes_all, st.layer_passes);
  EXPECT_EQ(h.scheduler()->decisions(), 0);
}

}  // namespace
}  // namespace hybridgen
