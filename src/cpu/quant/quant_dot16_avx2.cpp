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

// Rows interleaved by four (repack_rows4, quant_gemv16.h): per block, the four rows' f16
// scales widened by one VCVTPH2PS, each row's 32 weights widened to int16 (Q4: one VPMOVZXBW
// of the 16 bytes, low nibble by AND, high nibble by a 4-bit shift of the word; Q8_0: two
// VPMOVSXBW), the activation block loaded once for the four rows, and the four rows' 8-lane
// VPMADDWD sums reduced by three VPHADDD into one int32 per row, exact (Q8_0: at most
// 32 * 128 * 32767 < 2^31), converted and scaled by one FMA for the four rows. Q4_0's offset
// comes off the integer sums (sum (q - 8) x = sum q x - 8 sum x, exact), Q4_1's mins take one
// FMA per four rows.
// M (= x.m) is a template argument so that, for decode's M = 1, the four rows' weights, sums
// and the accumulators stay in registers (a run-time row loop spilled them to the stack).
template <Fmt F, int M>
HG_AVX2 void rows_b32_r4_m(const uint8_t* w, int64_t rb, const QuantActivations16& x, float* y,
                           int ldy, int o0, int o1) {
  constexpr int kQ = F == kQ8_0 ? 32 : 16;  // quant bytes per row and block
  constexpr int kS = F == kQ4_1 ? 16 : 8;   // f16 fields of the four rows per block
  constexpr int kGroup = kS + 4 * kQ;       // bytes per block of a group of four rows
  const int nb = x.in / 32;
  const __m256i m4 = _mm256_set1_epi16(0x0F);
  const int16_t* xq = x.q.data();
  const float* xd = x.d.data();
  const int32_t* xs = x.isum.data();
  for (int o = o0; o < o1; o += 4) {
    const uint8_t* g = w + int64_t(o / 4) * 4 * rb;
    __m128 acc[M], acc_m[M];
    for (int r = 0; r < M; ++r) acc[r] = acc_m[r] = _mm_setzero_ps();
    for (int b = 0; b < nb; ++b, g += kGroup) {
      __m256i x0[M], x1[M], p[M][4];
      for (int r = 0; r < M; ++r) {
        x0[r] = load16(xq + int64_t(r) * x.in + 32 * b);
        x1[r] = load16(xq + int64_t(r) * x.in + 32 * b + 16);
      }
      for (int k = 0; k < 4; ++k) {
        const __m128i* q = reinterpret_cast<const __m128i*>(g + kS + k * kQ);
        __m256i w0, w1;
        if constexpr (F == kQ8_0) {
          w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(q));
          w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(q + 1));
        } else {
          const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(q));
          w0 = _mm256_and_si256(v, m4);  // elements 0..15
          w1 = _mm256_srli_epi16(v, 4);  // 16..31: a byte's high nibble
        }
        for (int r = 0; r < M; ++r)
          p[r][k] = _mm256_add_epi32(_mm256_madd_epi16(w0, x0[r]), _mm256_madd_epi16(w1, x1[r]));
      }
      const __m128 wd = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g)));
      for (int r = 0; r < M; ++r) {
        // [rows 0..3 of lanes 0..3 | rows 0..3 of lanes 4..7], then the halves added.
        const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[r][0], p[r][1]),
                                            _mm256_hadd_epi32(p[r][2], p[r][3]));
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        const int bi = r * nb + b;
        if constexpr (F == kQ4_0) s = _mm_sub_epi32(s, _mm_set1_epi32(8 * xs[bi]));
        acc[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(s), _mm_mul_ps(wd, _mm_set1_ps(xd[bi])), acc[r]);
        if constexpr (F == kQ4_1) {
          const __m128 wm = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g + 8)));
          acc_m[r] = _mm_fmadd_ps(wm, _mm_set1_ps(xd[bi] * static_cast<float>(xs[bi])), acc_m[r]);
        }
      }
    }
    alignas(16) float out[M][4];
    for (int r = 0; r < M; ++r) _mm_store_ps(out[r], _mm_add_ps(acc[r], acc_m[r]));
    const int n = o1 - o < 4 ? o1 - o : 4;  // a last, padded group
    for (int r = 0; r < M; ++r)
      for (int k = 0; k < n; ++k) y[int64_t(r) * ldy + o + k] = out[r][k];
  }
}

template <Fmt F>
HG_AVX2 void rows_b32_r4(const uint8_t* w, int64_t rb, const QuantActivations16& x, float* y,
                         int ldy, int o0, int o1) {
  static_assert(kGemvMaxRows == 4, "one instance per m");
  switch (x.m) {
    case 1:
      return rows_b32_r4_m<F, 1>(w, rb, x, y, ldy, o0, o1);
    case 2:
      return rows_b32_r4_m<F, 2>(w, rb, x, y, ldy, o0, o1);
    case 3:
      return rows_b32_r4_m<F, 3>(w, rb, x, y, ldy, o0, o1);
    default:
      return rows_b32_r4_m<F, 4>(w, rb, x, y, ldy, o0, o1);
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
  k.q4_0_r4 = rows_b32_r4<kQ4_0>;
  k.q4_1_r4 = rows_b32_r4<kQ4_1>;
  k.q8_0_r4 = rows_b32_r4<kQ8_0>;
  return k;
}

}  // namespace hybridgen::cpu::quant
