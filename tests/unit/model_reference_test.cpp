// The CPU backend's logits against HF transformers (tests/scripts/make_model_golden.py made
// every reference here; the tests only read its outputs).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "hybridgen/engine.h"
#include "test_support.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using hybridgen::test::read_f32;
using hybridgen::test::read_json;

std::string data_dir() { return std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models"; }

class TinyModel : public ::testing::TestWithParam<std::string> {};

// Every element of every position's logits within 1e-4 + 1e-4 |ref| of transformers' float32
// forward on the same (rounded) weights; top-1 identical at every position.
TEST_P(TinyModel, LogitsMatchTransformers) {
  const std::string dir = data_dir() + "/" + GetParam();
  const json ref = read_json(dir + "/reference.json");
  const std::vector<int32_t> tokens = ref["tokens"].get<std::vector<int32_t>>();
  const int vocab = ref["vocab_size"];
  const std::vector<float> expected = read_f32(dir + "/reference_logits.bin");
  ASSERT_EQ(expected.size(), tokens.size() * vocab);

  hybridgen::LoadOptions load;
  load.model_path = dir;
  load.weight_format = hybridgen::WeightFormat::kF32;
  auto engine = hybridgen::Engine::load(load);
  std::vector<float> got = engine->evaluate(tokens);
  ASSERT_EQ(got.size(), expected.size());
  double max_err = 0;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << "NaN at " << i;
    const double err = std::fabs(double(got[i]) - expected[i]);
    max_err = std::max(max_err, err);
    if (err > 1e-4 + 1e-4 * std::fabs(expected[i]) && bad++ < 5)
      ADD_FAILURE() << GetParam() << ": logit " << i % vocab << " at position " << i / vocab
                    << " is " << got[i] << ", transformers says " << expected[i];
  }
  EXPECT_EQ(bad, 0);
  for (size_t t = 0; t < tokens.size(); ++t) {
    auto row = [&](const std::vector<float>& v) { return v.begin() + t * vocab; };
    EXPECT_EQ(std::max_element(row(got), row(got) + vocab) - row(got),
              std::max_element(row(expected), row(expected) + vocab) - row(expected))
        << "top-1 differs at position " << t;
  }
  std::printf("[ %s ] max |logit - transformers| = %.3g over %zu values\n", GetParam().c_str(),
              max_err, got.size());
}

INSTANTIATE_TEST_SUITE_P(Architectures, TinyModel,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-opt"));

// Sequences of different lengths decoded together give exactly what each gives alone.
TEST(Batch, IndependentSequencesMatchSingleRuns) {
  hybridgen::LoadOptions load;
  load.model_path = data_dir() + "/tiny-llama";
  load.max_sequences = 3;
  auto engine = hybridgen::Engine::load(load);
  const std::vector<std::vector<int32_t>> prompts = {
      {5, 17, 200, 3}, {9}, {100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110}};
  hybridgen::GenerateOptions gen;
  gen.n_predict = 12;
  gen.sampling.temperature = 0;
  auto batched = engine->generate_batch(prompts, gen);
  ASSERT_EQ(batched.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto single = engine->generate(prompts[i], gen);
    EXPECT_EQ(batched[i].tokens, single.tokens) << "prompt " << i;
    EXPECT_EQ(batched[i].tokens.size(), 12u);
    EXPECT_EQ(batched[i].stop_reason, "length");
  }
}

// Greedy generation is the argmax of teacher-forced logits at each step.
TEST(Generation, GreedyFollowsEvaluatedLogits) {
  hybridgen::LoadOptions load;
  load.model_path = data_dir() + "/tiny-qwen2";
  auto engine = hybridgen::Engine::load(load);
  std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  hybridgen::GenerateOptions gen;
  gen.n_predict = 8;
  gen.sampling.temperature = 0;
  auto out = engine->generate(prompt, gen);
  ASSERT_EQ(out.tokens.size(), 8u);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), out.tokens.begin(), out.tokens.end() - 1);
  std::vector<float> logits = engine->evaluate(all);
  const int vocab = engine->info().vocab_size;
  for (size_t k = 0; k < out.tokens.size(); ++k) {
    const float* row = &logits[(prompt.size() - 1 + k) * vocab];
    EXPECT_EQ(std::max_element(row, row + vocab) - row, out.tokens[k]) << "step " << k;
  }
}

TEST(Generation, PromptLongerThanContextIsAClearError) {
  hybridgen::LoadOptions load;
  load.model_path = data_dir() + "/tiny-llama";
  load.n_ctx = 16;
  auto engine = hybridgen::Engine::load(load);
  std::vector<int32_t> prompt(20, 7);
  try {
    engine->generate(prompt, {});
    FAIL() << "expected an error";
  } catch (const hybridgen::Error& e) {
    EXPECT_NE(std::string(e.what()).find("context size is 16"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("-c"), std::string::npos) << e.what();
  }
  // The engine is still usable after the error.
  hybridgen::GenerateOptions gen;
  gen.n_predict = 4;
  EXPECT_EQ(engine->generate(std::vector<int32_t>{1, 2}, gen).tokens.size(), 4u);
}

TEST(Generation, StopsWhenTheContextIsFull) {
  hybridgen::LoadOptions load;
  load.model_path = data_dir() + "/tiny-llama";
  load.n_ctx = 10;
  auto engine = hybridgen::Engine::load(load);
  hybridgen::GenerateOptions gen;
  gen.n_predict = -1;
  gen.stop_at_eog = false;
  auto out = engine->generate(std::vector<int32_t>{1, 2, 3}, gen);
  EXPECT_EQ(out.stop_reason, "context");
  EXPECT_EQ(out.tokens.size(), 8u);  // 3 prompt + 7 decoded fill 10 slots; the 8th is sampled
}

TEST(Loading, UnknownArchitectureNamesTheFile) {
  const fs::path dir = fs::temp_directory_path() / "hybridgen_unknown_arch";
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({"model_type": "gpt_neox", "vocab_size": 10})";
  hybridgen::LoadOptions load;
  load.model_path = dir.string();
  try {
    hybridgen::Engine::load(load);
    FAIL() << "expected an error";
  } catch (const hybridgen::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("gpt_neox"), std::string::npos) << msg;
  }
}

TEST(Loading, MissingTensorNamesTheTensor) {
  // A config whose layer count exceeds the checkpoint's: layer 2's tensors are missing.
  const fs::path src = data_dir() + "/tiny-llama";
  const fs::path dir = fs::temp_directory_path() / "hybridgen_missing_tensor";
  fs::create_directories(dir);
  fs::copy_file(src / "model.safetensors", dir / "model.safetensors",
                fs::copy_options::overwrite_existing);
  json config = read_json((src / "config.json").string());
  config["num_hidden_layers"] = 3;
  std::ofstream(dir / "config.json") << config.dump();
  hybridgen::LoadOptions load;
  load.model_path = dir.string();
  try {
    hybridgen::Engine::load(load);
    FAIL() << "expected an error";
  } catch (const hybridgen::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.2."), std::string::npos) << e.what();
  }
}

TEST(Loading, PresetsLoadWithRandomWeights) {
  // Every preset config parses; a small one runs with random weights.
  for (const auto& entry :
       fs::directory_iterator(std::string(HYBRIDGEN_SOURCE_DIR) + "/models/presets")) {
    SCOPED_TRACE(entry.path().string());
    EXPECT_TRUE(fs::exists(entry.path() / "config.json"));
  }
  hybridgen::LoadOptions load;
  load.model_path = data_dir() + "/tiny-opt/config.json";
  load.random_weights = true;
  load.random_seed = 5;
  auto a = hybridgen::Engine::load(load);
  auto b = hybridgen::Engine::load(load);
  std::vector<int32_t> toks = {3, 4, 5};
  EXPECT_EQ(a->evaluate(toks), b->evaluate(toks)) << "random weights must be seeded";
}

}  // namespace
