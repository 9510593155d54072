// GGUF v2/v3 reader (llama.cpp's format): metadata key/values and tensor infos, mapped.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "model/tensor.h"
#include "util/mapped_file.h"

namespace hybridgen {

struct GgufValue;
using GgufArray = std::vector<GgufValue>;

// One metadata value. Integers of every width are widened (signed to int64_t, unsigned to
// uint64_t); float32/64 to double.
struct GgufValue {
  std::variant<uint64_t, int64_t, double, bool, std::string, GgufArray> v;
};

// Every length, count, offset and size in the file is checked before use (string and array
// lengths inside the remaining bytes, bounded dimension counts, alignment a power of two,
// tensor data inside the file and aligned, no overlaps, known tensor types, checked
// element-count arithmetic). Failures throw hybridgen::Error naming the file and the key or
// tensor.
class GgufFile {
 public:
  static std::unique_ptr<GgufFile> open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  const GgufValue* get(std::string_view key) const;  // nullptr if absent
  // Typed getters: throw naming the key if absent (unless a default is given) or of the
  // wrong type.
  std::string get_string(std::string_view key) const;
  std::string get_string(std::string_view key, const std::string& def) const;
  uint64_t get_uint(std::string_view key) const;  // any non-negative integer type
  uint64_t get_uint(std::string_view key, uint64_t def) const;
  double get_float(std::string_view key) const;  // float or integer
  double get_float(std::string_view key, double def) const;
  bool get_bool(std::string_view key, bool def) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<std::string> keys() const;

  // Shapes are reversed from GGUF's ne[] into row-major order (see TensorInfo).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;  // nullptr if absent

 private:
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue, std::less<>> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

}  // namespace hybridgen
