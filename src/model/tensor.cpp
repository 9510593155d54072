#include "model/tensor.h"

namespace hybridgen {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kQ4_0:
      return "Q4_0";
    case DType::kQ4_1:
      return "Q4_1";
    case DType::kQ8_0:
      return "Q8_0";
    case DType::kQ4_K:
      return "Q4_K";
    case DType::kQ6_K:
      return "Q6_K";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  return "UNKNOWN";
}

int64_t dtype_block_size(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      return 32;
    case DType::kQ4_K:
    case DType::kQ6_K:
      return 256;
    default:
      return 1;
  }
}

int64_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 2;
    case DType::kQ4_0:
      return 2 + 16;  // f16 d, 16 bytes of nibbles
    case DType::kQ4_1:
      return 2 + 2 + 16;  // f16 d, f16 m, 16 bytes of nibbles
    case DType::kQ8_0:
      return 2 + 32;  // f16 d, 32 int8
    case DType::kQ4_K:
      return 2 + 2 + 12 + 128;  // d, dmin, 12 bytes of 6-bit scales/mins, 128 q
    case DType::kQ6_K:
      return 128 + 64 + 16 + 2;  // ql, qh, int8 scales, f16 d
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

}  // namespace hybridgen
