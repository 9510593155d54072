// The AVX2 row kernels of the 16-bit-activation quantized GEMV: a block's 32 weights widened
// to int16 in two registers (VPMOVZXBW / VPMOVSXBW; Q4_0 with its offset 8 taken off, K-quant
// sub-block scales folded in by VPMULLW: |q sc| <= 945 (Q4_K), <= 4096 (Q6_K)), multiplied
// with the 32 int16 activations by VPMADDWD into 8 int32 lanes (exact: a lane is at most
// 4 * 4096 * 32767 < 2^31), converted and scaled once per block by d_w d_x with one FMA.
// Q4_1's and Q4_K's mins take the activation block sums in scalar float.
#include <immintrin.h>

#include <cstring>

#include "cpu/quant/quant_kernels.h"
#include "cpu/quant/quant_kernels16.h"
#include "cpu/quant/simd_helpers.h"

namespace hybridgen::cpu::quant {

namespace {

HG_AVX2 inline __m256i load16(const int16_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// The dot product of 32 int16 weights (w0: elements 0..15, w1: 16..31) with 32 int16
// activations, as 8 int32 partial sums.
HG_AVX2 inline __m256i dot32(__m256i w0, __m256i w1, const int16_t* x) {
  return _mm256_add_epi32(_mm256_madd_epi16(w0, load16(x)), _mm256_madd_epi16(w1, load16(x + 16)));
}

enum Fmt { kQ4_0, kQ4_1, kQ8_0 };

// Block-32 formats; two accumulators per activation row (even and odd blocks).
template <Fmt F>
HG_AVX2 void rows_b32(const uint8_t* w, int64_t rb, const QuantActivations16& x, float* y, int ldy,
                      int o0, int o1) {
  constexpr int kBytes = F == kQ4_0 ? 18 : F == kQ4_1 ? 20 : 34;
  const int nb = x.in / 32, m = x.m;
  const __m128i m4 = _mm_set1_epi8(0x0F);
  for (int o = o0; o < o1; ++o) {
    const uint8_t* row = w + o * rb;
    __m256 acc[kGemvMaxRows][2];
    float acc_m[kGemvMaxRows];
    for (int r = 0; r < m; ++r) {
      acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      acc_m[r] = 0.f;
    }
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = row + int64_t(b) * kBytes;
      const float wd = f16c(blk);
      __m256i w0, w1;
      if constexpr (F == kQ8_0) {
        w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
        w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18)));
      } else {
        const __m128i qs =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (F == kQ4_1 ? 4 : 2)));
        w0 = _mm256_cvtepu8_epi16(_mm_and_si128(qs, m4));
        w1 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(qs, 4), m4));
        if constexpr (F == kQ4_0) {
          w0 = _mm256_sub_epi16(w0, _mm256_set1_epi16(8));
          w1 = _mm256_sub_epi16(w1, _mm256_set1_epi16(8));
        }
      }
      for (int r = 0; r < m; ++r) {
        const __m256i p = dot32(w0, w1, x.q.data() + int64_t(r) * x.in + 32 * b);
        const float xd = x.d[r * nb + b];
        acc[r][b & 1] =
            _mm256_fmadd_ps(_mm256_set1_ps(wd * xd), _mm256_cvtepi32_ps(p), acc[r][b & 1]);
        if constexpr (F == kQ4_1)
          acc_m[r] += f16c(blk + 2) * xd * static_cast<float>(x.isum[r * nb + b]);
      }
    }
    for (int r = 0; r < m; ++r)
      y[int64_t(r) * ldy + o] = hsum(_mm256_add_ps(acc[r][0], acc[r][1])) + acc_m[r];
  }
}

HG_AVX2 void rows_q4_k(const uint8_t* w, int64_t rb, const QuantActivations16& x, float* y, int ldy,
                       int o0, int o1) {
  const int nb = x.in / 256, nx = x.in / 32, m = x.m;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int o = o0; o < o1; ++o) {
    const uint8_t* row = w + o * rb;
    __m256 acc[kGemvMaxRows];
    float acc_m[kGemvMaxRows];
    for (int r = 0; r < m; ++r) {
      acc[r] = _mm256_setzero_ps();
      acc_m[r] = 0.f;
    }
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = row + int64_t(b) * 144;
      uint8_t sc[8], mn[8];
      for (int j = 0; j < 8; ++j) scale_min_k4(j, blk + 4, &sc[j], &mn[j]);
      const float wd = f16c(blk), wmin = f16c(blk + 2);
      float mins[kGemvMaxRows];
      for (int r = 0; r < m; ++r) mins[r] = 0.f;
      for (int j = 0; j < 4; ++j) {
        const __m256i qb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * j));
        const __m256i lo = _mm256_and_si256(qb, m4);                        // sub-block 2j
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4);  // 2j + 1
        const __m256i s0 = _mm256_set1_epi16(sc[2 * j]), s1 = _mm256_set1_epi16(sc[2 * j + 1]);
        const __m256i l0 = _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo)), s0);
        const __m256i l1 =
            _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1)), s0);
        const __m256i h0 = _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi)), s1);
        const __m256i h1 =
            _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1)), s1);
        for (int r = 0; r < m; ++r) {
          const int16_t* xr = x.q.data() + int64_t(r) * x.in + 256 * b + 64 * j;
          const int xb = r * nx + 8 * b + 2 * j;
          const float d0 = x.d[xb], d1 = x.d[xb + 1];
          acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wd * d0), _mm256_cvtepi32_ps(dot32(l0, l1, xr)),
                                   acc[r]);
          acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wd * d1),
                                   _mm256_cvtepi32_ps(dot32(h0, h1, xr + 32)), acc[r]);
          mins[r] += d0 * static_cast<float>(mn[2 * j] * x.isum[xb]) +
                     d1 * static_cast<float>(mn[2 * j + 1] * x.isum[xb + 1]);
        }
      }
      for (int r = 0; r < m; ++r) acc_m[r] += wmin * mins[r];
    }
    for (int r = 0; r < m; ++r) y[int64_t(r) * ldy + o] = hsum(acc[r]) - acc_m[r];
  }
}

HG_AVX2 void rows_q6_k(const uint8_t* w, int64_t rb, const QuantActivations16& x, float* y, int ldy,
                       int o0, int o1) {
  const int nb = x.in / 256, nx = x.in / 32, m = x.m;
  const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
  for (int o = o0; o < o1; ++o) {
    const uint8_t* row = w + o * rb;
    __m256 acc[kGemvMaxRows][2];
    for (int r = 0; r < m; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = row + int64_t(b) * 210;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
      const float wd = f16c(blk + 208);
      for (int n = 0; n < 2; ++n) {
        const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n));
        const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n + 32));
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));
        // The four 32-element quarters of this half, 0..63, then signed (q - 32).
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4),
                               _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
        q[1] =
            _mm256_or_si256(_mm256_and_si256(ql1, m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));
        q[2] =
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));
        q[3] =
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));
        for (int k = 0; k < 4; ++k) {
          const __m256i qs = _mm256_sub_epi8(q[k], k32);
          // Elements 0..15 of the quarter have scale sc[2k], 16..31 sc[2k + 1].
          const __m256i w0 = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(qs)),
                                                _mm256_set1_epi16(sc[8 * n + 2 * k]));
          const __m256i w1 =
              _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(qs, 1)),
                                 _mm256_set1_epi16(sc[8 * n + 2 * k + 1]));
          for (int r = 0; r < m; ++r) {
            const int16_t* xr = x.q.data() + int64_t(r) * x.in + 256 * b + 128 * n + 32 * k;
            const float xd = x.d[r * nx + 8 * b + 4 * n + k];
            acc[r][k & 1] = _mm256_fmadd_ps(_mm256_set1_ps(wd * xd),
                                            _mm256_cvtepi32_ps(dot32(w0, w1, xr)), acc[r][k & 1]);
          }
        }
      }
    }
    for (int r = 0; r < m; ++r) y[int64_t(r) * ldy + o] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
  }
}

}  // namespace

Kernels16 avx2_kernels16() {
  Kernels16 k;
  k.q4_0 = rows_b32<kQ4_0>;
  k.q4_1 = rows_b32<kQ4_1>;
  k.q8_0 = rows_b32<kQ8_0>;
  k.q4_k = rows_q4_k;
  k.q6_k = rows_q6_k;
  return k;
}

}  // namespace hybridgen::cpu::quant
