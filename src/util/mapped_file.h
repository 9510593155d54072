// A read-only memory map of a whole file. Checkpoints are mapped, never copied: tensors point
// into the mapping, which lives as long as any shared_ptr to it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace hybridgen {

class MappedFile {
 public:
  // Throws hybridgen::Error naming the path if it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace hybridgen
