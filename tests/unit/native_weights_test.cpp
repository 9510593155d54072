// --weight-format native: GGUF blocks kept as stored.
//  * Linear over quantized parts (mixed types, as Q|K|V of a Q4_K_M file): the decode GEMV
//    against the float32 GEMV on the same weights dequantized, and the prefill panels against
//    oneDNN's f32 GEMM on them.
//  * The default model's logits, every position a decode step, against llama.cpp's on the same
//    GGUF (tests/scripts/make_llama_cpp_logits_golden.py -> tests/data/models/
//    smollm2_llama_cpp.json): llama.cpp quantizes activations per block to Q8 as we do, so its
//    rounding is the reference here. Skips if the model is not fetched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "cpu/gemv.h"
#include "cpu/linear.h"
#include "cpu/quant_gemv.h"
#include "hybridgen/engine.h"
#include "model/dequant.h"

using nlohmann::json;
using namespace hybridgen;

namespace {

std::string model_path() {
  if (const char* env = std::getenv("HYBRIDGEN_DEFAULT_MODEL")) return env;
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// Random blocks with moderate f16 scales (the kernels' extremes are quant_gemv_test's).
std::vector<uint8_t> blocks(DType t, int rows, int in, std::mt19937& rng) {
  const int64_t bb = dtype_block_bytes(t), nb = int64_t(rows) * in / dtype_block_size(t);
  std::vector<uint8_t> w(nb * bb);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> mag(-0.02f, 0.02f);
  for (auto& v : w) v = static_cast<uint8_t>(byte(rng));
  const std::vector<int> f16s =
      t == DType::kQ6_K   ? std::vector<int>{208}
      : t == DType::kQ3_K ? std::vector<int>{108}
      : t == DType::kQ2_K ? std::vector<int>{80, 82}
      : t == DType::kQ4_1 || t == DType::kQ4_K || t == DType::kQ5_1 || t == DType::kQ5_K
          ? std::vector<int>{0, 2}
          : std::vector<int>{0};
  for (int64_t b = 0; b < nb; ++b)
    for (int off : f16s) {
      const uint16_t h = f32_to_f16(mag(rng));
      std::memcpy(w.data() + b * bb + off, &h, 2);
    }
  return w;
}

// A Linear of quantized parts `spec` (rows per part; equal neighbouring types merge into
// `merged_parts`) against the float32 Linear on the same weights dequantized: decode (m <= 4,
// the quantized GEMV) and prefill (m = 9, dequantized panels) at in = 512.
void check_mixed_linear(const std::vector<std::pair<DType, int>>& spec, size_t merged_parts,
                        uint32_t seed) {
  std::mt19937 rng(seed);
  const int in = 512;
  std::vector<cpu::QuantPart> parts;
  std::vector<std::vector<float>> biases;
  std::vector<float> W;  // [out, in] dequantized
  int out = 0;
  for (auto [t, rows] : spec) {
    cpu::QuantPart p{t, rows, blocks(t, rows, in, rng)};
    std::vector<float> deq(size_t(rows) * in);
    dequantize(t, p.blocks.data(), deq.data(), int64_t(rows) * in);
    W.insert(W.end(), deq.begin(), deq.end());
    biases.push_back(std::vector<float>(rows, 0.125f * float(parts.size())));
    parts.push_back(std::move(p));
    out += rows;
  }
  std::string names;
  for (auto [t, rows] : spec) {
    if (!names.empty()) names += ' ';
    names += dtype_name(t);
  }
  std::vector<float> bias;
  for (auto& b : biases) bias.insert(bias.end(), b.begin(), b.end());
  cpu::Linear q = cpu::concat_quant_rows(in, std::move(parts), std::move(biases));
  ASSERT_EQ(q.type(), cpu::WeightType::kQuant);
  ASSERT_EQ(q.out_features(), out);
  EXPECT_EQ(q.quant_parts().size(), merged_parts);
  cpu::Linear f(out, in, W, bias, cpu::WeightType::kF32);
  for (int r = 0; r < out; r += 7)  // weight_row dequantizes the right part
    EXPECT_EQ(q.weight_row(r), f.weight_row(r)) << "row " << r;

  std::normal_distribution<float> nd(0.f, 1.f);
  for (int m : {1, 3, 9}) {
    std::vector<float> x(size_t(m) * in);
    for (float& v : x) v = nd(rng);
    std::vector<float> yq(size_t(m) * out), yf(size_t(m) * out);
    q.forward(x.data(), yq.data(), m);
    f.forward(x.data(), yf.data(), m);
    double max_rel = 0;
    for (int r = 0; r < m; ++r)
      for (int o = 0; o < out; ++o) {
        double scale = 0;  // sum |w x|: the size of the sum
        for (int i = 0; i < in; ++i)
          scale += std::fabs(W[size_t(o) * in + i] * x[size_t(r) * in + i]);
        const double err = std::fabs(yq[size_t(r) * out + o] - yf[size_t(r) * out + o]);
        max_rel = std::max(max_rel, err / scale);
        // m <= 4: the activations are rounded to 8 bits per block (relative step 1/254 of the
        // block's largest value), so the decode GEMV differs from float weights by up to ~1% of
        // sum |w x|; the prefill panels are the same float GEMM on the same weights.
        EXPECT_LE(err, (m <= cpu::kGemvMaxRows ? 1e-2 : 1e-5) * scale + 1e-6)
            << "m " << m << " y[" << r << "," << o << "]";
      }
    std::printf("[ native linear ] %s m %d: max |native - f32| / sum|w x| = %.3g\n", names.c_str(),
                m, max_rel);
  }
  // forward_rows: the first rows only, from the GEMV.
  std::vector<float> x(in), y_rows(130), y_all(out);
  for (float& v : x) v = nd(rng);
  q.forward_rows(x.data(), y_rows.data(), 1, 130);
  q.forward(x.data(), y_all.data(), 1);
  for (int o = 0; o < 130; ++o) EXPECT_EQ(y_rows[o], y_all[o]) << o;
}

}  // namespace

TEST(NativeLinear, MixedPartsMatchFloatWeights) {
  // As Q|K|V of a Q4_K_M file, and the block-32 types; the two Q4_K parts merge.
  check_mixed_linear({{DType::kQ4_K, 96},
                      {DType::kQ4_K, 32},
                      {DType::kQ6_K, 32},
                      {DType::kQ8_0, 40},
                      {DType::kQ4_1, 24},
                      {DType::kQ4_0, 8}},
                     5, 3);
}

TEST(NativeLinear, NewerTypesMixedMatchFloatWeights) {
  // Q5_K_M / IQ4_XS / Q3_K_M / Q2_K style mixes and the other block-32 types in one Linear.
  check_mixed_linear({{DType::kQ5_K, 72},
                      {DType::kQ6_K, 16},
                      {DType::kIQ4_XS, 40},
                      {DType::kQ3_K, 24},
                      {DType::kQ2_K, 24},
                      {DType::kQ5_0, 16},
                      {DType::kQ5_1, 16},
                      {DType::kIQ4_NL, 24}},
                     8, 5);
}


// Measured (see docs/quantization.md) and bounded with a margin.
constexpr double kMaxLogitDiff = 2.0, kMaxMeanDiff = 0.25;

TEST(NativeModel, LogitsMatchLlamaCppDecode) {
  if (!std::filesystem::exists(model_path()))
    GTEST_SKIP() << model_path() << " not found: run models/fetch-default-model.sh";
  std::ifstream in(std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/smollm2_llama_cpp.json");
  ASSERT_TRUE(in);
  const json ref = json::parse(in);
  const auto tokens = ref["tokens"].get<std::vector<int32_t>>();
  ASSERT_GE(tokens.size(), 300u);
  // Native (asserted); optionally f32 weights beside it for scale.
  // HYBRIDGEN_COMPARE_F32=1 adds the f32 pass (slow: 538 MB of weights per step) and our two
  // paths against each other; the figures are in docs/quantization.md.
  std::vector<float> native_logits;
  std::vector<WeightFormat> formats{WeightFormat::kNative};
  if (std::getenv("HYBRIDGEN_COMPARE_F32")) formats.push_back(WeightFormat::kF32);
  for (WeightFormat wf : formats) {
    const bool native = wf == WeightFormat::kNative;
    LoadOptions load;
    load.model_path = model_path();
    load.weight_format = wf;
    auto engine = Engine::load(load);
    if (native) {
      ASSERT_EQ(engine->info().weight_format, "native");
    }
    const int vocab = engine->info().vocab_size;
    // prefill_tokens 0: every position a decode step (the quantized GEMV), as llama.cpp ran.
    const std::vector<float> logits = engine->evaluate(tokens, 0);
    if (native) native_logits = logits;
    int top1_same = 0, bad = 0;
    double max_err = 0, sum_err = 0;
    int n = 0;
    for (size_t t = 0; t < tokens.size(); ++t) {
      const float* row = &logits[t * vocab];
      const auto ids = ref["top_ids"][t].get<std::vector<int>>();
      const auto vals = ref["top_logits"][t].get<std::vector<double>>();
      for (size_t k = 0; k < ids.size(); ++k) {
        const double err = std::fabs(row[ids[k]] - vals[k]);
        max_err = std::max(max_err, err);
        sum_err += err;
        ++n;
        if (native && err > kMaxLogitDiff && ++bad <= 5)
          ADD_FAILURE() << "position " << t << " token " << ids[k] << ": |diff| " << err;
      }
      const int ours = std::max_element(row, row + vocab) - row;
      if (ours == ids[0]) {
        ++top1_same;
      } else if (native) {
        EXPECT_LE(vals[0] - vals[1], kMaxLogitDiff)
            << "top-1 differs at position " << t << " (not a near-tie)";
      }
    }
    std::printf(
        "[ %s vs llama.cpp ] %zu positions: top-1 identical at %d, |logit difference| on "
        "llama.cpp's top-20: mean %.3g, max %.3g\n",
        native ? "native" : "f32", tokens.size(), top1_same, sum_err / n, max_err);
    if (!native) {  // our own two paths, on llama.cpp's top-20
      double m2 = 0, s2 = 0;
      int top2 = 0;
      for (size_t t = 0; t < tokens.size(); ++t) {
        const float* a = &logits[t * vocab];
        const float* b = &native_logits[t * vocab];
        for (int id : ref["top_ids"][t].get<std::vector<int>>()) {
          m2 = std::max(m2, double(std::fabs(a[id] - b[id])));
          s2 += std::fabs(a[id] - b[id]);
        }
        top2 += (std::max_element(a, a + vocab) - a) == (std::max_element(b, b + vocab) - b);
      }
      std::printf(
          "[ native vs f32 (ours) ] top-1 identical at %d, |logit difference|: mean %.3g, max "
          "%.3g\n",
          top2, s2 / n, m2);
    }
    if (native) {
      EXPECT_EQ(bad, 0);
      EXPECT_GE(top1_same, static_cast<int>(0.97 * tokens.size()));
      EXPECT_LE(sum_err / n, kMaxMeanDiff);
    }
  }
}
