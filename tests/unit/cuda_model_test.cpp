// Whole forward passes on the CUDA backend (LoadOptions::device = "cuda") against the CPU
// backend, through the public Engine API: the tiny HF models of tests/data/models, random-weight
// models of real shapes (head_dim 64 and 128, GQA groups 3 and 4, a sliding window, OPT) over
// several prefill chunks, and the default model when it has been fetched.
//
// Both backends load the weights as bf16 (WeightFormat::kBF16): the CPU backend then rounds
// every GEMM input to bf16 exactly as the CUDA backend does, so the two differ only in float32
// summation order -- and in the bf16 rounding of the activations that this order flips, which
// sets the noise floor. Measured on the CPU backend alone (embeddings perturbed by a relative
// 1e-6 .. 1e-5, so that only such flips differ): max normalized logit difference 3.5e-3 ..
// 1.9e-2, NMSE 1.5e-6 .. 3.6e-5, top-1 39/40 .. 40/40; the CUDA backend (H100, H200) shows the same
// (2.2e-3 .. 5.6e-3; NMSE 1.7e-7 .. 1.1e-5). The floor grows with depth: a 16-layer random
// model (llama-3.2-1b's shape) shows 1.4e-2 / NMSE 1.1e-4 on the CPU alone and the same on the
// GPU. For scale: bf16 vs float32 weights moves the tiny models' logits by 2.7e-2
// .. 3.9e-2 (NMSE 1.3e-4 .. 2.3e-4 against transformers).
//
// The CUDA backend's full path keeps K/V in bf16 (issue 15), the CPU backend's in float32: each
// logits comparison with the CPU is made twice, against the CPU with bf16 K/V (hybrid, window 0,
// selection off, true query: exact attention over bf16 K/V) with the tolerances below, and
// against the CPU in float32 with those tolerances widened by the rounding's own effect measured
// on the CPU (bf16_kv_tolerance: the triangle inequality). Not yet run on a GPU.
//
// Tolerances (scale_r = max(1, max_j |ref[r, j]|) per logits row r; NMSE = sum (gpu - ref)^2 /
// sum ref^2 over all logits):
//   CUDA vs CPU (bf16 both)       every |gpu - cpu| <= 2.5e-2 * scale_r; NMSE <= 1e-4; top-1 the
//                                 same in >= 97.5% of rows (98% for the random models), and a
//                                 differing top-1 only at a near tie (the reference's margin
//                                 between the two tokens <= 2.5e-2 * scale_r).
//   Default model (30 layers)     max error 5e-2 * scale_r (its CPU-only noise floor: 1.5e-2,
//                                 NMSE 1.3e-5, top-1 294/300 on random tokens); NMSE <= 1e-4;
//                                 top-1 >= 95%, near ties only (margin <= 5e-2 * scale_r).
//   CUDA vs transformers (float32 golden logits of the tiny models)
//                                 8e-2 * scale_r; NMSE <= 1e-3; top-1 >= 95%, near ties only.
//   Greedy generation (32 tokens) identical to the CPU backend's; a divergence is accepted only
//   at a near tie of the CPU's logits at that step (printed; none was seen on the H100/H200 for
//   the test models). Batch
//   vs single runs on the CUDA backend: identical.
//
// Without a usable CUDA device (or in a build without CUDA) every test skips with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "hybridgen/engine.h"
#include "runtime/backend.h"
#include "test_support.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using hybridgen::test::read_f32;
using hybridgen::test::read_json;

constexpr double kCpuTol = 2.5e-2;   // CUDA vs CPU backend, both bf16: max normalized error
constexpr double kCpuNmse = 1e-4;    //   and NMSE
constexpr double kGoldenTol = 8e-2;  // CUDA (bf16) vs transformers (float32)
constexpr double kGoldenNmse = 1e-3;
constexpr double kDeepTol = 5e-2;  // CUDA vs CPU for the 30-layer default model (max error;
                                   // the noise floor grows with depth, see above)

std::string data_dir() { return std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models"; }

struct LoadSpec {
  std::string path;
  int max_sequences = 1;
  bool random_weights = false;
  int n_ctx = 0;
  // CPU only: K/V held in bf16 as the CUDA backend's full path holds them (issue 15): the
  // hybrid runtime with window 0 and selection off and the true query, which is exact attention
  // over bf16 K/V (every token offloaded, rounded to bf16 as the CUDA kv_append rounds it).
  bool bf16_kv = false;
};

std::unique_ptr<hybridgen::Engine> load(const LoadSpec& spec, const std::string& device) {
  hybridgen::LoadOptions o;
  o.model_path = spec.path;
  o.device = device;
  o.weight_format = hybridgen::WeightFormat::kBF16;
  o.max_sequences = spec.max_sequences;
  o.random_weights = spec.random_weights;
  o.random_seed = 7;
  o.n_ctx = spec.n_ctx;
  if (spec.bf16_kv) {
    o.attention.policy = "hybrid";
    o.attention.window = 0;
    o.attention.selection = "off";
    o.attention.speculative = false;
  }
  return hybridgen::Engine::load(o);
}

int argmax_row(const std::vector<float>& v, size_t row, int vocab) {
  const auto b = v.begin() + row * vocab;
  return static_cast<int>(std::max_element(b, b + vocab) - b);
}

// The distance of two logits arrays as the checks below measure it: max over rows r of
// max_j |a - b| / scale_r (scale_r from b), and NMSE against b.
struct Distance {
  double max_err = 0, nmse = 0;
};
Distance distance(const std::vector<float>& a, const std::vector<float>& b, int vocab) {
  Distance d;
  double sq = 0, ref = 0;
  for (size_t r = 0; r < b.size() / vocab; ++r) {
    double scale = 1;
    for (int j = 0; j < vocab; ++j) scale = std::max(scale, double(std::fabs(b[r * vocab + j])));
    for (int j = 0; j < vocab; ++j) {
      const double e = double(a[r * vocab + j]) - b[r * vocab + j];
      d.max_err = std::max(d.max_err, std::fabs(e) / scale);
      sq += e * e;
      ref += double(b[r * vocab + j]) * b[r * vocab + j];
    }
  }
  d.nmse = ref > 0 ? sq / ref : sq;
  return d;
}

// The CUDA backend's full path holds K/V in bf16 (issue 15); the CPU backend's full path in
// float32. Two references, two stated tolerances:
//   - the CPU with bf16 K/V (LoadSpec::bf16_kv): the same inputs to attention, so only the
//     summation-order noise above remains: kCpuTol / kCpuNmse unchanged;
//   - the CPU in float32: by the triangle inequality, kCpuTol plus the distance the rounding of
//     K/V makes on the CPU itself (measured per model, printed), and for the NMSE
//     (sqrt(kCpuNmse) + sqrt(NMSE of the rounding))^2.
struct KvTolerance {
  double tol, nmse;
};
KvTolerance bf16_kv_tolerance(const std::vector<float>& cpu_bf16kv, const std::vector<float>& cpu,
                              int vocab, double tol, double nmse, const std::string& what) {
  const Distance d = distance(cpu_bf16kv, cpu, vocab);
  std::printf("[ %s ] cpu bf16 K/V vs cpu float32 K/V: max normalized %.3g, NMSE %.3g\n",
              what.c_str(), d.max_err, d.nmse);
  const double r = std::sqrt(nmse) + std::sqrt(d.nmse);
  return {tol + d.max_err, r * r};
}

// Checks gpu against ref row by row (see the tolerances above); prints a one-line summary.
void expect_logits_close(const std::vector<float>& gpu, const std::vector<float>& ref, int vocab,
                         double tol, double max_nmse, double min_top1, const std::string& what) {
  ASSERT_EQ(gpu.size(), ref.size()) << what;
  ASSERT_EQ(ref.size() % vocab, 0u) << what;
  const size_t rows = ref.size() / vocab;
  double max_err = 0, sq_err = 0, sq_ref = 0;
  size_t bad = 0, top1_same = 0, far_flips = 0;
  for (size_t r = 0; r < rows; ++r) {
    double scale = 1;
    for (int j = 0; j < vocab; ++j) scale = std::max(scale, double(std::fabs(ref[r * vocab + j])));
    for (int j = 0; j < vocab; ++j) {
      const float g = gpu[r * vocab + j], c = ref[r * vocab + j];
      const double err = std::fabs(double(g) - c) / scale;
      if (!std::isfinite(g) || !(err <= tol)) {
        if (bad++ < 5)
          ADD_FAILURE() << what << ": logit " << j << " of row " << r << " is " << g
                        << ", reference " << c << " (normalized error " << err << " > " << tol
                        << ")";
      }
      if (std::isfinite(err)) max_err = std::max(max_err, err);
      sq_err += (double(g) - c) * (double(g) - c);
      sq_ref += double(c) * c;
    }
    const int gt = argmax_row(gpu, r, vocab), ct = argmax_row(ref, r, vocab);
    if (gt == ct) {
      ++top1_same;
    } else {
      const double margin = double(ref[r * vocab + ct]) - ref[r * vocab + gt];
      if (margin > tol * scale && far_flips++ < 5)
        ADD_FAILURE() << what << ": row " << r << " top-1 is " << gt << " but the reference's is "
                      << ct << " by a margin of " << margin << " (not a near tie)";
    }
  }
  const double nmse = sq_ref > 0 ? sq_err / sq_ref : sq_err;
  EXPECT_EQ(bad, 0u) << what;
  EXPECT_EQ(far_flips, 0u) << what;
  EXPECT_LE(nmse, max_nmse) << what << ": NMSE";
  const double frac = rows ? double(top1_same) / rows : 1.0;
  EXPECT_GE(frac, min_top1) << what << ": top-1 agreement " << top1_same << "/" << rows;
  std::printf(
      "[ %s ] max normalized |logit diff| = %.3g (tolerance %.3g), NMSE %.3g "
      "(tolerance %.3g), top-1 agreement %zu/%zu\n",
      what.c_str(), max_err, tol, nmse, max_nmse, top1_same, rows);
}

// Greedy continuations of `prompt` on the CPU backend (want) and the CUDA backend (got):
// identical, or identical up to a step where the CPU's logits make the two choices a near tie
// (margin <= near_tie * scale); the tokens after such a step are not compared.
void expect_same_greedy(hybridgen::Engine& cpu, const std::vector<int32_t>& prompt,
                        const std::vector<int32_t>& want, const std::vector<int32_t>& got,
                        const std::string& what, double near_tie = kCpuTol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t k = 0;
  while (k < got.size() && got[k] == want[k]) ++k;
  if (k == got.size()) return;
  const int vocab = cpu.info().vocab_size;
  std::vector<int32_t> context = prompt;
  context.insert(context.end(), want.begin(), want.begin() + k);
  const std::vector<float> logits = cpu.evaluate(context);
  const float* row = &logits[(context.size() - 1) * size_t(vocab)];
  double scale = 1;
  for (int j = 0; j < vocab; ++j) scale = std::max(scale, double(std::fabs(row[j])));
  const double margin = double(row[want[k]]) - row[got[k]];
  std::printf(
      "[ %s ] greedy: %zu of %zu tokens identical; at step %zu the CPU picks %d, CUDA "
      "%d, CPU margin %.4g (near tie <= %.4g)\n",
      what.c_str(), k, got.size(), k, want[k], got[k], margin, near_tie * scale);
  EXPECT_LE(margin, near_tie * scale)
      << what << ": greedy diverges at step " << k << " without a near tie";
}

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!hybridgen::cuda_available(&why)) GTEST_SKIP() << "no CUDA: " << why;
  }
};

// ---- the tiny HF models ---------------------------------------------------------------------

class CudaTinyModel : public CudaTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(CudaTinyModel, LogitsMatchCpuBackendAndTransformers) {
  const std::string dir = data_dir() + "/" + GetParam();
  const json ref = read_json(dir + "/reference.json");
  const auto tokens = ref["tokens"].get<std::vector<int32_t>>();
  const int vocab = ref["vocab_size"];
  auto cpu = load({dir}, "cpu");
  auto gpu = load({dir}, "cuda");
  const std::vector<float> want = cpu->evaluate(tokens);
  const std::vector<float> got = gpu->evaluate(tokens);
  const std::vector<float> want16 = load({dir, 1, false, 0, true}, "cpu")->evaluate(tokens);
  expect_logits_close(got, want16, vocab, kCpuTol, kCpuNmse, 0.975,
                      GetParam() + " cuda vs cpu with bf16 K/V");
  const KvTolerance kt = bf16_kv_tolerance(want16, want, vocab, kCpuTol, kCpuNmse, GetParam());
  expect_logits_close(got, want, vocab, kt.tol, kt.nmse, 0.975, GetParam() + " cuda vs cpu");
  const std::vector<float> golden = read_f32(dir + "/reference_logits.bin");
  expect_logits_close(got, golden, vocab, kGoldenTol, kGoldenNmse, 0.95,
                      GetParam() + " cuda vs transformers");
}

TEST_P(CudaTinyModel, GreedyGenerationMatchesCpuBackend) {
  const std::string dir = data_dir() + "/" + GetParam();
  const auto tokens = read_json(dir + "/reference.json")["tokens"].get<std::vector<int32_t>>();
  const std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 8);
  hybridgen::GenerateOptions gen;
  gen.n_predict = 32;
  gen.sampling.temperature = 0;
  gen.stop_at_eog = false;
  auto cpu = load({dir}, "cpu");
  auto gpu = load({dir}, "cuda");
  const auto want = cpu->generate(prompt, gen);
  const auto got = gpu->generate(prompt, gen);
  ASSERT_EQ(got.tokens.size(), 32u);
  EXPECT_EQ(got.stop_reason, "length");
  expect_same_greedy(*cpu, prompt, want.tokens, got.tokens, GetParam());
}

// Several sequences of different lengths in one engine (prefill of all prompts in one forward,
// then one decode step for all live sequences): the same tokens as each alone, and as the CPU.
TEST_P(CudaTinyModel, BatchMatchesSingleRunsAndCpu) {
  const std::string dir = data_dir() + "/" + GetParam();
  const std::vector<std::vector<int32_t>> prompts = {
      {5, 17, 200, 3}, {9}, {100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110}};
  hybridgen::GenerateOptions gen;
  gen.n_predict = 20;
  gen.sampling.temperature = 0;
  gen.stop_at_eog = false;
  auto gpu = load({dir, 3}, "cuda");
  auto cpu = load({dir, 3}, "cpu");
  const auto batched = gpu->generate_batch(prompts, gen);
  const auto cpu_batched = cpu->generate_batch(prompts, gen);
  ASSERT_EQ(batched.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto single = gpu->generate(prompts[i], gen);
    EXPECT_EQ(batched[i].tokens.size(), 20u) << "prompt " << i;
    EXPECT_EQ(batched[i].tokens, single.tokens) << "prompt " << i << ": batch vs single (cuda)";
    expect_same_greedy(*cpu, prompts[i], cpu_batched[i].tokens, batched[i].tokens,
                       GetParam() + " batch prompt " + std::to_string(i));
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, CudaTinyModel,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-opt"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

// ---- random weights, real shapes, long prompts ----------------------------------------------

struct RandomModel {
  const char* name;
  const char* config;  // HF config.json
  int n_tokens;        // evaluated positions (the engine feeds them in chunks of 512)
};

void PrintTo(const RandomModel& m, std::ostream* os) { *os << m.name; }

class CudaRandomModel : public CudaTest, public ::testing::WithParamInterface<RandomModel> {};

TEST_P(CudaRandomModel, LogitsAndGreedyMatchCpuBackend) {
  const RandomModel& m = GetParam();
  const fs::path dir = fs::temp_directory_path() / ("hybridgen_cuda_model_" + std::string(m.name));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << m.config;
  const LoadSpec spec{(dir / "config.json").string(), 1, true, m.n_tokens + 64};
  auto cpu = load(spec, "cpu");
  auto gpu = load(spec, "cuda");
  const int vocab = cpu->info().vocab_size;
  std::mt19937 rng(11);
  std::vector<int32_t> tokens(m.n_tokens);
  for (int32_t& t : tokens) t = std::uniform_int_distribution<int32_t>(0, vocab - 1)(rng);
  const std::vector<float> got = gpu->evaluate(tokens), want = cpu->evaluate(tokens);
  LoadSpec spec16 = spec;
  spec16.bf16_kv = true;
  const std::vector<float> want16 = load(spec16, "cpu")->evaluate(tokens);
  expect_logits_close(got, want16, vocab, kCpuTol, kCpuNmse, 0.98,
                      std::string(m.name) + " cuda vs cpu with bf16 K/V");
  const KvTolerance kt = bf16_kv_tolerance(want16, want, vocab, kCpuTol, kCpuNmse, m.name);
  expect_logits_close(got, want, vocab, kt.tol, kt.nmse, 0.98,
                      std::string(m.name) + " cuda vs cpu");

  // Decode after a long prompt: one token per forward at positions past n_tokens - 40.
  hybridgen::GenerateOptions gen;
  gen.n_predict = 32;
  gen.sampling.temperature = 0;
  gen.stop_at_eog = false;
  const std::vector<int32_t> prompt(tokens.begin(), tokens.end() - 40);
  expect_same_greedy(*cpu, prompt, cpu->generate(prompt, gen).tokens,
                     gpu->generate(prompt, gen).tokens, m.name);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaRandomModel,
    ::testing::Values(
        // SmolLM2-135M's layer shape (head_dim 64, 9 heads / 3 KV heads) and vocabulary.
        RandomModel{"llama_hd64_group3",
                    R"({"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9,
                        "num_key_value_heads": 3, "num_hidden_layers": 2,
                        "intermediate_size": 1536, "vocab_size": 49152,
                        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                        "rope_theta": 100000.0, "tie_word_embeddings": true})",
                    700},
        // head_dim 128, 4 heads on 1 KV head, QKV biases; three prefill chunks.
        RandomModel{"qwen2_hd128_group4",
                    R"({"model_type": "qwen2", "hidden_size": 512, "num_attention_heads": 4,
                        "num_key_value_heads": 1, "num_hidden_layers": 2,
                        "intermediate_size": 1024, "vocab_size": 1000,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
                        "rope_theta": 1000000.0})",
                    1100},
        // Sliding window 64, head_dim 32.
        RandomModel{"mistral_window64",
                    R"({"model_type": "mistral", "hidden_size": 256, "num_attention_heads": 8,
                        "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 2,
                        "intermediate_size": 512, "vocab_size": 1000,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                        "sliding_window": 64})",
                    300},
        // OPT: LayerNorm, learned positions, ReLU FFN, biases everywhere.
        RandomModel{"opt_hd64",
                    R"({"model_type": "opt", "hidden_size": 256, "num_attention_heads": 4,
                        "ffn_dim": 512, "num_hidden_layers": 2, "vocab_size": 1000,
                        "max_position_embeddings": 1024})",
                    600}),
    [](const ::testing::TestParamInfo<RandomModel>& info) { return std::string(info.param.name); });

// ---- the default model (SmolLM2-135M-Instruct, Q4_1 GGUF), when fetched ---------------------

std::string default_model_path() {
  if (const char* env = std::getenv("HYBRIDGEN_DEFAULT_MODEL")) return env;
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST_F(CudaTest, DefaultModelMatchesCpuBackend) {
  if (!fs::exists(default_model_path()))
    GTEST_SKIP() << default_model_path() << " not found: run models/fetch-default-model.sh";
  const LoadSpec spec{default_model_path()};
  auto cpu = load(spec, "cpu");
  auto gpu = load(spec, "cuda");
  const int vocab = cpu->info().vocab_size;
  const json ref =
      read_json(std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/smollm2_reference.json");
  const auto tokens = ref["tokens"].get<std::vector<int32_t>>();
  const std::vector<float> got_l = gpu->evaluate(tokens), want_l = cpu->evaluate(tokens);
  LoadSpec spec16 = spec;
  spec16.bf16_kv = true;
  const std::vector<float> want16 = load(spec16, "cpu")->evaluate(tokens);
  expect_logits_close(got_l, want16, vocab, kDeepTol, kCpuNmse, 0.95,
                      "SmolLM2-135M cuda vs cpu with bf16 K/V");
  const KvTolerance kt = bf16_kv_tolerance(want16, want_l, vocab, kDeepTol, kCpuNmse, "SmolLM2");
  expect_logits_close(got_l, want_l, vocab, kt.tol, kt.nmse, 0.95, "SmolLM2-135M cuda vs cpu");

  // Greedy chat: identical, or diverging only where the CPU's two candidates are a near tie.
  std::vector<int32_t> prompt = cpu->tokenize(cpu->apply_chat_template(
      {{"user", "What is the capital of France? Answer in one sentence."}}));
  hybridgen::GenerateOptions gen;
  gen.n_predict = 32;
  gen.sampling.temperature = 0;
  gen.stop_at_eog = false;
  const auto want = cpu->generate(prompt, gen).tokens;
  const auto got = gpu->generate(prompt, gen).tokens;
  expect_same_greedy(*cpu, prompt, want, got, "SmolLM2-135M", kDeepTol);
}

// The CUDA backend reports a clear error for a bad device request, whatever the build.
TEST(CudaAvailability, ReasonIsGivenWhenUnavailable) {
  std::string why;
  const bool ok = hybridgen::cuda_available(&why);
  if (ok) {
    EXPECT_TRUE(why.empty()) << why;
  } else {
    EXPECT_FALSE(why.empty());
    hybridgen::LoadOptions o;
    o.model_path = data_dir() + "/tiny-llama";
    o.device = "cuda";
    try {
      hybridgen::Engine::load(o);
      FAIL() << "expected an error";
    } catch (const hybridgen::Error& e) {
      EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
