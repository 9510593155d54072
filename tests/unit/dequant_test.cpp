// Dequantization and f16/bf16 conversion, checked against values computed by gguf-py and numpy
// (tests/scripts/make_dequant_golden.py writes tests/data/quant/quant_golden.*).
#include "model/dequant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "hybridgen/error.h"
#include "model/gguf.h"
#include "model/tensor.h"

namespace hybridgen {
namespace {

const std::string kQuantDir = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/quant";

nlohmann::json load_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return nlohmann::json::parse(in);
}

std::vector<float> load_f32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

struct Golden {
  nlohmann::json manifest = load_json(kQuantDir + "/quant_golden.json");
  std::vector<float> values = load_f32(kQuantDir + "/quant_golden.f32");
};

TEST(DtypeTest, BlockSizesMatchGgml) {
  // ggml's type traits (gguf-py GGML_QUANT_SIZES): (block size, type size).
  EXPECT_EQ(dtype_block_size(DType::kQ4_0), 32);
  EXPECT_EQ(dtype_block_bytes(DType::kQ4_0), 18);
  EXPECT_EQ(dtype_block_size(DType::kQ4_1), 32);
  EXPECT_EQ(dtype_block_bytes(DType::kQ4_1), 20);
  EXPECT_EQ(dtype_block_size(DType::kQ8_0), 32);
  EXPECT_EQ(dtype_block_bytes(DType::kQ8_0), 34);
  EXPECT_EQ(dtype_block_size(DType::kQ4_K), 256);
  EXPECT_EQ(dtype_block_bytes(DType::kQ4_K), 144);
  EXPECT_EQ(dtype_block_size(DType::kQ6_K), 256);
  EXPECT_EQ(dtype_block_bytes(DType::kQ6_K), 210);
  EXPECT_EQ(dtype_block_bytes(DType::kF32), 4);
  EXPECT_EQ(dtype_block_bytes(DType::kF16), 2);
  EXPECT_EQ(dtype_block_bytes(DType::kBF16), 2);
  EXPECT_EQ(dtype_block_bytes(DType::kI32), 4);
  EXPECT_EQ(dtype_block_bytes(DType::kI64), 8);
  EXPECT_EQ(dtype_block_size(DType::kQ5_0), 32);
  EXPECT_EQ(dtype_block_bytes(DType::kQ5_0), 22);
  EXPECT_EQ(dtype_block_size(DType::kQ5_1), 32);
  EXPECT_EQ(dtype_block_bytes(DType::kQ5_1), 24);
  EXPECT_EQ(dtype_block_size(DType::kQ2_K), 256);
  EXPECT_EQ(dtype_block_bytes(DType::kQ2_K), 84);
  EXPECT_EQ(dtype_block_size(DType::kQ3_K), 256);
  EXPECT_EQ(dtype_block_bytes(DType::kQ3_K), 110);
  EXPECT_EQ(dtype_block_size(DType::kQ5_K), 256);
  EXPECT_EQ(dtype_block_bytes(DType::kQ5_K), 176);
  EXPECT_EQ(dtype_block_size(DType::kIQ4_NL), 32);
  EXPECT_EQ(dtype_block_bytes(DType::kIQ4_NL), 18);
  EXPECT_EQ(dtype_block_size(DType::kIQ4_XS), 256);
  EXPECT_EQ(dtype_block_bytes(DType::kIQ4_XS), 136);
  EXPECT_EQ(dtype_name(DType::kQ4_K), "Q4_K");
  EXPECT_EQ(dtype_name(DType::kIQ4_XS), "IQ4_XS");
  EXPECT_EQ(dtype_name(DType::kBF16), "BF16");
}

// Every tensor of the golden file, dequantized, equals gguf-py's dequantization bit for bit.
TEST(DequantTest, MatchesGgufPyBitExact) {
  Golden g;
  auto file = GgufFile::open(kQuantDir + "/quant_golden.gguf");
  ASSERT_EQ(g.manifest["tensors"].size(), 10u);
  for (const auto& t : g.manifest["tensors"]) {
    const std::string name = t["name"];
    SCOPED_TRACE(name);
    const TensorInfo* info = file->find(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(dtype_name(info->dtype), t["type"].get<std::string>());
    const int64_t n = t["count"];
    ASSERT_EQ(info->numel(), n);
    ASSERT_EQ(info->nbytes, t["nbytes"].get<uint64_t>());
    std::vector<float> out(static_cast<size_t>(n), -12345.0f);
    dequantize(info->dtype, info->data, out.data(), n);
    const size_t off = t["offset"];
    ASSERT_LE(off + static_cast<size_t>(n), g.values.size());
    int mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float want = g.values[off + static_cast<size_t>(i)];
      if (bits(out[i]) != bits(want)) {
        if (++mismatches <= 5) {
          ADD_FAILURE() << name << "[" << i << "] = " << out[i] << " (0x" << std::hex
                        << bits(out[i]) << "), gguf-py: " << want << " (0x" << bits(want) << ")"
                        << std::dec;
        }
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

// Every quantized type of llama.cpp's common presets (quant_kinds.gguf: random blocks with f16
// scales and mins at +-65504, 2^-24, 0 and random finite bit patterns, sub-block scales all at
// their largest or zero) dequantizes to gguf-py's values bit for bit.
TEST(DequantTest, EveryQuantKindMatchesGgufPyBitExact) {
  const nlohmann::json manifest = load_json(kQuantDir + "/quant_kinds.json");
  const std::vector<float> values = load_f32(kQuantDir + "/quant_kinds.f32");
  auto file = GgufFile::open(kQuantDir + "/quant_kinds.gguf");
  ASSERT_EQ(manifest["tensors"].size(), 12u);
  ASSERT_EQ(file->tensors().size(), 12u);
  for (const auto& t : manifest["tensors"]) {
    const std::string name = t["name"];
    SCOPED_TRACE(name);
    const TensorInfo* info = file->find(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(dtype_name(info->dtype), t["type"].get<std::string>());
    const int64_t n = t["count"];
    ASSERT_EQ(info->numel(), n);
    ASSERT_EQ(info->nbytes, t["nbytes"].get<uint64_t>());
    std::vector<float> out(static_cast<size_t>(n), -12345.0f);
    dequantize(info->dtype, info->data, out.data(), n);
    const size_t off = t["offset"];
    ASSERT_LE(off + static_cast<size_t>(n), values.size());
    int mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float want = values[off + static_cast<size_t>(i)];
      if (bits(out[i]) != bits(want) && ++mismatches <= 5)
        ADD_FAILURE() << name << "[" << i << "] = " << out[i] << " (0x" << std::hex << bits(out[i])
                      << "), gguf-py: " << want << " (0x" << bits(want) << ")" << std::dec;
    }
    EXPECT_EQ(mismatches, 0);
  }
}

// Tensors inside a mapping need not be aligned: dequantizing from an odd address gives the
// same values.
TEST(DequantTest, UnalignedSource) {
  auto file = GgufFile::open(kQuantDir + "/quant_golden.gguf");
  for (const TensorInfo& t : file->tensors()) {
    SCOPED_TRACE(t.name);
    std::vector<uint8_t> buf(t.nbytes + 3);
    std::memcpy(buf.data() + 3, t.data, t.nbytes);
    std::vector<float> a(static_cast<size_t>(t.numel())), b(a.size());
    dequantize(t.dtype, t.data, a.data(), t.numel());
    dequantize(t.dtype, buf.data() + 3, b.data(), t.numel());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
  }
}

TEST(DequantTest, RejectsPartialBlock) {
  std::vector<uint8_t> src(64, 0);
  std::vector<float> dst(64);
  EXPECT_THROW(dequantize(DType::kQ4_0, src.data(), dst.data(), 31), Error);
  EXPECT_NO_THROW(dequantize(DType::kQ4_0, src.data(), dst.data(), 0));
}

// Hand-checked Q4_0 / Q4_1 nibble order: the low nibbles of the 16 bytes are elements 0..15,
// the high nibbles 16..31 (ggml dequantize_row_q4_0).
TEST(DequantTest, Q4NibbleOrder) {
  uint8_t blk[18] = {};
  const uint16_t one = f32_to_f16(1.0f);
  std::memcpy(blk, &one, 2);
  for (int j = 0; j < 16; ++j) blk[2 + j] = static_cast<uint8_t>((15 - j) << 4 | j);
  float y[32];
  dequantize(DType::kQ4_0, blk, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], static_cast<float>(j - 8));
    EXPECT_EQ(y[j + 16], static_cast<float>(15 - j - 8));
  }
}

TEST(HalfTest, F32ToF16MatchesNumpy) {
  Golden g;
  const auto& c = g.manifest["f16_conversion"];
  const size_t off = c["offset"];
  const auto& want = c["bits"];
  ASSERT_EQ(want.size(), c["count"].get<size_t>());
  for (size_t i = 0; i < want.size(); ++i) {
    const float x = g.values[off + i];
    EXPECT_EQ(f32_to_f16(x), want[i].get<uint16_t>())
        << "x = " << x << " (0x" << std::hex << bits(x) << ")";
  }
}

TEST(HalfTest, F32ToBf16MatchesGgufPy) {
  Golden g;
  const auto& c = g.manifest["bf16_conversion"];
  const size_t off = c["offset"];
  const auto& want = c["bits"];
  for (size_t i = 0; i < want.size(); ++i) {
    const float x = g.values[off + i];
    EXPECT_EQ(f32_to_bf16(x), want[i].get<uint16_t>()) << "x = " << x;
  }
}

// All 65536 halves: f16 -> f32 -> f16 is the identity (NaNs stay NaN), and the float value
// agrees with ldexp arithmetic.
TEST(HalfTest, AllHalvesRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    const float sign = (h & 0x8000) ? -1.0f : 1.0f;
    if (exp == 31) {
      if (mant == 0) {
        EXPECT_TRUE(std::isinf(f) && std::signbit(f) == bool(h & 0x8000)) << h;
      } else {
        EXPECT_TRUE(std::isnan(f)) << h;
        EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << h;
      }
      continue;
    }
    const float want = exp == 0
                           ? sign * std::ldexp(static_cast<float>(mant), -24)
                           : sign * std::ldexp(static_cast<float>(mant | 0x400), int(exp) - 25);
    EXPECT_EQ(bits(f), bits(want)) << "h = 0x" << std::hex << h;
    EXPECT_EQ(f32_to_f16(f), h) << "h = 0x" << std::hex << h;
  }
}

TEST(HalfTest, Bf16) {
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC000), -2.0f);
  EXPECT_TRUE(std::isinf(bf16_to_f32(0x7F80)));
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC1)));
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  // Round to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  // NaN stays NaN even when its payload is only in the low 16 bits.
  uint32_t nan_bits = 0x7F800001;
  float nan;
  std::memcpy(&nan, &nan_bits, 4);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(nan))));
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(static_cast<uint16_t>(b));
    if (!std::isnan(f)) {
      EXPECT_EQ(f32_to_bf16(f), b);
    }
  }
}

}  // namespace
}  // namespace hybridgen
