// The inputs the fuzzers (tests/fuzz/) found crashing the library, replayed through the public
// entry points in every build (the ASan+UBSan CI build included): each must now end in a clear
// hybridgen::Error or load safely.
#include <gtest/gtest.h>

#include <string>

#include "hybridgen/error.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace hybridgen {
namespace {

std::string crash(const std::string& name) {
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/tests/fuzz/crashes/" + name;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(FuzzRegression, DeeplyNestedJsonIsRefused) {
  EXPECT_NE(error_of([] {
              parse_hf_config(crash("model_config/stack-overflow-dump-deep-field.json"));
            }).find("nested deeper"),
            std::string::npos);
  EXPECT_NE(
      error_of([] {
        SafetensorsFile::open(crash("safetensors/stack-overflow-dump-deep-shape.safetensors"));
      }).find("nested deeper"),
      std::string::npos);
  EXPECT_NE(error_of([] {
              Tokenizer::from_hf_files(
                  crash("tokenizer_json/stack-overflow-copy-deep-normalizer.json"), "");
            }).find("nested deeper"),
            std::string::npos);
}

TEST(FuzzRegression, HugePositionCountIsRefused) {
  const std::string msg = error_of(
      [] { parse_hf_config(crash("model_config/ubsan-n_params-opt-max-positions.json")); });
  EXPECT_NE(msg.find("implausibly large"), std::string::npos) << msg;
}

TEST(FuzzRegression, SparseTokenIdIsRefused) {
  const std::string msg = error_of(
      [] { Tokenizer::from_hf_files(crash("tokenizer_json/oom-sparse-vocab-id.json"), ""); });
  EXPECT_NE(msg.find("expected a token id"), std::string::npos) << msg;
}

TEST(FuzzRegression, ZeroDimensionTensorHasNoElements) {
  std::unique_ptr<GgufFile> g;
  const std::string msg =
      error_of([&] { g = GgufFile::open(crash("gguf/ubsan-numel-overflow-zero-dim.gguf")); });
  if (g)
    for (const TensorInfo& t : g->tensors()) EXPECT_EQ(t.numel(), 0) << t.name;
  else
    EXPECT_FALSE(msg.empty());
}

TEST(FuzzRegression, ChatMessageEndingInATruncatedSequenceRendersSafely) {
  // The Llama-3 template strips message content; a content ending in a lone lead byte used
  // to be read past its end.
  const std::string dir = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/tokenizers/llama3";
  auto tok = Tokenizer::from_hf_files(dir + "/tokenizer.json", dir + "/tokenizer_config.json");
  ASSERT_TRUE(tok->has_chat_template());
  const std::string out = tok->apply_chat_template({{"user", std::string(30, 'a') + "\xf0"}}, true);
  EXPECT_NE(out.find(std::string(30, 'a')), std::string::npos);
}

}  // namespace
}  // namespace hybridgen
