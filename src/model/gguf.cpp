#include "model/gguf.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "util/check.h"

namespace hybridgen {

namespace {

constexpr uint32_t kMaxDims = 4;   // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;  // nested arrays deeper than this are rejected
constexpr uint64_t kDefaultAlignment = 32;

enum GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
  kTypeCount = 13,
};

const char* gguf_type_name(uint32_t t) {
  static const char* names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  return t < kTypeCount ? names[t] : "unknown";
}

// Smallest number of bytes one value of type t can take in the file.
uint64_t min_value_size(uint32_t t) {
  switch (t) {
    case kU8:
    case kI8:
    case kBool:
      return 1;
    case kU16:
    case kI16:
      return 2;
    case kU32:
    case kI32:
    case kF32:
      return 4;
    case kU64:
    case kI64:
    case kF64:
      return 8;
    case kString:
      return 8;  // u64 length
    case kArray:
      return 12;  // u32 type + u64 count
    default:
      return 1;
  }
}

// ggml type numbers (ggml/include/ggml.h, enum ggml_type).
bool ggml_to_dtype(uint32_t t, DType* out) {
  switch (t) {
    case 0:
      *out = DType::kF32;
      return true;
    case 1:
      *out = DType::kF16;
      return true;
    case 2:
      *out = DType::kQ4_0;
      return true;
    case 3:
      *out = DType::kQ4_1;
      return true;
    case 6:
      *out = DType::kQ5_0;
      return true;
    case 7:
      *out = DType::kQ5_1;
      return true;
    case 8:
      *out = DType::kQ8_0;
      return true;
    case 10:
      *out = DType::kQ2_K;
      return true;
    case 11:
      *out = DType::kQ3_K;
      return true;
    case 12:
      *out = DType::kQ4_K;
      return true;
    case 13:
      *out = DType::kQ5_K;
      return true;
    case 20:
      *out = DType::kIQ4_NL;
      return true;
    case 23:
      *out = DType::kIQ4_XS;
      return true;
    case 14:
      *out = DType::kQ6_K;
      return true;
    case 26:
      *out = DType::kI32;
      return true;
    case 27:
      *out = DType::kI64;
      return true;
    case 30:
      *out = DType::kBF16;
      return true;
    default:
      return false;
  }
}

// Names of ggml types this reader knows of but cannot dequantize (for the error message), up
// to the newest of ggml's enum ggml_type (gguf-py 0.19: NVFP4 = 40, Q1_0 = 41); 4, 5 and
// 31..33 were removed from ggml and are unknown.
constexpr const char* kSupportedTypes =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS";

const char* ggml_other_type_name(uint32_t t) {
  switch (t) {
    case 9:
      return "Q8_1";
    case 15:
      return "Q8_K";
    case 16:
      return "IQ2_XXS";
    case 17:
      return "IQ2_XS";
    case 18:
      return "IQ3_XXS";
    case 19:
      return "IQ1_S";
    case 21:
      return "IQ3_S";
    case 22:
      return "IQ2_S";
    case 24:
      return "I8";
    case 25:
      return "I16";
    case 28:
      return "F64";
    case 29:
      return "IQ1_M";
    case 34:
      return "TQ1_0";
    case 35:
      return "TQ2_0";
    case 39:
      return "MXFP4";
    case 40:
      return "NVFP4";
    case 41:
      return "Q1_0";
    default:
      return nullptr;
  }
}

class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void error(const std::string& msg) const { fail("GGUF file " + path_ + ": " + msg); }

  void need(uint64_t n, const std::string& what) const {
    if (n > remaining()) {
      error("truncated: " + what + " needs " + std::to_string(n) + " bytes at offset " +
            std::to_string(pos_) + " but only " + std::to_string(remaining()) + " remain");
    }
  }

  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " (string length)");
    if (len > remaining()) {
      error(what + ": string length " + std::to_string(len) + " at offset " +
            std::to_string(pos_ - 8) + " runs past the end of the file (" +
            std::to_string(remaining()) + " bytes remain)");
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

GgufValue read_value(Reader& r, uint32_t type, int depth, const std::string& what) {
  GgufValue out;
  switch (type) {
    case kU8:
      out.v = static_cast<uint64_t>(r.read<uint8_t>(what));
      break;
    case kI8:
      out.v = static_cast<int64_t>(r.read<int8_t>(what));
      break;
    case kU16:
      out.v = static_cast<uint64_t>(r.read<uint16_t>(what));
      break;
    case kI16:
      out.v = static_cast<int64_t>(r.read<int16_t>(what));
      break;
    case kU32:
      out.v = static_cast<uint64_t>(r.read<uint32_t>(what));
      break;
    case kI32:
      out.v = static_cast<int64_t>(r.read<int32_t>(what));
      break;
    case kU64:
      out.v = r.read<uint64_t>(what);
      break;
    case kI64:
      out.v = r.read<int64_t>(what);
      break;
    case kF32:
      out.v = static_cast<double>(r.read<float>(what));
      break;
    case kF64:
      out.v = r.read<double>(what);
      break;
    case kBool:
      out.v = r.read<uint8_t>(what) != 0;
      break;
    case kString:
      out.v = r.read_string(what);
      break;
    case kArray: {
      if (depth >= kMaxArrayDepth) {
        r.error(what + ": arrays nested more than " + std::to_string(kMaxArrayDepth) + " deep");
      }
      const uint32_t et = r.read<uint32_t>(what + " (array element type)");
      if (et >= kTypeCount) {
        r.error(what + ": array has unknown element type " + std::to_string(et));
      }
      const uint64_t count = r.read<uint64_t>(what + " (array length)");
      // Bound the count by what the remaining bytes can hold before allocating anything.
      if (count > r.remaining() / min_value_size(et)) {
        r.error(what + ": array of " + std::to_string(count) + " " + gguf_type_name(et) +
                " values cannot fit in the " + std::to_string(r.remaining()) +
                " bytes left in the file");
      }
      GgufArray arr;
      arr.reserve(static_cast<size_t>(count));
      for (uint64_t i = 0; i < count; ++i) arr.push_back(read_value(r, et, depth + 1, what));
      out.v = std::move(arr);
      break;
    }
    default:
      r.error(what + ": unknown value type " + std::to_string(type));
  }
  return out;
}

std::string value_type_name(const GgufValue& v) {
  switch (v.v.index()) {
    case 0:
      return "unsigned integer";
    case 1:
      return "signed integer";
    case 2:
      return "float";
    case 3:
      return "bool";
    case 4:
      return "string";
    case 5:
      return "array";
  }
  return "?";
}

}  // namespace

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  auto g = std::unique_ptr<GgufFile>(new GgufFile());
  g->file_ = MappedFile::open(path);
  const uint64_t fsize = g->file_->size();
  if (fsize == 0) fail("GGUF file " + path + " is empty");
  Reader r(g->file_->data(), fsize, path);

  // Magic.
  if (fsize < 4) r.error("too short (" + std::to_string(fsize) + " bytes) to be a GGUF file");
  {
    const uint8_t* m = g->file_->data();
    if (std::memcmp(m, "GGUF", 4) != 0) {
      char hex[64];
      std::snprintf(hex, sizeof hex, "%02x %02x %02x %02x", m[0], m[1], m[2], m[3]);
      std::string shown;
      for (int i = 0; i < 4; ++i) shown += (m[i] >= 0x20 && m[i] < 0x7f) ? char(m[i]) : '?';
      r.error("bad magic '" + shown + "' (bytes " + hex + "), expected 'GGUF'");
    }
    r.read<uint32_t>("magic");
  }

  g->version_ = r.read<uint32_t>("version");
  if (g->version_ != 2 && g->version_ != 3) {
    std::string msg = "unsupported GGUF version " + std::to_string(g->version_) +
                      " (only versions 2 and 3 are supported)";
    if (g->version_ != 0 && (g->version_ & 0xFFFFu) == 0) {
      msg += "; the file may be big-endian";
    }
    r.error(msg);
  }
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata key/value count");
  // Minimal encodings: a key/value is a u64 key length, >= 1 key byte, u32 type and >= 1 value
  // byte; a tensor info is a u64 name length, u32 n_dims, u32 type and u64 offset.
  constexpr uint64_t kMinKv = 8 + 1 + 4 + 1;
  constexpr uint64_t kMinTensor = 8 + 4 + 4 + 8;
  if (n_kv > r.remaining() / kMinKv) {
    r.error("metadata key/value count " + std::to_string(n_kv) + " cannot fit in the " +
            std::to_string(r.remaining()) + " bytes left");
  }
  if (n_tensors > r.remaining() / kMinTensor) {
    r.error("tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
            std::to_string(r.remaining()) + " bytes left");
  }

  // Metadata.
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = r.read_string("key of metadata entry " + std::to_string(i));
    if (key.empty()) r.error("metadata entry " + std::to_string(i) + " has an empty key");
    if (g->kv_.count(key)) r.error("duplicate metadata key '" + key + "'");
    const std::string what = "metadata key '" + key + "'";
    const uint32_t type = r.read<uint32_t>(what + " (value type)");
    if (type >= kTypeCount) {
      r.error(what + " has unknown value type " + std::to_string(type));
    }
    g->kv_.emplace(key, read_value(r, type, 0, what));
  }

  // Alignment.
  if (const GgufValue* a = g->get("general.alignment")) {
    const uint64_t* u = std::get_if<uint64_t>(&a->v);
    const int64_t* s = std::get_if<int64_t>(&a->v);
    uint64_t al = 0;
    if (u)
      al = *u;
    else if (s && *s > 0)
      al = static_cast<uint64_t>(*s);
    else
      r.error("general.alignment must be a positive integer");
    if (al == 0 || (al & (al - 1)) != 0) {
      r.error("general.alignment " + std::to_string(al) + " is not a power of two");
    }
    g->alignment_ = al;
  } else {
    g->alignment_ = kDefaultAlignment;
  }

  // Tensor infos.
  if (n_tensors > r.remaining() / kMinTensor) {
    r.error("tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
            std::to_string(r.remaining()) + " bytes left after the metadata");
  }
  std::vector<uint64_t> offsets;
  g->tensors_.reserve(static_cast<size_t>(n_tensors));
  offsets.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = r.read_string("name of tensor " + std::to_string(i));
    if (g->index_.count(t.name)) r.error("duplicate tensor name '" + t.name + "'");
    const std::string what = "tensor '" + t.name + "'";
    const uint32_t n_dims = r.read<uint32_t>(what + " (n_dims)");
    if (n_dims > kMaxDims) {
      r.error(what + " has " + std::to_string(n_dims) + " dimensions (at most " +
              std::to_string(kMaxDims) + ")");
    }
    int64_t ne[kMaxDims] = {1, 1, 1, 1};
    uint64_t numel = 1;
    for (uint32_t j = 0; j < n_dims; ++j) {
      const uint64_t v = r.read<uint64_t>(what + " (dimension " + std::to_string(j) + ")");
      if (v > static_cast<uint64_t>(INT64_MAX)) {
        r.error(what + " dimension " + std::to_string(j) + " is negative (" +
                std::to_string(static_cast<int64_t>(v)) + ")");
      }
      ne[j] = static_cast<int64_t>(v);
      auto m = checked_mul(numel, v);
      if (!m || *m > static_cast<uint64_t>(INT64_MAX)) {
        r.error(what + " has too many elements (element count overflows)");
      }
      numel = *m;
    }
    const uint32_t type = r.read<uint32_t>(what + " (type)");
    if (!ggml_to_dtype(type, &t.dtype)) {
      if (const char* other = ggml_other_type_name(type)) {
        r.error(what + " has ggml type " + std::to_string(type) + " (" + other +
                "), which is not supported (supported: " + kSupportedTypes + ")");
      }
      r.error(what + " has unknown ggml type " + std::to_string(type) +
              " (not in ggml's type enum as of gguf-py 0.19, whose newest is 41 = Q1_0)");
    }
    const uint64_t bs = static_cast<uint64_t>(dtype_block_size(t.dtype));
    const uint64_t bb = static_cast<uint64_t>(dtype_block_bytes(t.dtype));
    if (static_cast<uint64_t>(ne[0]) % bs != 0) {
      r.error(what + " of type " + std::string(dtype_name(t.dtype)) + " has " +
              std::to_string(ne[0]) + " elements per row, not a multiple of the block size " +
              std::to_string(bs));
    }
    auto nbytes = checked_mul(numel / bs, bb);
    if (!nbytes) r.error(what + ": byte size overflows");
    t.nbytes = *nbytes;
    for (uint32_t j = n_dims; j-- > 0;) t.shape.push_back(ne[j]);  // row-major
    const uint64_t offset = r.read<uint64_t>(what + " (data offset)");
    if (offset % g->alignment_ != 0) {
      r.error(what + " data offset " + std::to_string(offset) +
              " is not a multiple of the alignment " + std::to_string(g->alignment_));
    }
    g->index_.emplace(t.name, g->tensors_.size());
    g->tensors_.push_back(std::move(t));
    offsets.push_back(offset);
  }

  // Data section: starts at the next multiple of the alignment after the tensor infos.
  uint64_t data_start = fsize;
  if (n_tensors > 0) {
    const uint64_t pad = (g->alignment_ - r.pos() % g->alignment_) % g->alignment_;
    auto ds = checked_add(r.pos(), pad);
    if (!ds || *ds > fsize) {
      r.error("the data section (aligned to " + std::to_string(g->alignment_) +
              ") starts past the end of the file");
    }
    data_start = *ds;
  }
  const uint64_t data_size = fsize - data_start;
  const uint8_t* data = g->file_->data() + data_start;
  std::vector<size_t> order(g->tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) {
    TensorInfo& t = g->tensors_[i];
    auto end = checked_add(offsets[i], t.nbytes);
    if (!end || *end > data_size) {
      r.error("tensor '" + t.name + "' data (offset " + std::to_string(offsets[i]) + ", " +
              std::to_string(t.nbytes) + " bytes) runs past the end of the file (data section is " +
              std::to_string(data_size) + " bytes)");
    }
    t.data = data + offsets[i];
    order[i] = i;
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return offsets[a] != offsets[b] ? offsets[a] < offsets[b]
                                    : g->tensors_[a].nbytes < g->tensors_[b].nbytes;
  });
  uint64_t prev_end = 0;
  const TensorInfo* prev = nullptr;
  for (size_t i : order) {
    const TensorInfo& t = g->tensors_[i];
    if (t.nbytes == 0) continue;
    if (prev && offsets[i] < prev_end) {
      r.error("tensor '" + t.name + "' data (offset " + std::to_string(offsets[i]) +
              ") overlaps tensor '" + prev->name + "' (ends at " + std::to_string(prev_end) + ")");
    }
    prev_end = offsets[i] + t.nbytes;
    prev = &t;
  }
  return g;
}

const GgufValue* GgufFile::get(std::string_view key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {

[[noreturn]] void missing_key(const std::string& path, std::string_view key) {
  fail("GGUF file " + path + ": metadata key '" + std::string(key) + "' is missing");
}
[[noreturn]] void wrong_type(const std::string& path, std::string_view key, const GgufValue& v,
                             const char* expected) {
  fail("GGUF file " + path + ": metadata key '" + std::string(key) + "' is a " +
       value_type_name(v) + ", expected " + expected);
}

}  // namespace

std::string GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = get(key);
  if (!v) missing_key(path(), key);
  const std::string* s = std::get_if<std::string>(&v->v);
  if (!s) wrong_type(path(), key, *v, "a string");
  return *s;
}

std::string GgufFile::get_string(std::string_view key, const std::string& def) const {
  return get(key) ? get_string(key) : def;
}

uint64_t GgufFile::get_uint(std::string_view key) const {
  const GgufValue* v = get(key);
  if (!v) missing_key(path(), key);
  if (const uint64_t* u = std::get_if<uint64_t>(&v->v)) return *u;
  if (const int64_t* s = std::get_if<int64_t>(&v->v)) {
    if (*s < 0) {
      fail("GGUF file " + path() + ": metadata key '" + std::string(key) + "' is negative (" +
           std::to_string(*s) + "), expected a non-negative integer");
    }
    return static_cast<uint64_t>(*s);
  }
  wrong_type(path(), key, *v, "a non-negative integer");
}

uint64_t GgufFile::get_uint(std::string_view key, uint64_t def) const {
  return get(key) ? get_uint(key) : def;
}

double GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = get(key);
  if (!v) missing_key(path(), key);
  if (const double* d = std::get_if<double>(&v->v)) return *d;
  if (const uint64_t* u = std::get_if<uint64_t>(&v->v)) return static_cast<double>(*u);
  if (const int64_t* s = std::get_if<int64_t>(&v->v)) return static_cast<double>(*s);
  wrong_type(path(), key, *v, "a number");
}

double GgufFile::get_float(std::string_view key, double def) const {
  return get(key) ? get_float(key) : def;
}

bool GgufFile::get_bool(std::string_view key, bool def) const {
  const GgufValue* v = get(key);
  if (!v) return def;
  if (const bool* b = std::get_if<bool>(&v->v)) return *b;
  wrong_type(path(), key, *v, "a bool");
}

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = get(key);
  if (!v) missing_key(path(), key);
  const GgufArray* a = std::get_if<GgufArray>(&v->v);
  if (!a) wrong_type(path(), key, *v, "an array of strings");
  std::vector<std::string> out;
  out.reserve(a->size());
  for (size_t i = 0; i < a->size(); ++i) {
    const std::string* s = std::get_if<std::string>(&(*a)[i].v);
    if (!s) {
      fail("GGUF file " + path() + ": metadata key '" + std::string(key) + "' element " +
           std::to_string(i) + " is a " + value_type_name((*a)[i]) + ", expected a string");
    }
    out.push_back(*s);
  }
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = get(key);
  if (!v) missing_key(path(), key);
  const GgufArray* a = std::get_if<GgufArray>(&v->v);
  if (!a) wrong_type(path(), key, *v, "an array of integers");
  std::vector<int64_t> out;
  out.reserve(a->size());
  for (size_t i = 0; i < a->size(); ++i) {
    const GgufValue& e = (*a)[i];
    if (const int64_t* s = std::get_if<int64_t>(&e.v)) {
      out.push_back(*s);
    } else if (const uint64_t* u = std::get_if<uint64_t>(&e.v);
               u && *u <= static_cast<uint64_t>(INT64_MAX)) {
      out.push_back(static_cast<int64_t>(*u));
    } else {
      fail("GGUF file " + path() + ": metadata key '" + std::string(key) + "' element " +
           std::to_string(i) + " is not an integer representable as int64");
    }
  }
  return out;
}

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> out;
  out.reserve(kv_.size());
  for (const auto& [k, _] : kv_) out.push_back(k);
  return out;
}

const TensorInfo* GgufFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace hybridgen
