// Internal to the quantized GEMV (quant_gemv.cpp): the row kernels of each path, one file per
// path (quant_dot_portable.cpp, quant_dot_avx2.cpp, quant_dot_avx512.cpp).
#pragma once
#include <cstdint>

#include "cpu/gemv.h"
#include "cpu/quant/quant_gemv.h"

namespace hybridgen::cpu::quant {

// Computes y[r * ldy + o] = row o of w · activation row r, for o in [o0, o1), r < x.m.
//   w: [rows, in / block] blocks (row o starts at w + o * row_bytes)
using RowsFn = void (*)(const uint8_t* w, int64_t row_bytes, const QuantActivations& x, float* y,
                        int ldy, int o0, int o1);

// The kernels of one path, by weight type; nullptr where the path has none (the caller then
// takes the next lower path).
struct Kernels {
  RowsFn q4_0 = nullptr, q4_1 = nullptr, q8_0 = nullptr, q4_k = nullptr, q6_k = nullptr;
  RowsFn q5_0 = nullptr, q5_1 = nullptr, iq4_nl = nullptr;                  // vs q8_0 / q8_1
  RowsFn q5_k = nullptr, q3_k = nullptr, q2_k = nullptr, iq4_xs = nullptr;  // vs q8_K
};
Kernels portable_kernels();
Kernels avx2_kernels();
Kernels avx512_kernels(bool vnni);

// Shared scalar helpers (bit-exact ggml formats).
float f16(const uint8_t* p);  // an f16 at p (unaligned) widened to float
// ggml's get_scale_min_k4: sub-block j's 6-bit scale and min of a Q4_K block's 12 bytes.
void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m);
// Q3_K's 16 six-bit sub-block scales (12 bytes at q), offset 32 taken off: -32..31.
void scales_q3_k(const uint8_t* q, int8_t out[16]);
// IQ4_XS sub-block ib's (of 8) six-bit scale, offset 32 taken off: -32..31.
int scale_iq4_xs(const uint8_t* blk, int ib);

}  // namespace hybridgen::cpu::quant
