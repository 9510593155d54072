// The token embedding kept as stored: rows looked up from GGUF blocks against gguf-py's
// dequantization of the same blocks (tests/data/quant/quant_kinds.*, written by
// tests/scripts/make_dequant_golden.py), the default model's table, and bad shapes.
#include "model/embedding_table.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "hybridgen/error.h"
#include "model/gguf.h"
#include "model/model_loader.h"
#include "test_support.h"

namespace hybridgen {
namespace {

const std::string kQuantDir = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/quant";

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

// Every block type of llama.cpp's presets, as a table of one-block rows and of two-block rows:
// each looked-up row (ids out of order, repeated, first and last) is gguf-py's dequantization
// of that row's blocks, bit for bit.
TEST(EmbeddingTable, RowsOfEveryBlockTypeMatchGgufPyBitExact) {
  const nlohmann::json manifest = test::read_json(kQuantDir + "/quant_kinds.json");
  const std::vector<float> values = test::read_f32(kQuantDir + "/quant_kinds.f32");
  auto file = GgufFile::open(kQuantDir + "/quant_kinds.gguf");
  ASSERT_EQ(manifest["tensors"].size(), 12u);
  for (const auto& t : manifest["tensors"]) {
    const std::string name = t["name"];
    const TensorInfo* info = file->find(name);
    ASSERT_NE(info, nullptr) << name;
    const int64_t n = t["count"], bs = dtype_block_size(info->dtype);
    const size_t off = t["offset"];
    for (int64_t blocks_per_row : {1, 2}) {
      SCOPED_TRACE(name + ", " + std::to_string(blocks_per_row) + " blocks per row");
      const int64_t cols = bs * blocks_per_row, rows = n / cols;
      ASSERT_EQ(rows * cols, n);
      const EmbeddingTable table = EmbeddingTable::from_blocks(
          info->dtype, rows, cols, std::vector<uint8_t>(info->data, info->data + info->nbytes),
          name);
      EXPECT_EQ(table.dtype(), info->dtype);
      EXPECT_EQ(table.bytes(), info->nbytes);  // as stored, no float copy
      std::vector<int32_t> ids;
      for (int64_t r = rows - 1; r >= 0; r -= 3) ids.push_back(int32_t(r));
      ids.push_back(0);
      ids.push_back(int32_t(rows - 1));
      ids.push_back(int32_t(rows / 2));
      ids.push_back(int32_t(rows / 2));
      std::vector<float> out(ids.size() * cols, -12345.f);
      table.lookup(ids.data(), int(ids.size()), out.data());
      int mismatches = 0;
      for (size_t i = 0; i < ids.size(); ++i)
        for (int64_t j = 0; j < cols; ++j) {
          const float want = values[off + size_t(ids[i]) * cols + j];
          const float got = out[i * cols + j];
          if (bits(got) != bits(want) && ++mismatches <= 3)
            ADD_FAILURE() << "row " << ids[i] << " [" << j << "] = " << got << ", gguf-py " << want;
        }
      EXPECT_EQ(mismatches, 0);
      // The whole table as float32 (a backend's copy): the same values.
      const std::vector<float> all = table.to_f32();
      ASSERT_EQ(all.size(), size_t(n));
      EXPECT_EQ(std::memcmp(all.data(), values.data() + off, n * sizeof(float)), 0);
    }
  }
}

TEST(EmbeddingTable, Float32RowsAreCopied) {
  std::vector<float> data(5 * 3);
  for (size_t i = 0; i < data.size(); ++i) data[i] = float(i) - 7.5f;
  const EmbeddingTable table = EmbeddingTable::from_f32(5, 3, data);
  EXPECT_EQ(table.dtype(), DType::kF32);
  EXPECT_EQ(table.bytes(), data.size() * sizeof(float));
  const int32_t ids[] = {4, 0, 2, 4};
  std::vector<float> out(4 * 3);
  table.lookup(ids, 4, out.data());
  for (int t = 0; t < 4; ++t)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(out[t * 3 + j], data[ids[t] * 3 + j]);
}

TEST(EmbeddingTable, BadShapesNameTheTensor) {
  // 40 elements per row are not whole Q8_0 blocks of 32.
  try {
    EmbeddingTable::from_blocks(DType::kQ8_0, 2, 40, std::vector<uint8_t>(2 * 34 * 2),
                                "m.gguf: tensor 'token_embd.weight'");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_embd.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Q8_0 blocks of 32"), std::string::npos) << e.what();
  }
  // One byte short of 3 rows of one Q4_K block (144 bytes each).
  EXPECT_THROW(
      EmbeddingTable::from_blocks(DType::kQ4_K, 3, 256, std::vector<uint8_t>(3 * 144 - 1), "t"),
      Error);
}

// The default model (SmolLM2-135M Q4_1 GGUF): its table stays in the file's type in every
// weight format (Q8_0: 30 MB, not the 113 MB of a float32 table).
TEST(EmbeddingTable, DefaultModelKeepsItsTableAsStored) {
  const std::string path =
      std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::ifstream(path).good())
    GTEST_SKIP() << "no default model (models/fetch-default-model.sh)";
  auto file = GgufFile::open(path);
  const TensorInfo* info = file->find("token_embd.weight");
  ASSERT_NE(info, nullptr);
  ASSERT_NE(dtype_block_size(info->dtype), 1) << "the default model's table is not quantized";
  for (WeightChoice choice : {WeightChoice::kNative, WeightChoice::kBF16, WeightChoice::kF32}) {
    const LoadedModel m = load_model(path, false, 0, choice);
    const EmbeddingTable& table = m.weights.token_embedding;
    EXPECT_EQ(table.dtype(), info->dtype);
    EXPECT_EQ(table.bytes(), info->nbytes);
    EXPECT_LT(table.bytes(), uint64_t(table.rows()) * table.cols() * sizeof(float) / 3);
  }
}

}  // namespace
}  // namespace hybridgen
