// Internal to the 16-bit-activation quantized GEMV (quant_gemv16.cpp): the row kernels of each
// path, one file per path (quant_dot16_portable.cpp, quant_dot16_avx2.cpp,
// quant_dot16_avx512.cpp).
#pragma once
#include <cstdint>

#include "cpu/gemv.h"
#include "cpu/quant/quant_gemv16.h"

namespace hybridgen::cpu::quant {

// Computes y[r * ldy + o] = row o of w · activation row r, for o in [o0, o1), r < x.m.
//   w: [rows, in / block] blocks (row o starts at w + o * row_bytes)
using Rows16Fn = void (*)(const uint8_t* w, int64_t row_bytes, const QuantActivations16& x,
                          float* y, int ldy, int o0, int o1);

// Every path has a kernel for every native type.
struct Kernels16 {
  Rows16Fn q4_0 = nullptr, q4_1 = nullptr, q8_0 = nullptr, q4_k = nullptr, q6_k = nullptr;
  // Rows interleaved by four (repack_rows4): w is the repacked buffer, rb the GGUF row bytes;
  // PRECOND: o0 % 4 == 0. nullptr where the path has none (the avx2 kernel runs instead).
  Rows16Fn q4_0_r4 = nullptr, q4_1_r4 = nullptr, q8_0_r4 = nullptr;
};
Kernels16 portable_kernels16();
Kernels16 avx2_kernels16();
Kernels16 avx512_kernels16(bool vnni);

}  // namespace hybridgen::cpu::quant
