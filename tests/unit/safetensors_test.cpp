// safetensors reader: files written by the `safetensors` package (tests/data/quant/safetensors,
// see tests/scripts/make_dequant_golden.py) and hand-built malformed files.
#include "model/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

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
const std::string kDir = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/quant/safetensors";

nlohmann::json golden() {
  return nlohmann::json::parse(std::ifstream(kDir + "/safetensors_golden.json"));
}

std::string torch_to_st(const std::string& torch_dtype) {
  if (torch_dtype == "float32") return "F32";
  if (torch_dtype == "float16") return "F16";
  if (torch_dtype == "bfloat16") return "BF16";
  if (torch_dtype == "int32") return "I32";
  if (torch_dtype == "int64") return "I64";
  return "?" + torch_dtype;
}

// Checks every tensor of `rel` (a file written by the safetensors package) against the values
// torch had when it saved them.
void check_against_golden(const std::string& rel,
                          const std::function<const TensorInfo*(const std::string&)>& find) {
  const auto g = golden()[rel];
  ASSERT_FALSE(g.is_null()) << rel;
  for (const auto& [name, t] : g["tensors"].items()) {
    SCOPED_TRACE(rel + ": " + name);
    const TensorInfo* info = find(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(dtype_name(info->dtype), torch_to_st(t["dtype"]));
    EXPECT_EQ(info->shape, t["shape"].get<std::vector<int64_t>>());
    const auto& want = t["values"];
    ASSERT_EQ(static_cast<size_t>(info->numel()), want.size());
    std::vector<float> out(want.size());
    if (!out.empty()) dequantize(info->dtype, info->data, out.data(), info->numel());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(out[i], static_cast<float>(want[i].get<double>())) << i;
    }
    if (info->dtype == DType::kI64) {  // exact integers too
      for (size_t i = 0; i < want.size(); ++i) {
        int64_t v;
        std::memcpy(&v, info->data + 8 * i, 8);
        EXPECT_EQ(v, want[i].get<int64_t>());
      }
    }
  }
}

TEST(SafetensorsGolden, SingleFile) {
  auto f = SafetensorsFile::open(kDir + "/single/model.safetensors");
  EXPECT_EQ(f->tensors().size(), 8u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "hybridgen test");
  check_against_golden("single/model.safetensors",
                       [&](const std::string& n) { return f->find(n); });
  EXPECT_EQ(f->find("w.scalar")->shape, std::vector<int64_t>{});
  EXPECT_EQ(f->find("w.empty")->nbytes, 0u);
  EXPECT_EQ(f->find("absent"), nullptr);
}

TEST(SafetensorsGolden, ModelDirSingle) {
  auto m = SafetensorsModel::open_dir(kDir + "/single");
  EXPECT_EQ(m->names().size(), 8u);
  EXPECT_EQ(m->file_of("w.f32"), kDir + "/single/model.safetensors");
  EXPECT_EQ(m->file_of("absent"), "");
  check_against_golden("single/model.safetensors",
                       [&](const std::string& n) { return m->find(n); });
}

TEST(SafetensorsGolden, ModelDirSharded) {
  auto m = SafetensorsModel::open_dir(kDir + "/sharded");
  EXPECT_EQ(m->names(), (std::vector<std::string>{"lm_head.weight", "model.embed.weight",
                                                  "model.norm.weight"}));
  EXPECT_EQ(m->file_of("lm_head.weight"), kDir + "/sharded/model-00002-of-00002.safetensors");
  EXPECT_EQ(m->file_of("model.norm.weight"), kDir + "/sharded/model-00001-of-00002.safetensors");
  check_against_golden("sharded/model-00001-of-00002.safetensors",
                       [&](const std::string& n) { return m->find(n); });
  check_against_golden("sharded/model-00002-of-00002.safetensors",
                       [&](const std::string& n) { return m->find(n); });
  EXPECT_EQ(m->find("absent"), nullptr);
}

TEST(SafetensorsGolden, ModelDirOtherName) {
  auto m = SafetensorsModel::open_dir(kDir + "/othername");
  EXPECT_EQ(m->names(), std::vector<std::string>{"x"});
  check_against_golden("othername/weights.safetensors",
                       [&](const std::string& n) { return m->find(n); });
}

// The transformers-written checkpoints other suites use (tests/data/models/*): every model
// directory there opens, and every tensor has the byte size its dtype and shape call for.
TEST(SafetensorsGolden, TransformersCheckpointsOpen) {
  const fs::path models = fs::path(HYBRIDGEN_TEST_DATA_DIR) / "models";
  if (!fs::is_directory(models)) GTEST_SKIP() << models << " not present";
  int opened = 0;
  for (const auto& entry : fs::directory_iterator(models)) {
    if (!entry.is_directory()) continue;
    bool has_st = false;
    for (const auto& f : fs::directory_iterator(entry.path())) {
      has_st |= f.path().extension() == ".safetensors";
    }
    if (!has_st) continue;
    SCOPED_TRACE(entry.path().string());
    std::unique_ptr<SafetensorsModel> m;
    ASSERT_NO_THROW(m = SafetensorsModel::open_dir(entry.path().string()));
    EXPECT_FALSE(m->names().empty());
    for (const std::string& n : m->names()) {
      const TensorInfo* t = m->find(n);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(t->nbytes, static_cast<uint64_t>(t->numel() * dtype_block_bytes(t->dtype))) << n;
      EXPECT_FALSE(m->file_of(n).empty());
    }
    ++opened;
  }
  if (opened == 0) GTEST_SKIP() << "no safetensors checkpoints under " << models;
}

// ---------------------------------------------------------------------------------------------
// Malformed files.

class MalformedSafetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hg_st_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string raw(const std::string& header, size_t data_bytes, uint64_t declared_len) {
    std::string b(8, '\0');
    std::memcpy(b.data(), &declared_len, 8);
    b += header;
    b.append(data_bytes, '\x01');
    return b;
  }
  // An 8-byte length, the header, then `data_bytes` bytes of data.
  static std::string file_bytes(const std::string& header, size_t data_bytes) {
    return raw(header, data_bytes, header.size());
  }
  std::string write(const std::string& bytes, const std::string& name = "bad.safetensors") {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  // Opens the file and returns the error message, which must name the file.
  std::string open_error(const std::string& bytes) {
    const std::string p = write(bytes);
    const std::string e = error_of([&] { SafetensorsFile::open(p); });
    EXPECT_TRUE(Contains(e, p));
    return e;
  }
  fs::path dir_;
};

TEST_F(MalformedSafetensors, HandBuiltValidFileOpens) {
  const std::string h =
      R"({"__metadata__":{"k":"v"},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string bytes = file_bytes(h, 0);
  const float a[2] = {1.5f, -2.0f};
  const uint16_t b[2] = {0x3C00, 0xC000};
  bytes.append(reinterpret_cast<const char*>(a), 8).append(reinterpret_cast<const char*>(b), 4);
  auto f = SafetensorsFile::open(write(bytes));
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "a");  // file order
  float out[2];
  dequantize(f->find("b")->dtype, f->find("b")->data, out, 2);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  dequantize(f->find("a")->dtype, f->find("a")->data, out, 2);
  EXPECT_EQ(out[1], -2.0f);
}

TEST_F(MalformedSafetensors, EmptyAndShortFiles) {
  EXPECT_TRUE(Contains(open_error(""), "empty"));
  EXPECT_TRUE(Contains(open_error("abc"), "too short"));
  const std::string missing = (dir_ / "none.safetensors").string();
  EXPECT_TRUE(Contains(error_of([&] { SafetensorsFile::open(missing); }), missing));
}

TEST_F(MalformedSafetensors, HeaderLengthPastFile) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::string e = open_error(raw(h, 4, h.size() + 100));
  EXPECT_TRUE(Contains(e, "header length"));
  EXPECT_TRUE(Contains(e, "past the end"));
  e = open_error(raw(h, 4, uint64_t{1} << 62));  // over the cap
  EXPECT_TRUE(Contains(e, "exceeds the limit"));
  e = open_error(raw(h, 4, ~uint64_t{0}));
  EXPECT_TRUE(Contains(e, "header length"));
}

TEST_F(MalformedSafetensors, HeaderNotJson) {
  std::string e = open_error(file_bytes("{\"a\": {\"dtype\": ", 0));
  EXPECT_TRUE(Contains(e, "not valid JSON"));
  e = open_error(file_bytes("[1, 2, 3]", 0));
  EXPECT_TRUE(Contains(e, "not a JSON object"));
  e = open_error(file_bytes(R"({"a": 5})", 0));
  EXPECT_TRUE(Contains(e, "'a'"));
}

TEST_F(MalformedSafetensors, OverlappingOffsets) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  const std::string e = open_error(file_bytes(h, 12));
  EXPECT_TRUE(Contains(e, "'b'"));
  EXPECT_TRUE(Contains(e, "overlaps tensor 'a'"));
}

TEST_F(MalformedSafetensors, OffsetsOutOfRange) {
  std::string h = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  std::string e = open_error(file_bytes(h, 8));
  EXPECT_TRUE(Contains(e, "'a'"));
  EXPECT_TRUE(Contains(e, "past the end of the data section"));
  h = R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})";
  e = open_error(file_bytes(h, 8));
  EXPECT_TRUE(Contains(e, "'a'"));
  EXPECT_TRUE(Contains(e, "begin after end"));
  h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})";
  e = open_error(file_bytes(h, 8));
  EXPECT_TRUE(Contains(e, "data_offsets"));
  h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})";
  EXPECT_TRUE(Contains(open_error(file_bytes(h, 4)), "data_offsets"));
}

TEST_F(MalformedSafetensors, HoleBetweenTensors) {
  std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  std::string e = open_error(file_bytes(h, 12));
  EXPECT_TRUE(Contains(e, "hole of 4 bytes before tensor 'b'"));
  h = R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";  // hole at the start
  EXPECT_TRUE(Contains(open_error(file_bytes(h, 8)), "'b'"));
  h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";  // trailing bytes
  e = open_error(file_bytes(h, 12));
  EXPECT_TRUE(Contains(e, "8 bytes at the end"));
  EXPECT_TRUE(Contains(e, "'a'"));
}

TEST_F(MalformedSafetensors, UnsupportedDtype) {
  for (const char* dt : {"F8_E4M3", "F64", "U8", "WHAT"}) {
    const std::string h =
        std::string(R"({"emb":{"dtype":")") + dt + R"(","shape":[1],"data_offsets":[0,8]}})";
    const std::string e = open_error(file_bytes(h, 8));
    EXPECT_TRUE(Contains(e, std::string("unsupported dtype ") + dt + " of tensor emb in "));
  }
}

TEST_F(MalformedSafetensors, ShapeSizeMismatch) {
  const std::string h = R"({"w":{"dtype":"F16","shape":[3,2],"data_offsets":[0,8]}})";
  const std::string e = open_error(file_bytes(h, 8));
  EXPECT_TRUE(Contains(e, "'w'"));
  EXPECT_TRUE(Contains(e, "needs 12 bytes"));
}

TEST_F(MalformedSafetensors, BadShapes) {
  std::string h = R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})";
  EXPECT_TRUE(Contains(open_error(file_bytes(h, 4)), "'w'"));
  h = R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})";
  EXPECT_TRUE(Contains(open_error(file_bytes(h, 4)), "non-negative integer"));
  h = R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})";
  EXPECT_TRUE(Contains(open_error(file_bytes(h, 4)), "9 dimensions"));
  h = R"({"w":{"dtype":"F32","data_offsets":[0,4]}})";
  EXPECT_TRUE(Contains(open_error(file_bytes(h, 4)), "shape"));
}

TEST_F(MalformedSafetensors, HugeShapeOverflow) {
  // 2^32 * 2^32 elements overflows 64 bits; 2^31 * 2^31 * 4 bytes overflows the byte count.
  std::string h = R"({"big":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})";
  std::string e = open_error(file_bytes(h, 4));
  EXPECT_TRUE(Contains(e, "'big'"));
  EXPECT_TRUE(Contains(e, "overflow"));
  h = R"({"big":{"dtype":"I64","shape":[2147483648,2147483648],"data_offsets":[0,4]}})";
  e = open_error(file_bytes(h, 4));
  EXPECT_TRUE(Contains(e, "'big'"));
  EXPECT_TRUE(Contains(e, "overflow"));
}

TEST_F(MalformedSafetensors, DuplicateNames) {
  const std::string h = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  const std::string e = open_error(file_bytes(h, 8));
  EXPECT_TRUE(Contains(e, "'w' more than once"));
}

TEST_F(MalformedSafetensors, BadMetadata) {
  std::string h = R"({"__metadata__":{"n":5}})";
  std::string e = open_error(file_bytes(h, 0));
  EXPECT_TRUE(Contains(e, "__metadata__"));
  EXPECT_TRUE(Contains(e, "'n'"));
  h = R"({"__metadata__":[1]})";
  EXPECT_TRUE(Contains(open_error(file_bytes(h, 0)), "__metadata__"));
}

// Every truncation of a file written by the safetensors package fails with hybridgen::Error;
// every single-byte corruption of it opens or fails with hybridgen::Error, never anything else
// (no crash, nlohmann::json exception or std::bad_alloc; run under ASan to make this meaningful).
TEST_F(MalformedSafetensors, TruncationsAndCorruptionsFailCleanly) {
  std::ifstream in(kDir + "/single/model.safetensors", std::ios::binary);
  const std::string golden{std::istreambuf_iterator<char>(in), {}};
  ASSERT_GT(golden.size(), 100u);
  // Thousands of small writes: use a RAM-backed directory when there is one.
  const fs::path shm = "/dev/shm";
  const fs::path scratch = fs::is_directory(shm) && ::access("/dev/shm", W_OK) == 0 ? shm : dir_;
  const std::string p = (scratch / ("hg_fuzz.safetensors_" + std::to_string(::getpid()))).string();
  struct Remove {
    std::string p;
    ~Remove() {
      std::error_code ec;
      fs::remove(p, ec);
    }
  } remove_at_exit{p};
  for (size_t len = 0; len < golden.size(); ++len) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << golden.substr(0, len);
    EXPECT_THROW(SafetensorsFile::open(p), Error) << "truncated to " << len;
  }
  uint64_t header_len;
  std::memcpy(&header_len, golden.data(), 8);
  int opened = 0, rejected = 0;
  for (size_t pos = 0; pos < 8 + header_len; ++pos) {
    for (char v : {'\xFF', '9', '"', '-'}) {
      if (golden[pos] == v) continue;
      std::string bad = golden;
      bad[pos] = v;
      std::ofstream(p, std::ios::binary | std::ios::trunc) << bad;
      try {
        SafetensorsFile::open(p);
        ++opened;
      } catch (const Error&) {
        ++rejected;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "byte " << pos << " = '" << v << "': " << e.what();
      }
    }
  }
  EXPECT_GT(rejected, 0);
  std::printf("corruptions: %d opened, %d rejected\n", opened, rejected);
}

// --- model directories -----------------------------------------------------------------------

class ModelDir : public MalformedSafetensors {
 protected:
  static std::string one_tensor(const std::string& name) {
    std::string h = R"({")" + name + R"(":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
    return file_bytes(h, 4);
  }
  std::string dir_error() {
    const std::string e = error_of([&] { SafetensorsModel::open_dir(dir_.string()); });
    return e;
  }
};

TEST_F(ModelDir, IndexPointsToMissingShard) {
  write(one_tensor("a"), "s1.safetensors");
  write(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})",
        "model.safetensors.index.json");
  const std::string e = dir_error();
  EXPECT_TRUE(Contains(e, "model.safetensors.index.json"));
  EXPECT_TRUE(Contains(e, "s2.safetensors"));
  EXPECT_TRUE(Contains(e, "does not exist"));
}

TEST_F(ModelDir, IndexNameMissingInShard) {
  write(one_tensor("a"), "s1.safetensors");
  write(R"({"weight_map":{"a":"s1.safetensors","ghost":"s1.safetensors"}})",
        "model.safetensors.index.json");
  const std::string e = dir_error();
  EXPECT_TRUE(Contains(e, "'ghost'"));
  EXPECT_TRUE(Contains(e, (dir_ / "s1.safetensors").string()));
}

TEST_F(ModelDir, IndexPathEscapesDir) {
  for (const char* shard : {"../s1.safetensors", "sub/s1.safetensors", "..", "/etc/passwd"}) {
    write(std::string(R"({"weight_map":{"a":")") + shard + R"("}})",
          "model.safetensors.index.json");
    const std::string e = dir_error();
    EXPECT_TRUE(Contains(e, "not a plain file name")) << shard;
    EXPECT_TRUE(Contains(e, "'a'")) << shard;
  }
}

TEST_F(ModelDir, IndexMalformed) {
  write("{\"weight_map\": ", "model.safetensors.index.json");
  EXPECT_TRUE(Contains(dir_error(), "model.safetensors.index.json"));
  write(R"({"weight_map":{"a":3}})", "model.safetensors.index.json");
  EXPECT_TRUE(Contains(dir_error(), "'a'"));
  write(R"({"metadata":{}})", "model.safetensors.index.json");
  EXPECT_TRUE(Contains(dir_error(), "weight_map"));
}

TEST_F(ModelDir, ShardsOpenedOnceAndDuplicatesRejected) {
  write(one_tensor("a"), "s1.safetensors");
  write(one_tensor("b"), "s2.safetensors");
  write(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})",
        "model.safetensors.index.json");
  auto m = SafetensorsModel::open_dir(dir_.string());
  EXPECT_EQ(m->names(), (std::vector<std::string>{"a", "b"}));
  // Same name in two shards.
  write(one_tensor("a"), "s2.safetensors");
  write(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})",
        "model.safetensors.index.json");
  const std::string e = dir_error();
  EXPECT_TRUE(Contains(e, "'a'"));
  EXPECT_TRUE(Contains(e, "s2.safetensors"));
}

TEST_F(ModelDir, NoOrSeveralFiles) {
  std::string e = dir_error();
  EXPECT_TRUE(Contains(e, dir_.string()));
  EXPECT_TRUE(Contains(e, "no model.safetensors"));
  write(one_tensor("a"), "x.safetensors");
  write(one_tensor("b"), "y.safetensors");
  e = dir_error();
  EXPECT_TRUE(Contains(e, "several"));
  EXPECT_TRUE(Contains(e, "y.safetensors"));
  const std::string missing = (dir_ / "nope").string();
  EXPECT_TRUE(Contains(error_of([&] { SafetensorsModel::open_dir(missing); }), missing));
}

TEST_F(ModelDir, BadShardErrorNamesShard) {
  write(one_tensor("a"), "good.safetensors");
  write("not a safetensors file", "bad.safetensors");
  write(R"({"weight_map":{"a":"good.safetensors","b":"bad.safetensors"}})",
        "model.safetensors.index.json");
  EXPECT_TRUE(Contains(dir_error(), (dir_ / "bad.safetensors").string()));
}

}  // namespace
}  // namespace hybridgen
