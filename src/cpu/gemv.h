// Matrix-vector products for decode (a few rows of activations against [out, in] weights):
// memory-bound streams over the weights, where oneDNN's matmul reaches only about half the
// machine's read bandwidth at m = 1 (measured: 15 of 32 GB/s on the 2-core development box).
#pragma once
#include <cstdint>

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

}  // namespace hybridgen::cpu
