// Conversion of checkpoint tensors (plain or block-quantized) to float32.
#pragma once
#include <cstdint>

#include "model/tensor.h"

namespace hybridgen {

// dst[0..n) = the n elements stored at src in type `t`. PRECOND: n is a multiple of
// dtype_block_size(t) and src holds n / block_size * block_bytes bytes.
void dequantize(DType t, const uint8_t* src, float* dst, int64_t n);

// ggml's kvalues_iq4nl: the 16 non-linear levels of IQ4_NL and IQ4_XS.
extern const int8_t kIq4nlValues[16];

// IEEE half and bfloat16 <-> float.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t b);
uint16_t f32_to_bf16(float f);  // round to nearest even, NaN preserved

}  // namespace hybridgen
