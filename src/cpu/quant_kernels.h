// Internal to the quantized GEMV (quant_gemv.cpp): the row kernels of each path, one file per
// path (quant_dot_portable.cpp, quant_dot_avx2.cpp, quant_dot_avx512.cpp).
#pragma once
#include <cstdint>

#include "cpu/gemv.h"
#include "cpu/quant_gemv.h"

namespace hybridgen::cpu::quant {

// Computes y[r * ldy + o] = row o of w · activation row r, for o in [o0, o1), r < x.m.
//   w: [rows, in / block] blocks (row o starts at w + o * row_bytes)
using RowsFn = void (*)(const uint8_t* w, int64_t row_bytes, const QuantActivations& x, float* y,
                        int ldy, int o0, int o1);

// The kernels of one path, by weight type; nullptr where the path has none (the caller then
// takes the next lower path).
struct Kernels {
  RowsFn q4_0 = nullptr, q4_1 = nullptr, q8_0 = nullptr, q4_k = nullptr, q6_k = nullptr;
};
Kernels portable_kernels();
Kernels avx2_kernels();
Kernels avx512_kernels(bool vnni);

// Shared scalar helpers (bit-exact ggml formats).
float f16(const uint8_t* p);  // an f16 at p (unaligned) widened to float
// ggml's get_scale_min_k4: sub-block j's 6-bit scale and min of a Q4_K block's 12 bytes.
void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m);

}  // namespace hybridgen::cpu::quant
