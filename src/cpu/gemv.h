// Matrix-vector products for decode (a few rows of activations against [out, in] weights):
// memory-bound streams over the weights, where oneDNN's matmul reaches only about half the
// machine's read bandwidth at m = 1 (measured: 15 of 32 GB/s on the 2-core development box).
#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace hybridgen::cpu {

// Largest m the GEMV path takes; larger batches go to oneDNN's matmul.
constexpr int kGemvMaxRows = 4;

// y[r, o] = sum_i x[r, i] * w[o, i] (+ bias[o]) for r < m.
//   w: [out, in] float32;  x: [m, in];  bias: [out] or null;  y: [m, out]
void gemv_f32(const float* w, const float* x, const float* bias, float* y, int m, int out, int in);
// Same with bf16 weights and the activations already rounded to bf16 (as oneDNN's bf16 matmul
// does), accumulating in float32.
//   w: [out, in] bf16;  x: [m, in] bf16
void gemv_bf16(const uint16_t* w, const uint16_t* x, const float* bias, float* y, int m, int out,
               int in);

// The level each takes on this machine (active_isa(); bf16 weights use the AVX-512 BF16 dot
// product only at avx512bf16, and widen to float32 below it).
Isa gemv_f32_isa();
Isa gemv_bf16_isa();
// The same products on an explicit level, for tests. PRECOND: isa <= detected_isa().
//   avx512bf16: VDPBF16PS (bf16 × bf16 products, exact in float32)
//   avx512, avx2: bf16 widened to float32 (exact), FMA in float32
//   portable: scalar loops. Every level computes the same products; only the order of the
//   float32 sums differs.
void gemv_f32_on(Isa isa, const float* w, const float* x, const float* bias, float* y, int m,
                 int out, int in);
void gemv_bf16_on(Isa isa, const uint16_t* w, const uint16_t* x, const float* bias, float* y, int m,
                  int out, int in);

}  // namespace hybridgen::cpu
