// The AVX2 row kernels of the quantized GEMV: 32 weights of a block against 32 int8
// activations in one VPMADDUBSW (unsigned weight nibbles x signed activations; signed weights
// through the |w|, sign(x, w) identity, as ggml does) and VPMADDWD to int32, then one float
// FMA per block with the product of the two scales. K-quants fold the 6-bit sub-block scale
// into the VPMADDWD and subtract the mins (Q4_K) or the +32 offset (Q6_K) through Q8_K's sums
// of 16 activations.
#include <immintrin.h>

#include <cstring>

#include "cpu/quant/quant_kernels.h"
#include "cpu/quant/simd_helpers.h"
#include "model/dequant.h"

namespace hybridgen::cpu::quant {

namespace {

// Sum over 32 products of unsigned bytes u and signed bytes s, as 8 int32 partial sums.
HG_AVX2 inline __m256i dot_us(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
// The same for two signed operands: |a| · sign(b, a) = a · b elementwise.
HG_AVX2 inline __m256i dot_ss(__m256i a, __m256i b) {
  return dot_us(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

// The 32 bits at p as 32 bytes: byte j = 0xFF where bit j is set, else 0 (Q5_0 / Q5_1's qh).
HG_AVX2 inline __m256i bits_to_bytes(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  // Byte j takes byte j / 8 of v, then keeps its bit j % 8.
  const __m256i spread =
      _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(v)),
                          _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                            0x0101010101010101, 0x0000000000000000));
  const __m256i sel = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel);
}

// IQ4_NL / IQ4_XS: 16 bytes of indices -> the 32 signed levels (low nibbles first).
HG_AVX2 inline __m256i iq4_levels(const uint8_t* qs) {
  const __m256i table =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
  return _mm256_shuffle_epi8(table, nibbles(qs));
}

enum Fmt { kQ4_0, kQ4_1, kQ8_0, kQ5_0, kQ5_1, kIQ4_NL };

// Block-32 formats. Two accumulators per activation row (even and odd blocks) so that the FMA
// latency does not serialise the blocks.
template <Fmt F>
HG_AVX2 void rows_b32(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy,
                      int o0, int o1) {
  constexpr int kBytes = F == kQ4_0 || F == kIQ4_NL ? 18
                         : F == kQ4_1               ? 20
                         : F == kQ5_0               ? 22
                         : F == kQ5_1               ? 24
                                                    : 34;
  constexpr bool kHasMin = F == kQ4_1 || F == kQ5_1;  // unsigned q, m · s added
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
      else if constexpr (F == kQ4_1)
        wq = nibbles(blk + 4);
      else if constexpr (F == kIQ4_NL)
        wq = iq4_levels(blk + 2);
      else {  // Q5: the fifth bit (qh) on the nibbles; Q5_0 signed as q - 16
        const uint8_t* qs = blk + (F == kQ5_0 ? 6 : 8);
        wq = _mm256_or_si256(
            nibbles(qs),
            _mm256_and_si256(bits_to_bytes(blk + (F == kQ5_0 ? 2 : 4)), _mm256_set1_epi8(0x10)));
        if constexpr (F == kQ5_0) wq = _mm256_sub_epi8(wq, _mm256_set1_epi8(16));
      }
      for (int r = 0; r < m; ++r) {
        const __m256i xq = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(x.q.data() + int64_t(r) * x.in + 32 * b));
        const __m256i p = kHasMin ? dot_us(wq, xq) : dot_ss(wq, xq);
        const __m256 scale = _mm256_set1_ps(wd * x.d[r * nb + b]);
        acc[r][b & 1] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[r][b & 1]);
        if constexpr (kHasMin) acc_m[r] += f16c(blk + 2) * x.s[r * nb + b];
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

// Q5_K: Q4_K's layout plus qh[32] (blk + 16), whose bit 2j / 2j+1 is the fifth bit of the low /
// high nibbles of the j-th 32 bytes of qs (blk + 48).
HG_AVX2 void rows_q5_k(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy,
                       int o0, int o1) {
  const int nb = x.in / 256, m = x.m;
  const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  for (int o = o0; o < o1; ++o) {
    const uint8_t* row = w + o * rb;
    float acc[kGemvMaxRows];
    for (int r = 0; r < m; ++r) acc[r] = 0.f;
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = row + int64_t(b) * 176;
      uint8_t sc[8], mn[8];
      for (int j = 0; j < 8; ++j) scale_min_k4(j, blk + 4, &sc[j], &mn[j]);
      const float wd = f16c(blk), wmin = f16c(blk + 2);
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16));
      __m256i sumi[kGemvMaxRows];
      for (int r = 0; r < m; ++r) sumi[r] = _mm256_setzero_si256();
      for (int j = 0; j < 4; ++j) {
        const __m256i qb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 48 + 32 * j));
        // (qh >> s) & 1 per byte, then << 4 inside each byte (a 0/1 byte cannot carry over).
        const __m256i h0 =
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * j), one), 4);
        const __m256i h1 =
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * j + 1), one), 4);
        const __m256i lo = _mm256_or_si256(_mm256_and_si256(qb, m4), h0);
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4), h1);
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

// Q3_K and Q2_K: element 128 n + 32 j + l is 2 bits at shift 2 j of byte l of the n-th 32 bytes
// of qs; sub-block (16 elements) g has scale sc[g]. Q3_K: the third bit (bit 4 n + j of
// hmask[l]) set means no -4, so q + 4 = low | bit << 2 is unsigned and the -4 comes off through
// the bsums; Q2_K: unsigned, its 4-bit mins through the bsums.
template <bool kQ3>
HG_AVX2 void rows_q3_q2_k(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y,
                          int ldy, int o0, int o1) {
  constexpr int kBytes = kQ3 ? 110 : 84, kQs = kQ3 ? 32 : 16;
  const int nb = x.in / 256, m = x.m;
  const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  for (int o = o0; o < o1; ++o) {
    const uint8_t* row = w + o * rb;
    float acc[kGemvMaxRows];
    for (int r = 0; r < m; ++r) acc[r] = 0.f;
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = row + int64_t(b) * kBytes;
      int8_t sc[16];  // Q3_K: -32..31;  Q2_K: the scale nibbles 0..15
      if constexpr (kQ3)
        scales_q3_k(blk + 96, sc);
      else
        for (int g = 0; g < 16; ++g) sc[g] = static_cast<int8_t>(blk[g] & 0xF);
      const __m256i hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk));  // Q3_K
      __m256i sumi[kGemvMaxRows];
      for (int r = 0; r < m; ++r) sumi[r] = _mm256_setzero_si256();
      for (int n = 0; n < 2; ++n) {
        const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + kQs + 32 * n));
        for (int j = 0; j < 4; ++j) {
          __m256i u = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), m3);
          if constexpr (kQ3)
            u = _mm256_or_si256(
                u, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * n + j), one), 2));
          // The low 16 elements have scale g, the high 16 scale g + 1.
          const int g = 8 * n + 2 * j;
          const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
          for (int r = 0; r < m; ++r) {
            const int8_t* xr = x.q.data() + int64_t(r) * x.in + 256 * b + 128 * n + 32 * j;
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr));
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), s));
          }
        }
      }
      for (int r = 0; r < m; ++r) {
        const int16_t* bs = x.bsums.data() + int64_t(r) * (x.in / 16) + 16 * b;
        const float xd = x.d[r * nb + b];
        int corr = 0;  // Q3_K: sum_g sc[g] bsums[g] (times 4);  Q2_K: sum_g min[g] bsums[g]
        if constexpr (kQ3) {
          for (int g = 0; g < 16; ++g) corr += sc[g] * bs[g];
          acc[r] += f16c(blk + 108) * xd * static_cast<float>(hsum_i32(sumi[r]) - 4 * corr);
        } else {
          for (int g = 0; g < 16; ++g) corr += (blk[g] >> 4) * bs[g];
          acc[r] += f16c(blk + 80) * xd * static_cast<float>(hsum_i32(sumi[r])) -
                    f16c(blk + 82) * xd * static_cast<float>(corr);
        }
      }
    }
    for (int r = 0; r < m; ++r) y[int64_t(r) * ldy + o] = acc[r];
  }
}

// IQ4_XS: 8 sub-blocks of 32 (IQ4_NL's levels, signed) with 6-bit scales -32..31.
HG_AVX2 void rows_iq4_xs(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy,
                         int o0, int o1) {
  const int nb = x.in / 256, m = x.m;
  for (int o = o0; o < o1; ++o) {
    const uint8_t* row = w + o * rb;
    float acc[kGemvMaxRows];
    for (int r = 0; r < m; ++r) acc[r] = 0.f;
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = row + int64_t(b) * 136;
      __m256i sumi[kGemvMaxRows];
      for (int r = 0; r < m; ++r) sumi[r] = _mm256_setzero_si256();
      for (int ib = 0; ib < 8; ++ib) {
        const __m256i wq = iq4_levels(blk + 8 + 16 * ib);
        const __m256i uw = _mm256_sign_epi8(wq, wq);
        const __m256i s = _mm256_set1_epi16(static_cast<int16_t>(scale_iq4_xs(blk, ib)));
        for (int r = 0; r < m; ++r) {
          const int8_t* xr = x.q.data() + int64_t(r) * x.in + 256 * b + 32 * ib;
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr));
          // |w| · sign(x, w): pairs at most 2 · 127 · 127 = 32258, no saturation.
          sumi[r] = _mm256_add_epi32(
              sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(uw, _mm256_sign_epi8(xv, wq)), s));
        }
      }
      const float wd = f16c(blk);
      for (int r = 0; r < m; ++r)
        acc[r] += wd * x.d[r * nb + b] * static_cast<float>(hsum_i32(sumi[r]));
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
  k.q5_0 = rows_b32<kQ5_0>;
  k.q5_1 = rows_b32<kQ5_1>;
  k.iq4_nl = rows_b32<kIQ4_NL>;
  k.q5_k = rows_q5_k;
  k.q3_k = rows_q3_q2_k<true>;
  k.q2_k = rows_q3_q2_k<false>;
  k.iq4_xs = rows_iq4_xs;
  return k;
}

}  // namespace hybridgen::cpu::quant
