// Small vector kernels of the hot loops outside the GEMMs — attention's dot products and value
// aggregation, bf16 conversion of activations and KV — each with AVX-512 / AVX2 / portable
// bodies chosen at run time (cpu/isa.h). Call vec_kernels() once outside a loop and use its
// function pointers inside: the choice is made once per process.
#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace hybridgen::cpu {

struct VecKernels {
  // Σ a[i] * b[i], float32 accumulation.   a, b: [n]
  float (*dot)(const float* a, const float* b, int n);
  // y[i] += w * x[i].   x, y: [n]
  void (*axpy)(float w, const float* x, float* y, int n);
  // Σ a[i] * float(b[i]) with b in bf16 (the host key stores).   a: [n] f32, b: [n] bf16
  float (*dot_bf16)(const float* a, const uint16_t* b, int n);
  // y[i] += w * float(x[i]) with x in bf16 (the host value stores).   x: [n] bf16, y: [n]
  void (*axpy_bf16)(float w, const uint16_t* x, float* y, int n);
  // dst[i] = bf16(src[i]), round to nearest even, NaN kept quiet: bit-identical to
  // hybridgen::f32_to_bf16 on every path.   src: [n] float32, dst: [n] bf16
  void (*to_bf16)(const float* src, uint16_t* dst, int64_t n);
  // dst[i] = float(src[i]) (exact).   src: [n] bf16, dst: [n] float32
  void (*from_bf16)(const uint16_t* src, float* dst, int64_t n);
};

// The kernels for active_isa().
const VecKernels& vec_kernels();
// The kernels of one level (tests compare every level the CPU has with the portable one).
// PRECOND: isa <= detected_isa().
const VecKernels& vec_kernels_for(Isa isa);
// The level vec_kernels() uses (avx512bf16 uses the avx512 bodies: nothing here needs BF16).
Isa vec_isa();

}  // namespace hybridgen::cpu
