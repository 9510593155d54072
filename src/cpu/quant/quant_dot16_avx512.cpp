// The AVX-512 row kernels of the 16-bit-activation quantized GEMV: one 512-bit register holds
// a whole activation block (32 int16), the block's weights widened to 32 int16 beside it
// (VPMOVZXBW / VPMOVSXBW; K-quant sub-block scales folded in by VPMULLW, as the AVX2 kernels),
// and one VPDPWSSD (AVX512_VNNI) or VPMADDWD (AVX-512BW) makes 16 exact int32 sums, scaled
// once per block by d_w d_x with one FMA. Every native type has a kernel on both.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 avx512 headers (see gemv.cpp)
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>

#include "cpu/quant/quant_kernels.h"
#include "cpu/quant/quant_kernels16.h"
#include "cpu/quant/simd_helpers.h"

namespace hybridgen::cpu::quant {

namespace {

enum Fmt { kQ4_0, kQ4_1, kQ8_0 };

// A block-32 block's weights as 32 int16 (low nibbles are elements 0..15).
template <Fmt F>
__attribute__((target(HG_AVX512_BASE))) inline __m512i load_w16(const uint8_t* blk) {
  if constexpr (F == kQ8_0) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)));
  } else {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (F == kQ4_1 ? 4 : 2)));
    const __m512i u = _mm512_cvtepu8_epi16(
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m4), _mm_and_si128(b, m4)));
    return F == kQ4_0 ? _mm512_sub_epi16(u, _mm512_set1_epi16(8)) : u;
  }
}

// The bodies are shared by the VNNI and the plain AVX-512BW kernels; only the instruction that
// turns 32 int16 products into 16 int32 sums differs (DOT(w16, x16)), and it must not be
// compiled for a CPU without VNNI, hence one function per target.
#define HG_KERNELS16_AVX512(SUFFIX, TARGET, DOT)                                                   \
  template <Fmt F>                                                                                 \
  __attribute__((target(TARGET))) void rows_b32_##SUFFIX(const uint8_t* w, int64_t rb,             \
                                                         const QuantActivations16& x, float* y,    \
                                                         int ldy, int o0, int o1) {                \
    constexpr int kBytes = F == kQ4_0 ? 18 : F == kQ4_1 ? 20 : 34;                                 \
    const int nb = x.in / 32, m = x.m;                                                             \
    for (int o = o0; o < o1; ++o) {                                                                \
      const uint8_t* row = w + o * rb;                                                             \
      __m512 acc[kGemvMaxRows][2];                                                                 \
      float acc_m[kGemvMaxRows];                                                                   \
      for (int r = 0; r < m; ++r) {                                                                \
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();                                               \
        acc_m[r] = 0.f;                                                                            \
      }                                                                                            \
      for (int b = 0; b < nb; ++b) {                                                               \
        const uint8_t* blk = row + int64_t(b) * kBytes;                                            \
        const __m512i wv = load_w16<F>(blk);                                                       \
        const float wd = f16c(blk);                                                                \
        for (int r = 0; r < m; ++r) {                                                              \
          const __m512i xv = _mm512_loadu_si512(x.q.data() + int64_t(r) * x.in + 32 * b);          \
          const float xd = x.d[r * nb + b];                                                        \
          acc[r][b & 1] = _mm512_fmadd_ps(_mm512_set1_ps(wd * xd),                                 \
                                          _mm512_cvtepi32_ps(DOT(wv, xv)), acc[r][b & 1]);         \
          if constexpr (F == kQ4_1)                                                                \
            acc_m[r] += f16c(blk + 2) * xd * static_cast<float>(x.isum[r * nb + b]);               \
        }                                                                                          \
      }                                                                                            \
      for (int r = 0; r < m; ++r)                                                                  \
        y[int64_t(r) * ldy + o] =                                                                  \
            _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1])) + acc_m[r];                  \
    }                                                                                              \
  }                                                                                                \
                                                                                                   \
  __attribute__((target(TARGET))) void rows_q4_k_##SUFFIX(const uint8_t* w, int64_t rb,            \
                                                          const QuantActivations16& x, float* y,   \
                                                          int ldy, int o0, int o1) {               \
    const int nb = x.in / 256, nx = x.in / 32, m = x.m;                                            \
    const __m256i m4 = _mm256_set1_epi8(0x0F);                                                     \
    for (int o = o0; o < o1; ++o) {                                                                \
      const uint8_t* row = w + o * rb;                                                             \
      __m512 acc[kGemvMaxRows];                                                                    \
      float acc_m[kGemvMaxRows];                                                                   \
      for (int r = 0; r < m; ++r) {                                                                \
        acc[r] = _mm512_setzero_ps();                                                              \
        acc_m[r] = 0.f;                                                                            \
      }                                                                                            \
      for (int b = 0; b < nb; ++b) {                                                               \
        const uint8_t* blk = row + int64_t(b) * 144;                                               \
        uint8_t sc[8], mn[8];                                                                      \
        for (int j = 0; j < 8; ++j) scale_min_k4(j, blk + 4, &sc[j], &mn[j]);                      \
        const float wd = f16c(blk), wmin = f16c(blk + 2);                                          \
        float mins[kGemvMaxRows];                                                                  \
        for (int r = 0; r < m; ++r) mins[r] = 0.f;                                                 \
        for (int j = 0; j < 4; ++j) {                                                              \
          const __m256i qb =                                                                       \
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * j));             \
          const __m512i lo = _mm512_mullo_epi16(_mm512_cvtepu8_epi16(_mm256_and_si256(qb, m4)),    \
                                                _mm512_set1_epi16(sc[2 * j]));                     \
          const __m512i hi = _mm512_mullo_epi16(                                                   \
              _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4)),                \
              _mm512_set1_epi16(sc[2 * j + 1]));                                                   \
          for (int r = 0; r < m; ++r) {                                                            \
            const int16_t* xr = x.q.data() + int64_t(r) * x.in + 256 * b + 64 * j;                 \
            const int xb = r * nx + 8 * b + 2 * j;                                                 \
            const float d0 = x.d[xb], d1 = x.d[xb + 1];                                            \
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(wd * d0),                                      \
                                     _mm512_cvtepi32_ps(DOT(lo, _mm512_loadu_si512(xr))), acc[r]); \
            acc[r] =                                                                               \
                _mm512_fmadd_ps(_mm512_set1_ps(wd * d1),                                           \
                                _mm512_cvtepi32_ps(DOT(hi, _mm512_loadu_si512(xr + 32))), acc[r]); \
            mins[r] += d0 * static_cast<float>(mn[2 * j] * x.isum[xb]) +                           \
                       d1 * static_cast<float>(mn[2 * j + 1] * x.isum[xb + 1]);                    \
          }                                                                                        \
        }                                                                                          \
        for (int r = 0; r < m; ++r) acc_m[r] += wmin * mins[r];                                    \
      }                                                                                            \
      for (int r = 0; r < m; ++r)                                                                  \
        y[int64_t(r) * ldy + o] = _mm512_reduce_add_ps(acc[r]) - acc_m[r];                         \
    }                                                                                              \
  }                                                                                                \
                                                                                                   \
  __attribute__((target(TARGET))) void rows_q6_k_##SUFFIX(const uint8_t* w, int64_t rb,            \
                                                          const QuantActivations16& x, float* y,   \
                                                          int ldy, int o0, int o1) {               \
    const int nb = x.in / 256, nx = x.in / 32, m = x.m;                                            \
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3),                           \
                  k32 = _mm256_set1_epi8(32);                                                      \
    for (int o = o0; o < o1; ++o) {                                                                \
      const uint8_t* row = w + o * rb;                                                             \
      __m512 acc[kGemvMaxRows][2];                                                                 \
      for (int r = 0; r < m; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();                     \
      for (int b = 0; b < nb; ++b) {                                                               \
        const uint8_t* blk = row + int64_t(b) * 210;                                               \
        const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);                             \
        const float wd = f16c(blk + 208);                                                          \
        for (int n = 0; n < 2; ++n) {                                                              \
          const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n));  \
          const __m256i ql1 =                                                                      \
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n + 32));             \
          const __m256i qh =                                                                       \
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));            \
          __m256i q[4];                                                                            \
          q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4),                                        \
                                 _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));                  \
          q[1] = _mm256_or_si256(                                                                  \
              _mm256_and_si256(ql1, m4),                                                           \
              _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4));               \
          q[2] = _mm256_or_si256(                                                                  \
              _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),                                     \
              _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4));               \
          q[3] = _mm256_or_si256(                                                                  \
              _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),                                     \
              _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4));               \
          for (int k = 0; k < 4; ++k) {                                                            \
            /* elements 0..15 of the quarter have scale sc[2k], 16..31 sc[2k + 1] */               \
            const __m512i s = _mm512_inserti64x4(_mm512_set1_epi16(sc[8 * n + 2 * k]),             \
                                                 _mm256_set1_epi16(sc[8 * n + 2 * k + 1]), 1);     \
            const __m512i wv =                                                                     \
                _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm256_sub_epi8(q[k], k32)), s);           \
            for (int r = 0; r < m; ++r) {                                                          \
              const int16_t* xr = x.q.data() + int64_t(r) * x.in + 256 * b + 128 * n + 32 * k;     \
              const float xd = x.d[r * nx + 8 * b + 4 * n + k];                                    \
              acc[r][k & 1] = _mm512_fmadd_ps(_mm512_set1_ps(wd * xd),                             \
                                              _mm512_cvtepi32_ps(DOT(wv, _mm512_loadu_si512(xr))), \
                                              acc[r][k & 1]);                                      \
            }                                                                                      \
          }                                                                                        \
        }                                                                                          \
      }                                                                                            \
      for (int r = 0; r < m; ++r)                                                                  \
        y[int64_t(r) * ldy + o] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));       \
    }                                                                                              \
  }

#define HG_DOT16_BW(w, x) _mm512_madd_epi16(w, x)
#define HG_DOT16_VNNI(w, x) _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, x)

HG_KERNELS16_AVX512(bw, HG_AVX512_BASE, HG_DOT16_BW)
HG_KERNELS16_AVX512(vnni, HG_AVX512_BASE ",avx512vnni", HG_DOT16_VNNI)

}  // namespace

Kernels16 avx512_kernels16(bool vnni) {
  Kernels16 k;
  if (vnni) {
    k.q4_0 = rows_b32_vnni<kQ4_0>;
    k.q4_1 = rows_b32_vnni<kQ4_1>;
    k.q8_0 = rows_b32_vnni<kQ8_0>;
    k.q4_k = rows_q4_k_vnni;
    k.q6_k = rows_q6_k_vnni;
  } else {
    k.q4_0 = rows_b32_bw<kQ4_0>;
    k.q4_1 = rows_b32_bw<kQ4_1>;
    k.q8_0 = rows_b32_bw<kQ8_0>;
    k.q4_k = rows_q4_k_bw;
    k.q6_k = rows_q6_k_bw;
  }
  return k;
}

}  // namespace hybridgen::cpu::quant
