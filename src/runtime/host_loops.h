// The hybrid runtime's inner host loops (dot products and axpys over float32 and bf16 rows), in
// one place: each forwards to the run-time dispatched kernels of src/cpu/vec.h (AVX-512, AVX2 or
// the x86-64 baseline, whichever the CPU and HYBRIDGEN_CPU_ISA allow).
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/vec.h"

namespace hybridgen::runtime::host {

inline float bf16f(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float dot_f32(const float* a, const float* b, int n) {
  return cpu::vec_kernels().dot(a, b, n);
}
inline float dot_bf16(const float* a, const uint16_t* b, int n) {
  return cpu::vec_kernels().dot_bf16(a, b, n);
}
inline void axpy_f32(float w, const float* x, float* y, int n) {
  cpu::vec_kernels().axpy(w, x, y, n);
}
inline void axpy_bf16(float w, const uint16_t* x, float* y, int n) {
  cpu::vec_kernels().axpy_bf16(w, x, y, n);
}
// bf16 -> float32, n elements.
inline void bf16_to_f32_row(const uint16_t* x, float* y, int64_t n) {
  cpu::vec_kernels().from_bf16(x, y, n);
}

}  // namespace hybridgen::runtime::host
