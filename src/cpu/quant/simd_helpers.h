// Internal to the quantized GEMV kernels (quant_act*.cpp, quant_dot*.cpp): the small helpers
// the paths share, so each kernel file holds only its kernels. Header-only and inline; the
// SIMD helpers carry their target attribute, so including this header compiles nothing for
// an ISA the including function does not target.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace hybridgen::cpu::quant {

// ggml's nearest_int: round half to even through the 1.5 * 2^23 trick. PRECOND: |f| < 2^22.
inline int nearest_int(float f) {
  float v = f + 12582912.f;
  int i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

#define HG_AVX2 __attribute__((target("avx2,fma,f16c")))
#define HG_AVX512_BASE "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"

// An f16 at p (unaligned) widened to float with F16C (the scalar equivalent is quant::f16).
HG_AVX2 inline float f16c(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// The sum of the 8 float lanes.
HG_AVX2 inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// The exact int32 sum of the 8 lanes (K-quant super-block sums stay below 2^31; converting the
// lanes to float first would round sums past 2^24 before the mins / offsets cancel them).
HG_AVX2 inline int hsum_i32(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1)));
}

// 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high nibbles (16..31).
HG_AVX2 inline __m256i nibbles(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

}  // namespace hybridgen::cpu::quant
