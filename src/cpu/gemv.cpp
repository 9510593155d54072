#include "cpu/gemv.h"

// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized inside masked loads (a false positive in
// the system header's own code); silence it for this file only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>

namespace hybridgen::cpu {

namespace {

// Output rows per OpenMP work item: enough to amortise scheduling, small enough to balance.
constexpr int kRowsPerChunk = 16;

float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// ---- portable paths -------------------------------------------------------------------------
void rows_f32_portable(const float* w, const float* x, float* y, int m, int out, int in, int o0,
                       int o1) {
  for (int o = o0; o < o1; ++o) {
    const float* row = w + static_cast<int64_t>(o) * in;
    for (int r = 0; r < m; ++r) {
      const float* xr = x + static_cast<int64_t>(r) * in;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < in; ++i) acc += row[i] * xr[i];
      y[static_cast<int64_t>(r) * out + o] = acc;
    }
  }
}

void rows_bf16_portable(const uint16_t* w, const uint16_t* x, float* y, int m, int out, int in,
                        int o0, int o1) {
  for (int o = o0; o < o1; ++o) {
    const uint16_t* row = w + static_cast<int64_t>(o) * in;
    for (int r = 0; r < m; ++r) {
      const uint16_t* xr = x + static_cast<int64_t>(r) * in;
      float acc = 0.f;
      for (int i = 0; i < in; ++i) acc += bf16_to_float(row[i]) * bf16_to_float(xr[i]);
      y[static_cast<int64_t>(r) * out + o] = acc;
    }
  }
}

// ---- AVX-512 paths (chosen at run time) ------------------------------------------------------
__attribute__((target("avx512f"))) void rows_f32_avx512(const float* w, const float* x, float* y,
                                                        int m, int out, int in, int o0, int o1) {
  for (int o = o0; o < o1; ++o) {
    const float* row = w + static_cast<int64_t>(o) * in;
    __m512 acc[kGemvMaxRows];
    for (int r = 0; r < m; ++r) acc[r] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= in; i += 16) {
      const __m512 wv = _mm512_loadu_ps(row + i);
      for (int r = 0; r < m; ++r)
        acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + static_cast<int64_t>(r) * in + i), acc[r]);
    }
    if (i < in) {
      const __mmask16 k = static_cast<__mmask16>((1u << (in - i)) - 1);
      const __m512 wv = _mm512_maskz_loadu_ps(k, row + i);
      for (int r = 0; r < m; ++r)
        acc[r] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(k, x + static_cast<int64_t>(r) * in + i),
                                 acc[r]);
    }
    for (int r = 0; r < m; ++r) y[static_cast<int64_t>(r) * out + o] = _mm512_reduce_add_ps(acc[r]);
  }
}

// VDPBF16PS: 32 bf16 products per instruction, summed pairwise into 16 float lanes.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void rows_bf16_avx512(
    const uint16_t* w, const uint16_t* x, float* y, int m, int out, int in, int o0, int o1) {
  for (int o = o0; o < o1; ++o) {
    const uint16_t* row = w + static_cast<int64_t>(o) * in;
    __m512 acc[kGemvMaxRows];
    for (int r = 0; r < m; ++r) acc[r] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= in; i += 32) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(row + i);
      for (int r = 0; r < m; ++r)
        acc[r] = _mm512_dpbf16_ps(
            acc[r], wv, (__m512bh)_mm512_loadu_si512(x + static_cast<int64_t>(r) * in + i));
    }
    if (i < in) {
      const __mmask32 k = static_cast<__mmask32>((1ull << (in - i)) - 1);
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(k, row + i);
      for (int r = 0; r < m; ++r)
        acc[r] = _mm512_dpbf16_ps(
            acc[r], wv,
            (__m512bh)_mm512_maskz_loadu_epi16(k, x + static_cast<int64_t>(r) * in + i));
    }
    for (int r = 0; r < m; ++r) y[static_cast<int64_t>(r) * out + o] = _mm512_reduce_add_ps(acc[r]);
  }
}

bool has_avx512f() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}
bool has_avx512bf16() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512bf16");
  return yes;
}

template <typename Rows>
void run_chunks(const Rows& rows, const float* bias, float* y, int m, int out) {
  const int chunks = (out + kRowsPerChunk - 1) / kRowsPerChunk;
#pragma omp parallel for schedule(static)
  for (int c = 0; c < chunks; ++c) {
    const int o0 = c * kRowsPerChunk, o1 = o0 + kRowsPerChunk < out ? o0 + kRowsPerChunk : out;
    rows(o0, o1);
    if (bias)
      for (int r = 0; r < m; ++r)
        for (int o = o0; o < o1; ++o) y[static_cast<int64_t>(r) * out + o] += bias[o];
  }
}

}  // namespace

void gemv_f32(const float* w, const float* x, const float* bias, float* y, int m, int out, int in) {
  const bool avx = has_avx512f();
  run_chunks(
      [&](int o0, int o1) {
        if (avx)
          rows_f32_avx512(w, x, y, m, out, in, o0, o1);
        else
          rows_f32_portable(w, x, y, m, out, in, o0, o1);
      },
      bias, y, m, out);
}

void gemv_bf16(const uint16_t* w, const uint16_t* x, const float* bias, float* y, int m, int out,
               int in) {
  const bool avx = has_avx512bf16();
  run_chunks(
      [&](int o0, int o1) {
        if (avx)
          rows_bf16_avx512(w, x, y, m, out, in, o0, o1);
        else
          rows_bf16_portable(w, x, y, m, out, in, o0, o1);
      },
      bias, y, m, out);
}

}  // namespace hybridgen::cpu
