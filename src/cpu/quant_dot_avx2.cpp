// The AVX2 row kernels of the quantized GEMV: 32 weights of a block against 32 int8
// activations in one VPMADDUBSW (unsigned weight nibbles x signed activations; signed weights
// through the |w|, sign(x, w) identity, as ggml does) and VPMADDWD to int32, then one float
// FMA per block with the product of the two scales. K-quants fold the 6-bit sub-block scale
// into the VPMADDWD and subtract the mins (Q4_K) or the +32 offset (Q6_K) through Q8_K's sums
// of 16 activations.
#include <immintrin.h>

#include <cstring>

#include "cpu/quant_kernels.h"

namespace hybridgen::cpu::quant {

namespace {

#define HG_AVX2 __attribute__((target("avx2,fma,f16c")))

HG_AVX2 inline float f16c(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

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

// Sum over 32 products of unsigned bytes u and signed bytes s, as 8 int32 partial sums.
HG_AVX2 inline __m256i dot_us(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
// The same for two signed operands: |a| · sign(b, a) = a · b elementwise.
HG_AVX2 inline __m256i dot_ss(__m256i a, __m256i b) {
  return dot_us(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

enum Fmt { kQ4_0, kQ4_1, kQ8_0 };

// Block-32 formats. Two accumulators per activation row (even and odd blocks) so that the FMA
// latency does not serialise the blocks.
template <Fmt F>
HG_AVX2 void rows_b32(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy,
                      int o0, int o1) {
  constexpr int kBytes = F == kQ4_0 ? 18 : F == kQ4_1 ? 20 : 34;
  const int nb = x.in / 32, m = x.m;
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
      __m256i wq;
      if constexpr (F == kQ8_0)
        wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      else if constexpr (F == kQ4_0)
        wq = _mm256_sub_epi8(nibbles(blk + 2), _mm256_set1_epi8(8));
      else
        wq = nibbles(blk + 4);
      for (int r = 0; r < m; ++r) {
        const __m256i xq = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(x.q.data() + int64_t(r) * x.in + 32 * b));
        const __m256i p = F == kQ4_1 ? dot_us(wq, xq) : dot_ss(wq, xq);
        const __m256 scale = _mm256_set1_ps(wd * x.d[r * nb + b]);
        acc[r][b & 1] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[r][b & 1]);
        if constexpr (F == kQ4_1) acc_m[r] += f16c(blk + 2) * x.s[r * nb + b];
      }
    }
    for (int r = 0; r < m; ++r)
      y[int64_t(r) * ldy + o] = hsum(_mm256_add_ps(acc[r][0], acc[r][1])) + acc_m[r];
  }
}

HG_AVX2 void rows_q4_k(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy,
                       int o0, int o1) {
  const int nb = x.in / 256, m = x.m;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int o = o0; o < o1; ++o) {
    const uint8_t* row = w + o * rb;
    float acc[kGemvMaxRows];
    for (int r = 0; r < m; ++r) acc[r] = 0.f;
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = row + int64_t(b) * 144;
      uint8_t sc[8], mn[8];
      for (int j = 0; j < 8; ++j) scale_min_k4(j, blk + 4, &sc[j], &mn[j]);
      const float wd = f16c(blk), wmin = f16c(blk + 2);
      __m256i sumi[kGemvMaxRows];
      for (int r = 0; r < m; ++r) sumi[r] = _mm256_setzero_si256();
      for (int j = 0; j < 4; ++j) {
        const __m256i qb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * j));
        const __m256i lo = _mm256_and_si256(qb, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4);
        const __m256i s0 = _mm256_set1_epi16(sc[2 * j]), s1 = _mm256_set1_epi16(sc[2 * j + 1]);
        for (int r = 0; r < m; ++r) {
          const int8_t* xr = x.q.data() + int64_t(r) * x.in + 256 * b + 64 * j;
          const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr));
          const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 32));
          sumi[r] = _mm256_add_epi32(
              sumi[r], _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s0),
                                        _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s1)));
        }
      }
      for (int r = 0; r < m; ++r) {
        const int16_t* bs = x.bsums.data() + int64_t(r) * (x.in / 16) + 16 * b;
        int summ = 0;
        for (int j = 0; j < 8; ++j) summ += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
        const float xd = x.d[r * nb + b];
        acc[r] +=
            wd * xd * static_cast<float>(hsum_i32(sumi[r])) - wmin * xd * static_cast<float>(summ);
      }
    }
    for (int r = 0; r < m; ++r) y[int64_t(r) * ldy + o] = acc[r];
  }
}

HG_AVX2 void rows_q6_k(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy,
                       int o0, int o1) {
  const int nb = x.in / 256, m = x.m;
  const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
  for (int o = o0; o < o1; ++o) {
    const uint8_t* row = w + o * rb;
    float acc[kGemvMaxRows];
    for (int r = 0; r < m; ++r) acc[r] = 0.f;
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = row + int64_t(b) * 210;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
      __m256i sumi[kGemvMaxRows];
      for (int r = 0; r < m; ++r) sumi[r] = _mm256_setzero_si256();
      for (int n = 0; n < 2; ++n) {
        const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n));
        const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n + 32));
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));
        // The four 32-element quarters of this half, as unsigned 0..63 (the -32 comes later).
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
          // Elements 0..15 of the quarter (the low 128 bits) have scale 2k, 16..31 scale 2k+1.
          const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[8 * n + 2 * k + 1]),
                                             _mm_set1_epi16(sc[8 * n + 2 * k]));
          for (int r = 0; r < m; ++r) {
            const int8_t* xr = x.q.data() + int64_t(r) * x.in + 256 * b + 128 * n + 32 * k;
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr));
            sumi[r] =
                _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], xv), s));
          }
        }
      }
      const float wd = f16c(blk + 208);
      for (int r = 0; r < m; ++r) {
        // sum (q - 32) x sc = sum q x sc - 32 sum_g sc[g] bsums[g] (group g: elements 16g..16g+15)
        const int16_t* bs = x.bsums.data() + int64_t(r) * (x.in / 16) + 16 * b;
        int corr = 0;
        for (int g = 0; g < 16; ++g) corr += sc[g] * bs[g];
        acc[r] += wd * x.d[r * nb + b] * static_cast<float>(hsum_i32(sumi[r]) - 32 * corr);
      }
    }
    for (int r = 0; r < m; ++r) y[int64_t(r) * ldy + o] = acc[r];
  }
}

}  // namespace

Kernels avx2_kernels() {
  Kernels k;
  k.q4_0 = rows_b32<kQ4_0>;
  k.q4_1 = rows_b32<kQ4_1>;
  k.q8_0 = rows_b32<kQ8_0>;
  k.q4_k = rows_q4_k;
  k.q6_k = rows_q6_k;
  return k;
}

}  // namespace hybridgen::cpu::quant
