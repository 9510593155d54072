#include "cpu/gemv.h"

// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized inside masked loads (a false positive in
// the system header's own code); silence it for this file only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>
#include <vector>

#include "cpu/vec.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace {

// Output rows per OpenMP work item: enough to amortise scheduling, small enough to balance.
constexpr int kRowsPerChunk = 16;

inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Every kernel computes y[r, o] for o in [o0, o1) and r < m:
//   w: [out, in];  x: [m, in] float32 (or bf16 for the BF16 dot product);  y: [m, out]

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

// x: [m, in] float32 (the bf16 activations widened).
void rows_bf16_portable(const uint16_t* w, const float* x, float* y, int m, int out, int in, int o0,
                        int o1) {
  for (int o = o0; o < o1; ++o) {
    const uint16_t* row = w + static_cast<int64_t>(o) * in;
    for (int r = 0; r < m; ++r) {
      const float* xr = x + static_cast<int64_t>(r) * in;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < in; ++i) acc += bf16_to_float(row[i]) * xr[i];
      y[static_cast<int64_t>(r) * out + o] = acc;
    }
  }
}

// Widening bf16 weights without a convert per element: interleaving 16-bit zeros below each
// bf16 (unpacklo/hi_epi16 with zero) makes float32 lanes directly, but in the order unpack
// leaves them: per 128-bit lane k, unpacklo holds elements 8k..8k+3 and unpackhi 8k+4..8k+7.
// The activations are permuted once per call to that order (block = 16 elements for AVX2, 32
// for AVX-512), so each 16 or 32 weights cost one load, two unpacks and two FMAs.
//   x: [m, in] natural order -> xp: [m, in], full blocks permuted, the tail in natural order.
void permute_for_unpack(const float* x, float* xp, int m, int in, int block) {
  const int full = in / block * block;
  for (int r = 0; r < m; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * in;
    float* pr = xp + static_cast<int64_t>(r) * in;
    for (int b = 0; b < full; b += block) {
      int j = 0;
      for (int k = 0; k < block / 8; ++k)
        for (int e = 0; e < 4; ++e) pr[b + j++] = xr[b + 8 * k + e];
      for (int k = 0; k < block / 8; ++k)
        for (int e = 4; e < 8; ++e) pr[b + j++] = xr[b + 8 * k + e];
    }
    for (int i = full; i < in; ++i) pr[i] = xr[i];
  }
}

// ---- AVX2 + FMA ------------------------------------------------------------------------------
#define HG_AVX2 __attribute__((target("avx2,fma,f16c")))

HG_AVX2 inline float hsum256(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

HG_AVX2 void rows_f32_avx2(const float* w, const float* x, float* y, int m, int out, int in, int o0,
                           int o1) {
  for (int o = o0; o < o1; ++o) {
    const float* row = w + static_cast<int64_t>(o) * in;
    __m256 acc[kGemvMaxRows][2];  // two FMA chains per row hide the FMA latency
    for (int r = 0; r < m; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= in; i += 16) {
      const __m256 w0 = _mm256_loadu_ps(row + i), w1 = _mm256_loadu_ps(row + i + 8);
      for (int r = 0; r < m; ++r) {
        const float* xr = x + static_cast<int64_t>(r) * in + i;
        acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + 8), acc[r][1]);
      }
    }
    for (; i + 8 <= in; i += 8) {
      const __m256 w0 = _mm256_loadu_ps(row + i);
      for (int r = 0; r < m; ++r)
        acc[r][0] =
            _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + static_cast<int64_t>(r) * in + i), acc[r][0]);
    }
    for (int r = 0; r < m; ++r) {
      const float* xr = x + static_cast<int64_t>(r) * in;
      float s = hsum256(_mm256_add_ps(acc[r][0], acc[r][1]));
      for (int t = i; t < in; ++t) s += row[t] * xr[t];
      y[static_cast<int64_t>(r) * out + o] = s;
    }
  }
}

// xp: the activations permuted by permute_for_unpack(block 16).
HG_AVX2 void rows_bf16_avx2(const uint16_t* w, const float* xp, float* y, int m, int out, int in,
                            int o0, int o1) {
  const __m256i zero = _mm256_setzero_si256();
  for (int o = o0; o < o1; ++o) {
    const uint16_t* row = w + static_cast<int64_t>(o) * in;
    __m256 acc[kGemvMaxRows][2];
    for (int r = 0; r < m; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= in; i += 16) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i));
      const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, wv));
      const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, wv));
      for (int r = 0; r < m; ++r) {
        const float* xr = xp + static_cast<int64_t>(r) * in + i;
        acc[r][0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xr), acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xr + 8), acc[r][1]);
      }
    }
    for (int r = 0; r < m; ++r) {
      const float* xr = xp + static_cast<int64_t>(r) * in;
      float s = hsum256(_mm256_add_ps(acc[r][0], acc[r][1]));
      for (int t = i; t < in; ++t) s += bf16_to_float(row[t]) * xr[t];
      y[static_cast<int64_t>(r) * out + o] = s;
    }
  }
}

// ---- AVX-512 ---------------------------------------------------------------------------------
#define HG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

HG_AVX512 void rows_f32_avx512(const float* w, const float* x, float* y, int m, int out, int in,
                               int o0, int o1) {
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

// AVX-512 without BF16: widen by unpacking (xp permuted with block 32), FMA in float32.
HG_AVX512 void rows_bf16_avx512(const uint16_t* w, const float* xp, float* y, int m, int out,
                                int in, int o0, int o1) {
  const __m512i zero = _mm512_setzero_si512();
  for (int o = o0; o < o1; ++o) {
    const uint16_t* row = w + static_cast<int64_t>(o) * in;
    __m512 acc[kGemvMaxRows][2];
    for (int r = 0; r < m; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= in; i += 32) {
      const __m512i wv = _mm512_loadu_si512(row + i);
      const __m512 lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, wv));
      const __m512 hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, wv));
      for (int r = 0; r < m; ++r) {
        const float* xr = xp + static_cast<int64_t>(r) * in + i;
        acc[r][0] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xr), acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xr + 16), acc[r][1]);
      }
    }
    for (int r = 0; r < m; ++r) {
      const float* xr = xp + static_cast<int64_t>(r) * in;
      float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
      for (int t = i; t < in; ++t) s += bf16_to_float(row[t]) * xr[t];
      y[static_cast<int64_t>(r) * out + o] = s;
    }
  }
}

// VDPBF16PS: 32 bf16 products per instruction, summed pairwise into 16 float lanes.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void rows_bf16_dp(const uint16_t* w,
                                                                         const uint16_t* x,
                                                                         float* y, int m, int out,
                                                                         int in, int o0, int o1) {
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

template <typename Rows>
void run_chunks(const Rows& rows, const float* bias, float* y, int m, int out) {
  const int chunks = (out + kRowsPerChunk - 1) / kRowsPerChunk;
  // Guided: large contiguous runs of rows first (one stream per thread), then smaller ones, so a
  // thread whose core is slowed (a busy neighbour) does not leave the other spinning at the
  // barrier. Measured with perf: ~20% of a decode step in libgomp's barrier with a static
  // schedule on the 2-core machine; decode 12.0-13.7 -> 11.0-12.0 ms (avx2 path, A/B pairs).
#pragma omp parallel for schedule(guided)
  for (int c = 0; c < chunks; ++c) {
    const int o0 = c * kRowsPerChunk, o1 = o0 + kRowsPerChunk < out ? o0 + kRowsPerChunk : out;
    rows(o0, o1);
    if (bias)
      for (int r = 0; r < m; ++r)
        for (int o = o0; o < o1; ++o) y[static_cast<int64_t>(r) * out + o] += bias[o];
  }
}

void check_level(Isa isa, const char* what) {
  HG_CHECK(static_cast<uint8_t>(isa) <= static_cast<uint8_t>(detected_isa()),
           std::string(what) + ": this CPU cannot run the " + isa_name(isa) +
               " path (features: " + cpu_features() + ")");
}

}  // namespace

Isa gemv_f32_isa() { return active_isa() == Isa::kAvx512Bf16 ? Isa::kAvx512 : active_isa(); }
Isa gemv_bf16_isa() { return active_isa(); }

void gemv_f32_on(Isa isa, const float* w, const float* x, const float* bias, float* y, int m,
                 int out, int in) {
  check_level(isa, "gemv f32");
  HG_CHECK(m >= 1 && m <= kGemvMaxRows, "gemv f32: m must be in [1, 4], got " + std::to_string(m));
  using Fn = void (*)(const float*, const float*, float*, int, int, int, int, int);
  const Fn fn = isa == Isa::kPortable ? rows_f32_portable
                : isa == Isa::kAvx2   ? rows_f32_avx2
                                      : rows_f32_avx512;
  run_chunks([&](int o0, int o1) { fn(w, x, y, m, out, in, o0, o1); }, bias, y, m, out);
}

void gemv_bf16_on(Isa isa, const uint16_t* w, const uint16_t* x, const float* bias, float* y, int m,
                  int out, int in) {
  check_level(isa, "gemv bf16");
  HG_CHECK(m >= 1 && m <= kGemvMaxRows, "gemv bf16: m must be in [1, 4], got " + std::to_string(m));
  if (isa == Isa::kAvx512Bf16) {
    run_chunks([&](int o0, int o1) { rows_bf16_dp(w, x, y, m, out, in, o0, o1); }, bias, y, m, out);
    return;
  }
  // Below BF16 the activations are widened to float32 once per call (exact), and permuted for
  // the unpacking kernels:  xf, xp: [m, in]
  const size_t n = static_cast<size_t>(m) * in;
  std::vector<float> xf(n), xp;
  vec_kernels_for(isa).from_bf16(x, xf.data(), static_cast<int64_t>(n));
  if (isa == Isa::kPortable) {
    run_chunks([&](int o0, int o1) { rows_bf16_portable(w, xf.data(), y, m, out, in, o0, o1); },
               bias, y, m, out);
    return;
  }
  xp.resize(n);
  const bool avx2 = isa == Isa::kAvx2;
  permute_for_unpack(xf.data(), xp.data(), m, in, avx2 ? 16 : 32);
  run_chunks(
      [&](int o0, int o1) {
        if (avx2)
          rows_bf16_avx2(w, xp.data(), y, m, out, in, o0, o1);
        else
          rows_bf16_avx512(w, xp.data(), y, m, out, in, o0, o1);
      },
      bias, y, m, out);
}

void gemv_f32(const float* w, const float* x, const float* bias, float* y, int m, int out, int in) {
  gemv_f32_on(gemv_f32_isa(), w, x, bias, y, m, out, in);
}

void gemv_bf16(const uint16_t* w, const uint16_t* x, const float* bias, float* y, int m, int out,
               int in) {
  gemv_bf16_on(gemv_bf16_isa(), w, x, bias, y, m, out, in);
}

}  // namespace hybridgen::cpu
