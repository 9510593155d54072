#include "model/embedding_table.h"

#include <cstring>
#include <string>

#include "hybridgen/error.h"
#include "model/dequant.h"
#include "util/check.h"

namespace hybridgen {

EmbeddingTable EmbeddingTable::from_f32(int64_t rows, int64_t cols, std::vector<float> data) {
  HG_CHECK(rows >= 0 && cols >= 0 && data.size() == uint64_t(rows) * uint64_t(cols),
           "embedding table: " + std::to_string(data.size()) + " floats for " +
               std::to_string(rows) + " x " + std::to_string(cols));
  EmbeddingTable t;
  t.rows_ = rows;
  t.cols_ = cols;
  t.dtype_ = DType::kF32;
  t.row_bytes_ = cols * int64_t(sizeof(float));
  t.f32_ = std::move(data);
  return t;
}

EmbeddingTable EmbeddingTable::from_blocks(DType type, int64_t rows, int64_t cols,
                                           std::vector<uint8_t> blocks, const std::string& what) {
  const int64_t bs = dtype_block_size(type), bb = dtype_block_bytes(type);
  if (rows < 0 || cols <= 0 || cols % bs != 0)
    throw Error(what + ": rows of " + std::to_string(cols) + " elements are not whole " +
                std::string(dtype_name(type)) + " blocks of " + std::to_string(bs));
  const int64_t row_bytes = cols / bs * bb;
  if (blocks.size() != uint64_t(rows) * uint64_t(row_bytes))
    throw Error(what + ": " + std::to_string(blocks.size()) + " bytes, but " +
                std::to_string(rows) + " rows of " + std::to_string(cols) + " " +
                std::string(dtype_name(type)) + " elements take " +
                std::to_string(uint64_t(rows) * uint64_t(row_bytes)));
  EmbeddingTable t;
  t.rows_ = rows;
  t.cols_ = cols;
  t.dtype_ = type;
  t.row_bytes_ = row_bytes;
  t.raw_ = std::move(blocks);
  return t;
}

uint64_t EmbeddingTable::bytes() const {
  return dtype_ == DType::kF32 ? f32_.size() * sizeof(float) : raw_.size();
}

void EmbeddingTable::lookup(const int32_t* ids, int n, float* out) const {
  // One row per token: a prefill chunk's 512 rows are worth a parallel loop, a decode step's
  // one row is not (the team's fork would cost more than the copy).
#pragma omp parallel for schedule(static) if (n > 16)
  for (int t = 0; t < n; ++t) {
    float* o = out + int64_t(t) * cols_;
    if (dtype_ == DType::kF32)
      std::memcpy(o, f32_.data() + int64_t(ids[t]) * cols_, sizeof(float) * cols_);
    else
      dequantize(dtype_, raw_.data() + int64_t(ids[t]) * row_bytes_, o, cols_);
  }
}

std::vector<float> EmbeddingTable::to_f32() const {
  if (dtype_ == DType::kF32) return f32_;
  std::vector<float> all(uint64_t(rows_) * uint64_t(cols_));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows_; ++r)
    dequantize(dtype_, raw_.data() + r * row_bytes_, all.data() + r * cols_, cols_);
  return all;
}

}  // namespace hybridgen
