// Tensors as they sit in a checkpoint file: dtype, shape and a pointer into the mapped file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hybridgen {

// Element types of checkpoint tensors. Block-quantized types (GGUF) store `block_size()`
// elements in `block_bytes()` bytes.
enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ4_0,    // 32 elements: f16 scale d, 16 bytes of 4-bit q; x = d * (q - 8)
  kQ4_1,    // 32 elements: f16 scale d, f16 min m, 16 bytes of 4-bit q; x = d * q + m
  kQ8_0,    // 32 elements: f16 scale d, 32 int8 q; x = d * q
  kQ4_K,    // 256 elements, 144 bytes (llama.cpp k-quants)
  kQ6_K,    // 256 elements, 210 bytes
  kQ5_0,    // 32 elements: f16 d, 32 high bits, 16 bytes of low nibbles; x = d * (q - 16)
  kQ5_1,    // 32 elements: f16 d, f16 m, 32 high bits, 16 bytes of low nibbles; x = d * q + m
  kQ2_K,    // 256 elements, 84 bytes
  kQ3_K,    // 256 elements, 110 bytes
  kQ5_K,    // 256 elements, 176 bytes
  kIQ4_NL,  // 32 elements: f16 d, 16 bytes of 4-bit indices into a fixed non-linear table
  kIQ4_XS,  // 256 elements, 136 bytes: IQ4_NL's table with 6-bit sub-block scales
  kI32,
  kI64,
};

std::string_view dtype_name(DType t);
int64_t dtype_block_size(DType t);   // elements per block (1 for plain types)
int64_t dtype_block_bytes(DType t);  // bytes per block

// A read-only view of one tensor inside a mapped checkpoint.
// `shape` is row-major, outermost dimension first (the safetensors / PyTorch order): a linear
// layer's weight is [out_features, in_features]. GGUF's ne[] order is reversed on load.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapped file; valid while the file lives
  uint64_t nbytes = 0;

  // PRECOND: the readers checked that the product fits; a zero dimension makes it 0 whatever
  // the others are (multiplying in order could overflow before reaching the zero).
  int64_t numel() const {
    for (int64_t d : shape)
      if (d == 0) return 0;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace hybridgen
