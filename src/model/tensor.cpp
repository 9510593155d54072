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
    case DType::kQ5_0:
      return "Q5_0";
    case DType::kQ5_1:
      return "Q5_1";
    case DType::kQ2_K:
      return "Q2_K";
    case DType::kQ3_K:
      return "Q3_K";
    case DType::kQ5_K:
      return "Q5_K";
    case DType::kIQ4_NL:
      return "IQ4_NL";
    case DType::kIQ4_XS:
      return "IQ4_XS";
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
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kIQ4_NL:
      return 32;
    case DType::kQ4_K:
    case DType::kQ6_K:
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ5_K:
    case DType::kIQ4_XS:
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
    case DType::kQ5_0:
      return 2 + 4 + 16;  // f16 d, 32 fifth bits, 16 bytes of nibbles
    case DType::kQ5_1:
      return 2 + 2 + 4 + 16;  // f16 d, f16 m, 32 fifth bits, 16 bytes of nibbles
    case DType::kQ2_K:
      return 16 + 64 + 2 + 2;  // 4-bit scale|min pairs, 2-bit q, f16 d, f16 dmin
    case DType::kQ3_K:
      return 32 + 64 + 12 + 2;  // high-bit mask, 2-bit q, 6-bit scales, f16 d
    case DType::kQ5_K:
      return 2 + 2 + 12 + 32 + 128;  // d, dmin, 6-bit scales/mins, fifth bits, nibbles
    case DType::kIQ4_NL:
      return 2 + 16;  // f16 d, 16 bytes of table indices
    case DType::kIQ4_XS:
      return 2 + 2 + 4 + 128;  // f16 d, scales_h (2 bits x 8), scales_l (4 bits x 8), indices
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

}  // namespace hybridgen
