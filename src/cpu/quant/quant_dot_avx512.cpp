// The AVX-512 row kernels of the quantized GEMV (block-32 formats: Q4_0, Q4_1, Q8_0): two
// blocks per 512-bit register; the integer dot product through VPDPBUSD where the CPU has
// AVX512_VNNI, else VPMADDUBSW + VPMADDWD (AVX-512BW). Signed weights (Q8_0, and Q4_0 with its
// offset 8 taken off) multiply as |w| x (x negated where w < 0), a masked subtract, since
// AVX-512 has no VPSIGNB. The K-quants have no AVX-512 kernel here: they take the AVX2 one
// (quant_gemv.cpp), which runs on every AVX-512 CPU.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 avx512 headers (see gemv.cpp)
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>

#include "cpu/quant/quant_kernels.h"
#include "cpu/quant/simd_helpers.h"

namespace hybridgen::cpu::quant {

namespace {

enum Fmt { kQ4_0, kQ4_1, kQ8_0 };

// A block's 32 weights as bytes: Q8_0 as stored, Q4_0 / Q4_1 nibbles unpacked (low nibbles
// are elements 0..15), Q4_0 with its offset 8 taken off.
template <Fmt F>
__attribute__((target(HG_AVX512_BASE))) inline __m256i load_w(const uint8_t* blk) {
  if constexpr (F == kQ8_0) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  } else {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (F == kQ4_1 ? 4 : 2)));
    const __m256i u =
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m4), _mm_and_si128(b, m4));
    return F == kQ4_0 ? _mm256_sub_epi8(u, _mm256_set1_epi8(8)) : u;
  }
}

// The body is shared by the VNNI and the plain AVX-512BW kernels; only the instruction that
// turns 64 byte products into 16 int32 sums differs (DOT_US(u8 weights, s8 activations)), and
// it must not be compiled for a CPU without VNNI, hence one function per target.
#define HG_ROWS_B32_AVX512(NAME, TARGET, DOT_US)                                                   \
  template <Fmt F>                                                                                 \
  __attribute__((target(TARGET))) void NAME(const uint8_t* w, int64_t rb,                          \
                                            const QuantActivations& x, float* y, int ldy, int o0,  \
                                            int o1) {                                              \
    constexpr int kBytes = F == kQ4_0 ? 18 : F == kQ4_1 ? 20 : 34;                                 \
    const int nb = x.in / 32, m = x.m;                                                             \
    for (int o = o0; o < o1; ++o) {                                                                \
      const uint8_t* row = w + o * rb;                                                             \
      __m512 acc[kGemvMaxRows][2];                                                                 \
      float tail[kGemvMaxRows];                                                                    \
      for (int r = 0; r < m; ++r) {                                                                \
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();                                               \
        tail[r] = 0.f;                                                                             \
      }                                                                                            \
      int b = 0;                                                                                   \
      for (int p = 0; b + 2 <= nb; b += 2, ++p) {                                                  \
        const uint8_t* b0 = row + int64_t(b) * kBytes;                                             \
        const uint8_t* b1 = b0 + kBytes;                                                           \
        const __m512i wv =                                                                         \
            _mm512_inserti64x4(_mm512_castsi256_si512(load_w<F>(b0)), load_w<F>(b1), 1);           \
        const float d0 = f16c(b0), d1 = f16c(b1);                                                  \
        const __m512i uw = F == kQ4_1 ? wv : _mm512_abs_epi8(wv);                                  \
        const __mmask64 neg = F == kQ4_1 ? 0 : _mm512_movepi8_mask(wv);                            \
        for (int r = 0; r < m; ++r) {                                                              \
          __m512i xv = _mm512_loadu_si512(x.q.data() + int64_t(r) * x.in + 32 * b);                \
          if constexpr (F != kQ4_1)                                                                \
            xv = _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv);                        \
          const __m512i s32 = DOT_US(uw, xv);                                                      \
          const float* xd = x.d.data() + r * nb + b;                                               \
          const __m512 scale =                                                                     \
              _mm512_insertf32x8(_mm512_set1_ps(d0 * xd[0]), _mm256_set1_ps(d1 * xd[1]), 1);       \
          acc[r][p & 1] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(s32), acc[r][p & 1]);          \
          if constexpr (F == kQ4_1) {                                                              \
            const float* xs = x.s.data() + r * nb + b;                                             \
            tail[r] += f16c(b0 + 2) * xs[0] + f16c(b1 + 2) * xs[1];                                \
          }                                                                                        \
        }                                                                                          \
      }                                                                                            \
      if (b < nb) { /* an odd last block, at 256 bits */                                           \
        const uint8_t* b0 = row + int64_t(b) * kBytes;                                             \
        const __m256i wv = load_w<F>(b0);                                                          \
        for (int r = 0; r < m; ++r) {                                                              \
          const __m256i xv = _mm256_loadu_si256(                                                   \
              reinterpret_cast<const __m256i*>(x.q.data() + int64_t(r) * x.in + 32 * b));          \
          const __m256i u = F == kQ4_1 ? wv : _mm256_sign_epi8(wv, wv);                            \
          const __m256i s = F == kQ4_1 ? xv : _mm256_sign_epi8(xv, wv);                            \
          const __m256i p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)); \
          const __m256i h = _mm256_hadd_epi32(p32, p32);                                           \
          const __m256i h2 = _mm256_hadd_epi32(h, h);                                              \
          const int sumi = _mm256_extract_epi32(h2, 0) + _mm256_extract_epi32(h2, 4);              \
          tail[r] += f16c(b0) * x.d[r * nb + b] * static_cast<float>(sumi);                        \
          if constexpr (F == kQ4_1) tail[r] += f16c(b0 + 2) * x.s[r * nb + b];                     \
        }                                                                                          \
      }                                                                                            \
      for (int r = 0; r < m; ++r)                                                                  \
        y[int64_t(r) * ldy + o] =                                                                  \
            _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1])) + tail[r];                   \
    }                                                                                              \
  }

#define HG_DOT_BW(u, s) _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1))
#define HG_DOT_VNNI(u, s) _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)

HG_ROWS_B32_AVX512(rows_b32_bw, HG_AVX512_BASE, HG_DOT_BW)
HG_ROWS_B32_AVX512(rows_b32_vnni, HG_AVX512_BASE ",avx512vnni", HG_DOT_VNNI)

}  // namespace

Kernels avx512_kernels(bool vnni) {
  Kernels k;
  if (vnni) {
    k.q4_0 = rows_b32_vnni<kQ4_0>;
    k.q4_1 = rows_b32_vnni<kQ4_1>;
    k.q8_0 = rows_b32_vnni<kQ8_0>;
  } else {
    k.q4_0 = rows_b32_bw<kQ4_0>;
    k.q4_1 = rows_b32_bw<kQ4_1>;
    k.q8_0 = rows_b32_bw<kQ8_0>;
  }
  return k;
}

}  // namespace hybridgen::cpu::quant
