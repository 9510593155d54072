// GGUF reader: a file written by gguf-py (GGUFWriter), the real default model (checked against
// gguf-py's GGUFReader + dequantize), and hand-built malformed files.
#include "model/gguf.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "hybridgen/error.h"
#include "model/dequant.h"
#include "test_support.h"

namespace hybridgen {
namespace {

using test::Contains;
using test::error_of;

namespace fs = std::filesystem;
const std::string kQuantDir = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/quant";

// ---------------------------------------------------------------------------------------------
// The golden file written by gguf-py.

class GoldenGguf : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { file_ = GgufFile::open(kQuantDir + "/quant_golden.gguf"); }
  static void TearDownTestSuite() { file_.reset(); }
  static std::unique_ptr<GgufFile> file_;
};
std::unique_ptr<GgufFile> GoldenGguf::file_;

TEST_F(GoldenGguf, Header) {
  EXPECT_EQ(file_->version(), 3u);
  EXPECT_EQ(file_->alignment(), 64u);
  EXPECT_EQ(file_->get_uint("general.alignment"), 64u);
  EXPECT_EQ(file_->get_string("general.architecture"), "hgtest");
  EXPECT_EQ(file_->tensors().size(), 10u);
  EXPECT_EQ(file_->keys().size(), 21u);  // 19 test.* + general.architecture + alignment
}

TEST_F(GoldenGguf, MetadataOfEveryType) {
  const GgufFile& f = *file_;
  EXPECT_EQ(f.get_uint("test.u8"), 200u);
  EXPECT_EQ(std::get<int64_t>(f.get("test.i8")->v), -100);
  EXPECT_EQ(f.get_uint("test.u16"), 60000u);
  EXPECT_EQ(std::get<int64_t>(f.get("test.i16")->v), -30000);
  EXPECT_EQ(f.get_uint("test.u32"), 4000000000u);
  EXPECT_EQ(std::get<int64_t>(f.get("test.i32")->v), -2000000000);
  EXPECT_EQ(f.get_float("test.f32"), 0.15625);
  EXPECT_EQ(f.get_uint("test.u64"), (uint64_t{1} << 63) + 5);
  EXPECT_EQ(std::get<int64_t>(f.get("test.i64")->v), -(int64_t{1} << 62));
  EXPECT_EQ(f.get_float("test.f64"), 3.141592653589793);
  EXPECT_TRUE(f.get_bool("test.bool_true", false));
  EXPECT_FALSE(f.get_bool("test.bool_false", true));
  EXPECT_EQ(f.get_string("test.string"), "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93");
  EXPECT_EQ(f.get_string_array("test.arr_str"), (std::vector<std::string>{"a", "bc", ""}));
  EXPECT_EQ(f.get_int_array("test.arr_i32"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.get_int_array("test.arr_u8"), (std::vector<int64_t>{1, 2, 255}));
  const auto& f32s = std::get<GgufArray>(f.get("test.arr_f32")->v);
  ASSERT_EQ(f32s.size(), 2u);
  EXPECT_EQ(std::get<double>(f32s[1].v), -1.25);
  const auto& nested = std::get<GgufArray>(f.get("test.nested")->v);
  ASSERT_EQ(nested.size(), 2u);
  const auto& inner = std::get<GgufArray>(nested[1].v);
  ASSERT_EQ(inner.size(), 3u);
  EXPECT_EQ(std::get<int64_t>(inner[2].v), 5);
  // Integers widen into doubles for get_float.
  EXPECT_EQ(f.get_float("test.u32"), 4000000000.0);
}

TEST_F(GoldenGguf, GetterErrorsNameKeyAndFile) {
  const GgufFile& f = *file_;
  const std::string path = f.path();
  std::string e = error_of([&] { f.get_string("no.such.key"); });
  EXPECT_TRUE(Contains(e, "no.such.key"));
  EXPECT_TRUE(Contains(e, path));
  e = error_of([&] { f.get_uint("test.string"); });
  EXPECT_TRUE(Contains(e, "test.string"));
  e = error_of([&] { f.get_uint("test.i8"); });  // negative
  EXPECT_TRUE(Contains(e, "test.i8"));
  e = error_of([&] { f.get_string("test.u8"); });
  EXPECT_TRUE(Contains(e, "test.u8"));
  e = error_of([&] { f.get_int_array("test.arr_u64"); });  // 2^64-1 does not fit int64
  EXPECT_TRUE(Contains(e, "test.arr_u64"));
  e = error_of([&] { f.get_string_array("test.arr_i32"); });
  EXPECT_TRUE(Contains(e, "test.arr_i32"));
  e = error_of([&] { f.get_bool("test.u8", false); });
  EXPECT_TRUE(Contains(e, "test.u8"));
  EXPECT_EQ(f.get_string("no.such.key", "dflt"), "dflt");
  EXPECT_EQ(f.get_uint("no.such.key", 7), 7u);
  EXPECT_EQ(f.get_float("no.such.key", 0.5), 0.5);
  EXPECT_TRUE(f.get_bool("no.such.key", true));
  EXPECT_EQ(f.get("no.such.key"), nullptr);
}

TEST_F(GoldenGguf, TensorInfosRowMajorAndAligned) {
  const auto manifest = nlohmann::json::parse(std::ifstream(kQuantDir + "/quant_golden.json"));
  const TensorInfo* first = &file_->tensors().front();
  for (const auto& t : manifest["tensors"]) {
    const TensorInfo* info = file_->find(t["name"].get<std::string>());
    ASSERT_NE(info, nullptr) << t["name"];
    EXPECT_EQ(info->shape, t["shape"].get<std::vector<int64_t>>()) << t["name"];
    EXPECT_EQ(info->nbytes, t["nbytes"].get<uint64_t>()) << t["name"];
    EXPECT_EQ((info->data - first->data) % 64, 0) << t["name"];
  }
  const TensorInfo* q = file_->find("t.q4_0");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{3, 2, 64}));  // ne = {64, 2, 3}
  EXPECT_EQ(file_->find("nope"), nullptr);
}

// ---------------------------------------------------------------------------------------------
// The real default model (SmolLM2-135M-Instruct Q4_1), if present.

std::string default_model_path() {
  if (const char* env = std::getenv("HYBRIDGEN_DEFAULT_MODEL"); env && *env) {
    if (fs::exists(env)) return env;
  }
  const std::string cached =
      std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (fs::exists(cached)) return cached;
  return "";
}

TEST(DefaultModel, MetadataAndRowsMatchGgufPy) {
  const std::string path = default_model_path();
  if (path.empty()) {
    GTEST_SKIP() << "default model not found: set HYBRIDGEN_DEFAULT_MODEL or fetch it to "
                    "models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
  }
  const auto g = nlohmann::json::parse(std::ifstream(kQuantDir + "/smollm2_golden.json"));
  auto f = GgufFile::open(path);
  EXPECT_EQ(f->version(), g["version"].get<uint32_t>());
  EXPECT_EQ(f->alignment(), g["alignment"].get<uint64_t>());
  EXPECT_EQ(f->keys().size(), g["n_kv"].get<size_t>());
  EXPECT_EQ(f->tensors().size(), g["n_tensors"].get<size_t>());
  for (const auto& [k, v] : g["strings"].items())
    EXPECT_EQ(f->get_string(k), v.get<std::string>()) << k;
  for (const auto& [k, v] : g["uints"].items()) EXPECT_EQ(f->get_uint(k), v.get<uint64_t>()) << k;
  for (const auto& [k, v] : g["floats"].items()) EXPECT_EQ(f->get_float(k), v.get<double>()) << k;
  for (const auto& [k, v] : g["bools"].items())
    EXPECT_EQ(f->get_bool(k, !v.get<bool>()), v.get<bool>()) << k;

  const auto tokens = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), g["tokens"]["count"].get<size_t>());
  for (const auto& [i, tok] : g["tokens"]["sample"].items()) {
    EXPECT_EQ(tokens[std::stoul(i)], tok.get<std::string>()) << i;
  }
  const auto merges = f->get_string_array("tokenizer.ggml.merges");
  ASSERT_EQ(merges.size(), g["merges"]["count"].get<size_t>());
  EXPECT_EQ(merges[0], g["merges"]["first"][0].get<std::string>());
  EXPECT_EQ(merges.back(), g["merges"]["last"].get<std::string>());
  const auto ttype = f->get_int_array("tokenizer.ggml.token_type");
  ASSERT_EQ(ttype.size(), g["token_type"]["count"].get<size_t>());
  for (size_t i = 0; i < g["token_type"]["first"].size(); ++i) {
    EXPECT_EQ(ttype[i], g["token_type"]["first"][i].get<int64_t>());
  }

  std::map<std::string, int> counts;
  uint64_t total = 0;
  for (const TensorInfo& t : f->tensors()) {
    ++counts[std::string(dtype_name(t.dtype))];
    total += t.nbytes;
  }
  for (const auto& [type, n] : g["type_counts"].items())
    EXPECT_EQ(counts[type], n.get<int>()) << type;
  EXPECT_EQ(total, g["total_nbytes"].get<uint64_t>());
  for (const auto& [name, t] : g["tensors"].items()) {
    const TensorInfo* info = f->find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(dtype_name(info->dtype), t["type"].get<std::string>()) << name;
    EXPECT_EQ(info->shape, t["shape"].get<std::vector<int64_t>>()) << name;
    EXPECT_EQ(info->nbytes, t["nbytes"].get<uint64_t>()) << name;
  }

  for (const auto& row : g["rows"]) {
    const std::string name = row["tensor"];
    const TensorInfo* info = f->find(name);
    ASSERT_NE(info, nullptr) << name;
    const int64_t cols = info->shape.back();
    const int64_t r = row["row"];
    const uint64_t row_bytes =
        cols / dtype_block_size(info->dtype) * dtype_block_bytes(info->dtype);
    std::vector<float> out(static_cast<size_t>(cols));
    dequantize(info->dtype, info->data + r * row_bytes, out.data(), cols);
    const auto& want = row["values"];
    ASSERT_EQ(want.size(), out.size());
    int bad = 0;
    for (int64_t i = 0; i < cols; ++i) {
      const float w = static_cast<float>(want[i].get<double>());
      if (out[i] != w && ++bad <= 3) {
        ADD_FAILURE() << name << " row " << r << " [" << i << "] = " << out[i] << ", gguf-py " << w;
      }
    }
    EXPECT_EQ(bad, 0) << name << " row " << r;
  }
}

// Dequantizes the whole 98 MB model: every value finite, and reports the throughput (the load
// path has to be fast enough for a model of this size).
TEST(DefaultModel, DequantizeEverything) {
  const std::string path = default_model_path();
  if (path.empty()) GTEST_SKIP() << "default model not found (HYBRIDGEN_DEFAULT_MODEL)";
  const auto t0 = std::chrono::steady_clock::now();
  auto f = GgufFile::open(path);
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<float> buf;
  uint64_t bytes = 0, elems = 0;
  for (const TensorInfo& t : f->tensors()) {
    buf.resize(static_cast<size_t>(t.numel()));
    dequantize(t.dtype, t.data, buf.data(), t.numel());
    for (float v : buf) ASSERT_TRUE(std::isfinite(v)) << t.name;
    bytes += t.nbytes;
    elems += static_cast<uint64_t>(t.numel());
  }
  const auto t2 = std::chrono::steady_clock::now();
  const double open_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double deq_s = std::chrono::duration<double>(t2 - t1).count();
  std::printf("open %.1f ms; dequantized %.1f MB (%.1f M elements) in %.3f s (%.0f MB/s of file)\n",
              open_ms, bytes / 1e6, elems / 1e6, deq_s, bytes / 1e6 / deq_s);
  EXPECT_EQ(elems, 134515008u);  // SmolLM2-135M parameter count (tied embeddings)
}

// ---------------------------------------------------------------------------------------------
// Malformed files, built byte by byte.

struct Bytes {
  std::string b;
  Bytes& u8(uint8_t v) {
    b.push_back(static_cast<char>(v));
    return *this;
  }
  Bytes& u32(uint32_t v) {
    b.append(reinterpret_cast<const char*>(&v), 4);
    return *this;
  }
  Bytes& u64(uint64_t v) {
    b.append(reinterpret_cast<const char*>(&v), 8);
    return *this;
  }
  Bytes& f32(float v) {
    b.append(reinterpret_cast<const char*>(&v), 4);
    return *this;
  }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b += s;
    return *this;
  }
  Bytes& header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b += "GGUF";
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  Bytes& kv_u32(const std::string& k, uint32_t v) { return str(k).u32(4).u32(v); }
  Bytes& kv_str(const std::string& k, const std::string& v) { return str(k).u32(8).str(v); }
  Bytes& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t off) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(off);
  }
  Bytes& pad(size_t align) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.append(n, '\0');
    return *this;
  }
};

class MalformedGguf : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hg_gguf_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const Bytes& bytes, const std::string& name = "bad.gguf") {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << bytes.b;
    return p;
  }
  // Opens `bytes` and returns the error message; the message must name the file.
  std::string open_error(const Bytes& bytes) {
    const std::string p = write(bytes);
    const std::string e = error_of([&] { GgufFile::open(p); });
    EXPECT_TRUE(Contains(e, p));
    return e;
  }
  // A valid file: two kv, tensors "a" (F32, ne {4, 2}) and "b" (Q8_0, ne {32}).
  static Bytes valid() {
    Bytes x;
    x.header(3, 2, 2).kv_str("general.architecture", "llama").kv_u32("test.x", 7);
    x.tensor("a", {4, 2}, 0, 0).tensor("b", {32}, 8, 32).pad(32);
    for (int i = 0; i < 8; ++i) x.f32(static_cast<float>(i));
    x.u8(0x00).u8(0x3C);  // f16 1.0
    for (int i = 0; i < 32; ++i) x.u8(static_cast<uint8_t>(i - 16));
    return x;
  }
  fs::path dir_;
};

TEST_F(MalformedGguf, ValidBaselineOpens) {
  const std::string p = write(valid());
  auto f = GgufFile::open(p);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->find("a")->shape, (std::vector<int64_t>{2, 4}));
  float out[32];
  dequantize(f->find("a")->dtype, f->find("a")->data, out, 8);
  EXPECT_EQ(out[7], 7.0f);
  dequantize(f->find("b")->dtype, f->find("b")->data, out, 32);
  EXPECT_EQ(out[0], -16.0f);
  EXPECT_EQ(out[31], 15.0f);
  EXPECT_EQ(f->get_uint("test.x"), 7u);

  // Version 2 reads the same way.
  Bytes v2 = valid();
  v2.b[4] = 2;
  EXPECT_EQ(GgufFile::open(write(v2, "v2.gguf"))->version(), 2u);
}

TEST_F(MalformedGguf, EmptyAndMissingFile) {
  EXPECT_TRUE(Contains(open_error(Bytes{}), "empty"));
  const std::string missing = (dir_ / "nope.gguf").string();
  const std::string e = error_of([&] { GgufFile::open(missing); });
  EXPECT_TRUE(Contains(e, missing));
  EXPECT_TRUE(Contains(e, "No such file"));
}

TEST_F(MalformedGguf, BadMagic) {
  Bytes x = valid();
  x.b.replace(0, 4, "GGML");
  const std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "magic"));
  EXPECT_TRUE(Contains(e, "GGML"));
  EXPECT_TRUE(Contains(e, "47 47 4d 4c"));
}

TEST_F(MalformedGguf, UnsupportedVersions) {
  Bytes x = valid();
  x.b[4] = 1;
  EXPECT_TRUE(Contains(open_error(x), "unsupported GGUF version 1"));
  x.b[4] = 4;
  EXPECT_TRUE(Contains(open_error(x), "unsupported GGUF version 4"));
}

TEST_F(MalformedGguf, TruncatedHeader) {
  for (size_t len : {3u, 6u, 12u, 20u}) {
    Bytes x = valid();
    x.b.resize(len);
    const std::string e = open_error(x);
    EXPECT_TRUE(Contains(e, len < 4 ? "too short" : "truncated")) << len;
  }
  // Cut inside the key/values: too few bytes left for the 2 announced entries.
  Bytes kv = valid();
  kv.b.resize(30);
  EXPECT_TRUE(Contains(open_error(kv), "key/value count 2"));
  // Cut inside the value of the second key.
  Bytes head;
  head.header(3, 2, 2).kv_str("general.architecture", "llama");
  Bytes v = valid();
  v.b.resize(head.b.size() + 8 + 6 + 4 + 2);
  EXPECT_TRUE(Contains(open_error(v), "'test.x'"));
  // Cut inside the dimensions of tensor "b" (tensor "a" takes 41 bytes of tensor info).
  head.kv_u32("test.x", 7);
  Bytes t = valid();
  t.b.resize(head.b.size() + 41 + 8 + 1 + 4 + 1);
  const std::string e = open_error(t);
  EXPECT_TRUE(Contains(e, "tensor 'b'"));
  EXPECT_TRUE(Contains(e, "truncated"));
}

TEST_F(MalformedGguf, AbsurdCounts) {
  Bytes x;
  x.header(3, 0, uint64_t{1} << 60).zeros(64);
  EXPECT_TRUE(Contains(open_error(x), "key/value count"));
  Bytes y;
  y.header(3, uint64_t{1} << 60, 0).zeros(64);
  EXPECT_TRUE(Contains(open_error(y), "tensor count"));
  Bytes z;
  z.header(3, ~uint64_t{0}, ~uint64_t{0});
  EXPECT_TRUE(Contains(open_error(z), "count"));
}

TEST_F(MalformedGguf, StringLengthPastEnd) {
  Bytes x;
  x.header(3, 0, 1).u64(uint64_t{1} << 60).zeros(32);
  std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "string length"));
  EXPECT_TRUE(Contains(e, "metadata entry 0"));
  // A string value too long.
  Bytes y;
  y.header(3, 0, 1).str("general.name").u32(8).u64(1000).b += "short";
  e = open_error(y);
  EXPECT_TRUE(Contains(e, "general.name"));
  EXPECT_TRUE(Contains(e, "string length 1000"));
}

TEST_F(MalformedGguf, AbsurdArrayCount) {
  Bytes x;
  x.header(3, 0, 1).str("tokenizer.ggml.tokens").u32(9).u32(8).u64(uint64_t{1} << 60).zeros(32);
  std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "tokenizer.ggml.tokens"));
  EXPECT_TRUE(Contains(e, "array of 1152921504606846976"));
  Bytes y;  // u64 elements: count * 8 overflows if not divided
  y.header(3, 0, 1).str("k").u32(9).u32(10).u64(uint64_t{1} << 62).zeros(32);
  EXPECT_TRUE(Contains(open_error(y), "'k'"));
  Bytes z;  // unknown element type
  z.header(3, 0, 1).str("k").u32(9).u32(13).u64(1).zeros(8);
  EXPECT_TRUE(Contains(open_error(z), "unknown element type 13"));
}

TEST_F(MalformedGguf, NestedArraysBoundedDepth) {
  Bytes ok;  // [[1, 2]] as u8
  ok.header(3, 0, 1).str("k").u32(9).u32(9).u64(1).u32(0).u64(2).u8(1).u8(2);
  auto f = GgufFile::open(write(ok, "nested.gguf"));
  const auto& outer = std::get<GgufArray>(f->get("k")->v);
  EXPECT_EQ(std::get<uint64_t>(std::get<GgufArray>(outer[0].v)[1].v), 2u);

  Bytes deep;
  deep.header(3, 0, 1).str("deep").u32(9);
  for (int i = 0; i < 100; ++i) deep.u32(9).u64(1);
  deep.u32(0).u64(1).u8(0);
  EXPECT_TRUE(Contains(open_error(deep), "nested"));
}

TEST_F(MalformedGguf, UnknownKvType) {
  Bytes x;
  x.header(3, 0, 1).str("weird.key").u32(13).u32(0);
  const std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "weird.key"));
  EXPECT_TRUE(Contains(e, "unknown value type 13"));
}

TEST_F(MalformedGguf, DuplicateKey) {
  Bytes x;
  x.header(3, 0, 2).kv_u32("dup.key", 1).kv_u32("dup.key", 2);
  EXPECT_TRUE(Contains(open_error(x), "duplicate metadata key 'dup.key'"));
}

TEST_F(MalformedGguf, DuplicateTensorName) {
  Bytes x;
  x.header(3, 2, 0).tensor("w", {4}, 0, 0).tensor("w", {4}, 0, 32).pad(32).zeros(64);
  EXPECT_TRUE(Contains(open_error(x), "duplicate tensor name 'w'"));
}

TEST_F(MalformedGguf, UnknownTensorType) {
  Bytes x;
  x.header(3, 1, 0).tensor("blk.0.w", {32}, 99, 0).pad(32).zeros(64);
  std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "blk.0.w"));
  EXPECT_TRUE(Contains(e, "unknown ggml type 99"));
  // Real ggml types this reader does not dequantize name themselves, up to the newest of
  // ggml's enum (gguf-py 0.19's GGMLQuantizationType: 40 = NVFP4, 41 = Q1_0).
  for (const auto& [type, name] : std::vector<std::pair<uint32_t, std::string>>{{9, "Q8_1"},
                                                                                {15, "Q8_K"},
                                                                                {16, "IQ2_XXS"},
                                                                                {39, "MXFP4"},
                                                                                {40, "NVFP4"},
                                                                                {41, "Q1_0"}}) {
    Bytes y;
    y.header(3, 1, 0).tensor("blk.0.w", {256}, type, 0).pad(32).zeros(512);
    e = open_error(y);
    EXPECT_TRUE(Contains(e, "'blk.0.w'")) << e;
    EXPECT_TRUE(Contains(e, "ggml type " + std::to_string(type) + " (" + name + ")")) << e;
  }
  Bytes z;  // removed from ggml (Q4_2)
  z.header(3, 1, 0).tensor("blk.1.w", {32}, 4, 0).pad(32).zeros(64);
  EXPECT_TRUE(Contains(open_error(z), "unknown ggml type 4"));
}

// Every type of llama.cpp's common presets opens; a row that is not whole super-blocks and a
// tensor whose bytes run past the file are refused, naming the tensor.
TEST_F(MalformedGguf, QuantTypesSizesChecked) {
  struct Case {
    uint32_t type;
    uint64_t block, bytes;
  };
  for (const Case& c : std::vector<Case>{{6, 32, 22},
                                         {7, 32, 24},
                                         {10, 256, 84},
                                         {11, 256, 110},
                                         {13, 256, 176},
                                         {20, 32, 18},
                                         {23, 256, 136}}) {
    SCOPED_TRACE(c.type);
    Bytes ok;
    ok.header(3, 1, 0).tensor("w", {c.block * 2, 3}, c.type, 0).pad(32).zeros(6 * c.bytes);
    auto f = GgufFile::open(write(ok, "ok.gguf"));
    EXPECT_EQ(f->find("w")->nbytes, 6 * c.bytes);
    Bytes part;  // half a block per row
    part.header(3, 1, 0).tensor("half", {c.block / 2, 2}, c.type, 0).pad(32).zeros(4 * c.bytes);
    std::string e = open_error(part);
    EXPECT_TRUE(Contains(e, "'half'")) << e;
    EXPECT_TRUE(Contains(e, "block size " + std::to_string(c.block))) << e;
    Bytes shortf;  // one byte short of the last block
    shortf.header(3, 1, 0).tensor("cut", {c.block, 4}, c.type, 0).pad(32).zeros(4 * c.bytes - 1);
    e = open_error(shortf);
    EXPECT_TRUE(Contains(e, "'cut'")) << e;
    EXPECT_TRUE(Contains(e, "past the end")) << e;
  }
}

TEST_F(MalformedGguf, TooManyDims) {
  Bytes x;
  x.header(3, 1, 0).tensor("t5", {1, 1, 1, 1, 1}, 0, 0).pad(32).zeros(32);
  std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "t5"));
  EXPECT_TRUE(Contains(e, "5 dimensions"));
}

TEST_F(MalformedGguf, BadDimensions) {
  Bytes neg;
  neg.header(3, 1, 0).tensor("n", {~uint64_t{0}}, 0, 0).pad(32).zeros(32);
  EXPECT_TRUE(Contains(open_error(neg), "'n' dimension 0 is negative"));
  Bytes ovf;
  ovf.header(3, 1, 0).tensor("o", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0).pad(32).zeros(32);
  EXPECT_TRUE(Contains(open_error(ovf), "'o' has too many elements"));
  Bytes blk;  // Q4_0 row of 40 elements
  blk.header(3, 1, 0).tensor("q", {40, 2}, 2, 0).pad(32).zeros(128);
  std::string e = open_error(blk);
  EXPECT_TRUE(Contains(e, "'q'"));
  EXPECT_TRUE(Contains(e, "block size 32"));
}

TEST_F(MalformedGguf, MisalignedOffset) {
  Bytes x;
  x.header(3, 1, 0).tensor("mis", {4}, 0, 4).pad(32).zeros(64);
  std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "'mis'"));
  EXPECT_TRUE(Contains(e, "alignment"));
}

TEST_F(MalformedGguf, TensorDataPastEnd) {
  Bytes x;
  x.header(3, 1, 0).tensor("big", {1024}, 0, 0).pad(32).zeros(100);
  std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "'big'"));
  EXPECT_TRUE(Contains(e, "past the end"));
  Bytes y;  // offset + nbytes overflows
  y.header(3, 1, 0).tensor("wrap", {8}, 0, ~uint64_t{0} - 31).pad(32).zeros(64);
  EXPECT_TRUE(Contains(open_error(y), "'wrap'"));
}

TEST_F(MalformedGguf, OverlappingTensors) {
  Bytes x;
  x.header(3, 2, 0).tensor("first", {16}, 0, 0).tensor("second", {8}, 0, 32).pad(32).zeros(128);
  std::string e = open_error(x);
  EXPECT_TRUE(Contains(e, "overlaps"));
  EXPECT_TRUE(Contains(e, "'first'"));
}

TEST_F(MalformedGguf, AlignmentNotPowerOfTwo) {
  for (uint32_t al : {0u, 3u, 48u}) {
    Bytes x;
    x.header(3, 1, 1).kv_u32("general.alignment", al).tensor("a", {4}, 0, 0).pad(64).zeros(64);
    std::string e = open_error(x);
    EXPECT_TRUE(Contains(e, "general.alignment"));
    EXPECT_TRUE(Contains(e, "power of two"));
  }
  Bytes s;  // alignment given as a string
  s.header(3, 0, 1).kv_str("general.alignment", "32");
  EXPECT_TRUE(Contains(open_error(s), "general.alignment"));
}

TEST_F(MalformedGguf, CustomAlignmentHonoured) {
  Bytes x;
  x.header(3, 2, 1).kv_u32("general.alignment", 256);
  x.tensor("a", {4}, 0, 0).tensor("b", {4}, 0, 256).pad(256).zeros(512);
  auto f = GgufFile::open(write(x, "al.gguf"));
  EXPECT_EQ(f->alignment(), 256u);
  EXPECT_EQ(f->find("b")->data - f->find("a")->data, 256);
  Bytes y;  // 32-aligned offset is misaligned under alignment 256
  y.header(3, 1, 1).kv_u32("general.alignment", 256).tensor("c", {4}, 0, 32).pad(256).zeros(512);
  EXPECT_TRUE(Contains(open_error(y), "'c'"));
}

// Every truncation of the golden file inside its header fails with hybridgen::Error, and every
// single-byte corruption of the header either opens or fails with hybridgen::Error (never a
// crash, std::bad_alloc or std::length_error; run under ASan to make this meaningful).
TEST_F(MalformedGguf, TruncationsAndCorruptionsFailCleanly) {
  std::ifstream in(kQuantDir + "/quant_golden.gguf", std::ios::binary);
  Bytes golden;
  golden.b.assign(std::istreambuf_iterator<char>(in), {});
  auto f = GgufFile::open(kQuantDir + "/quant_golden.gguf");
  // The header ends where the first tensor's bytes begin.
  const TensorInfo& first = f->tensors().front();
  const size_t header_end =
      golden.b.find(std::string(reinterpret_cast<const char*>(first.data), first.nbytes));
  ASSERT_GT(header_end, 100u);
  ASSERT_LT(header_end, golden.b.size());
  // Thousands of small writes: use a RAM-backed directory when there is one.
  const fs::path shm = "/dev/shm";
  const fs::path scratch = fs::is_directory(shm) && ::access("/dev/shm", W_OK) == 0 ? shm : dir_;
  const std::string p = (scratch / ("hg_fuzz.gguf_" + std::to_string(::getpid()))).string();
  struct Remove {
    std::string p;
    ~Remove() {
      std::error_code ec;
      fs::remove(p, ec);
    }
  } remove_at_exit{p};
  for (size_t len = 0; len < header_end; ++len) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << golden.b.substr(0, len);
    EXPECT_THROW(GgufFile::open(p), Error) << "truncated to " << len;
  }
  int opened = 0, rejected = 0;
  for (size_t pos = 0; pos < header_end; ++pos) {
    for (uint8_t v : {uint8_t{0xFF}, uint8_t{0x41}}) {
      if (static_cast<uint8_t>(golden.b[pos]) == v) continue;
      std::string bad = golden.b;
      bad[pos] = static_cast<char>(v);
      std::ofstream(p, std::ios::binary | std::ios::trunc) << bad;
      try {
        GgufFile::open(p);
        ++opened;
      } catch (const Error&) {
        ++rejected;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "byte " << pos << " = " << int(v) << ": " << e.what();
      }
    }
  }
  EXPECT_GT(rejected, 0);
  std::printf("corruptions: %d opened, %d rejected\n", opened, rejected);
}

}  // namespace
}  // namespace hybridgen
