// The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against HF transformers loading the same
// GGUF (tests/scripts/make_model_golden.py), and greedy chat. Skips if the model is not fetched
// (models/fetch-default-model.sh; the README's test command fetches it).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "hybridgen/engine.h"

using nlohmann::json;

namespace {

std::string model_path() {
  if (const char* env = std::getenv("HYBRIDGEN_DEFAULT_MODEL")) return env;
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
}

class DefaultModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(model_path())) return;
    hybridgen::LoadOptions load;
    load.model_path = model_path();
    load.weight_format = hybridgen::WeightFormat::kF32;
    engine_ = hybridgen::Engine::load(load).release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }
  void SetUp() override {
    if (!engine_) GTEST_SKIP() << model_path() << " not found: run models/fetch-default-model.sh";
  }
  static hybridgen::Engine* engine_;
};
hybridgen::Engine* DefaultModel::engine_ = nullptr;

// Tolerance: transformers dequantizes the same Q4_1/Q8_0 blocks to float32 and runs in float32;
// only summation order differs: measured max error 6.7e-5 on logits of magnitude ~10-30.
constexpr double kLogitTolerance = 2e-3;

TEST_F(DefaultModel, LogitsMatchTransformersOnTheGguf) {
  std::ifstream in(std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/smollm2_reference.json");
  ASSERT_TRUE(in);
  const json ref = json::parse(in);
  const auto tokens = ref["tokens"].get<std::vector<int32_t>>();
  ASSERT_GE(tokens.size(), 200u);
  const int vocab = engine_->info().vocab_size;
  const std::vector<float> logits = engine_->evaluate(tokens);

  double max_err = 0;
  int top1_same = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const float* row = &logits[t * vocab];
    const auto ids = ref["top_ids"][t].get<std::vector<int>>();
    const auto vals = ref["top_logits"][t].get<std::vector<double>>();
    for (size_t k = 0; k < ids.size(); ++k) {
      ASSERT_FALSE(std::isnan(row[ids[k]]));
      const double err = std::fabs(row[ids[k]] - vals[k]);
      max_err = std::max(max_err, err);
      EXPECT_LE(err, kLogitTolerance) << "position " << t << " token " << ids[k];
    }
    const int ours = std::max_element(row, row + vocab) - row;
    if (ours == ids[0]) {
      ++top1_same;
    } else {
      // Only a near-tie in the reference may flip the argmax.
      EXPECT_LE(vals[0] - vals[1], 2 * kLogitTolerance) << "top-1 differs at position " << t;
    }
    double lse = 0, mx = *std::max_element(row, row + vocab);
    for (int i = 0; i < vocab; ++i) lse += std::exp(double(row[i]) - mx);
    EXPECT_NEAR(mx + std::log(lse), ref["logsumexp"][t].get<double>(), kLogitTolerance);
  }
  const int stride = ref["stride"];
  for (size_t r = 0; r < ref["strided_rows_at"].size(); ++r) {
    const int t = ref["strided_rows_at"][r];
    const auto vals = ref["strided_rows"][r].get<std::vector<double>>();
    for (size_t k = 0; k < vals.size(); ++k)
      EXPECT_NEAR(logits[size_t(t) * vocab + k * stride], vals[k], kLogitTolerance + 1e-4)
          << "position " << t << " token " << k * stride;
  }
  std::printf(
      "[ smollm2 ] %zu positions: top-1 identical at %d, max |logit error| on the "
      "reference's top-20 = %.4g (tolerance %.3g)\n",
      tokens.size(), top1_same, max_err, kLogitTolerance);
}

// bf16 weights (2x less to read per token) round the dequantized Q4_1 values and the GEMM
// inputs to bf16: measured against the same float32 reference, stated, not hidden.
TEST_F(DefaultModel, Bf16WeightsStayCloseToTransformers) {
  std::ifstream in(std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/smollm2_reference.json");
  ASSERT_TRUE(in);
  const json ref = json::parse(in);
  const auto tokens = ref["tokens"].get<std::vector<int32_t>>();
  hybridgen::LoadOptions load;
  load.model_path = model_path();
  load.weight_format = hybridgen::WeightFormat::kBF16;
  auto bf16 = hybridgen::Engine::load(load);
  const int vocab = bf16->info().vocab_size;
  const std::vector<float> logits = bf16->evaluate(tokens);
  int top1_same = 0;
  double max_err = 0, sum_err = 0;
  int n_err = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const float* row = &logits[t * vocab];
    const auto ids = ref["top_ids"][t].get<std::vector<int>>();
    const auto vals = ref["top_logits"][t].get<std::vector<double>>();
    for (size_t k = 0; k < ids.size(); ++k) {
      const double err = std::fabs(row[ids[k]] - vals[k]);
      max_err = std::max(max_err, err);
      sum_err += err;
      ++n_err;
    }
    top1_same += (std::max_element(row, row + vocab) - row) == ids[0];
  }
  std::printf(
      "[ smollm2 bf16 ] top-1 identical at %d of %zu positions; |logit error| on the "
      "reference's top-20: mean %.3g, max %.3g\n",
      top1_same, tokens.size(), sum_err / n_err, max_err);
  EXPECT_GE(top1_same, static_cast<int>(0.95 * tokens.size()));
  EXPECT_LE(sum_err / n_err, 0.1);
}

TEST_F(DefaultModel, GreedyChatKnowsTheCapitalOfFrance) {
  const std::string prompt =
      engine_->apply_chat_template({{"user", "What is the capital of France?"}}, true);
  hybridgen::GenerateOptions gen;
  gen.n_predict = 40;
  gen.sampling.temperature = 0;
  std::string streamed;
  auto out =
      engine_->generate(engine_->tokenize(prompt, false, true), gen, [&](std::string_view t) {
        streamed += t;
        return true;
      });
  std::printf("[ smollm2 ] answer: %s\n", out.text.c_str());
  EXPECT_NE(out.text.find("Paris"), std::string::npos) << out.text;
  EXPECT_EQ(streamed, out.text);
}

}  // namespace
