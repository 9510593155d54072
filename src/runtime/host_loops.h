// The hybrid runtime's inner host loops (dot products and axpys over float32 and bf16 rows), in
// one place so that they can be routed to run-time dispatched ISA kernels (src/cpu/) without
// touching the runtime. Plain loops with `omp simd`: the compiler vectorizes them for the
// build's target.
#pragma once
#include <cstdint>
#include <cstring>

namespace hybridgen::runtime::host {

inline float bf16f(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float dot_f32(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline float dot_bf16(const float* a, const uint16_t* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * bf16f(b[i]);
  return s;
}

inline void axpy_f32(float w, const float* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += w * x[i];
}

inline void axpy_bf16(float w, const uint16_t* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += w * bf16f(x[i]);
}

// bf16 -> float32, n elements.
inline void bf16_to_f32_row(const uint16_t* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = bf16f(x[i]);
}

}  // namespace hybridgen::runtime::host
