// safetensors: one file, or an HF model directory with sharded files and an index.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/tensor.h"
#include "util/mapped_file.h"

namespace hybridgen {

// One .safetensors file. The header is validated as hostile input (length cap, JSON shape,
// duplicate names, dtype known, shape x dtype == byte count with checked arithmetic, offsets
// inside the data section, no overlaps); every failure throws hybridgen::Error naming the
// file and the tensor or field.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;  // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::shared_ptr<MappedFile> file_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of an HF model directory: model.safetensors, or model.safetensors.index.json
// with its shards (each shard opened once; a name the index maps to a shard that lacks it is
// an error; duplicate names across shards are an error).
class SafetensorsModel {
 public:
  static std::unique_ptr<SafetensorsModel> open_dir(const std::string& dir);

  const TensorInfo* find(std::string_view name) const;  // nullptr if absent
  std::vector<std::string> names() const;
  // Which file holds `name` (for error messages).
  std::string file_of(std::string_view name) const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>, std::less<>> index_;
};

}  // namespace hybridgen
