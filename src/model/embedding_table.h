// The token embedding table: one row per token id, read once per input token by a lookup (not
// streamed every step like the projections). Held as the checkpoint stores it when that is a
// GGUF block-quantized type: a looked-up row is dequantized by the bit-exact dequantizer
// (model/dequant.h), so it equals the row of the table dequantized at load, at the file's size
// (the default model: 30 MB of Q8_0 instead of 113 MB of float32). Otherwise float32.
#pragma once
#include <cstdint>
#include <vector>

#include "model/tensor.h"

namespace hybridgen {

class EmbeddingTable {
 public:
  EmbeddingTable() = default;
  // data: [rows, cols] float32, row-major.
  static EmbeddingTable from_f32(int64_t rows, int64_t cols, std::vector<float> data);
  // blocks: rows × (cols / dtype_block_size(type)) blocks of `type`, row-major (GGUF's layout).
  // Throws hybridgen::Error (naming `what`) when cols is not a whole number of blocks or the
  // byte count does not match.
  static EmbeddingTable from_blocks(DType type, int64_t rows, int64_t cols,
                                    std::vector<uint8_t> blocks, const std::string& what);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  bool empty() const { return rows_ == 0; }
  DType dtype() const { return dtype_; }  // kF32, or the block type kept as stored
  uint64_t bytes() const;                 // held in memory

  // out: [n, cols] float32, row t = the row of ids[t]. PRECOND: 0 <= ids[t] < rows().
  void lookup(const int32_t* ids, int n, float* out) const;
  // The whole table as float32 [rows, cols]: for a backend that keeps its own float copy.
  std::vector<float> to_f32() const;

 private:
  int64_t rows_ = 0, cols_ = 0;
  DType dtype_ = DType::kF32;
  int64_t row_bytes_ = 0;     // bytes of one row as held
  std::vector<float> f32_;    // [rows, cols] when dtype_ == kF32
  std::vector<uint8_t> raw_;  // [rows, row_bytes] as stored otherwise
};

}  // namespace hybridgen
