// The portable (x86-64 baseline) row kernels of the 16-bit-activation quantized GEMV: per
// activation block of 32, the exact int32 dot product of the block's weight integers with the
// int16 activations, scaled once in float — the reference the SIMD paths are read against.
//   Q4_0: d_w d_x sum (q - 8) x          Q8_0: d_w d_x sum q x
//   Q4_1: d_w d_x sum q x + m_w d_x sum x
//   Q4_K: sub-block j (32): d sc_j d_x sum q x - dmin m_j d_x sum x
//   Q6_K: per 32 (two sub-blocks of 16): d d_x sum sc_g (q - 32) x
#include <vector>

#include "cpu/quant/quant_kernels.h"
#include "cpu/quant/quant_kernels16.h"

namespace hybridgen::cpu::quant {

namespace {

// One weight row against activation row r.
//   blk: the row's blocks;  xq: [in] int16;  xd, xsum: [in / 32]
float row_q4_0(const uint8_t* blk, int nb, const int16_t* xq, const float* xd, const int32_t*) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 18, xq += 32) {
    const uint8_t* qs = blk + 2;
    int32_t sumi = 0;
    for (int j = 0; j < 16; ++j)
      sumi += ((qs[j] & 0xF) - 8) * xq[j] + ((qs[j] >> 4) - 8) * xq[j + 16];
    acc += f16(blk) * xd[b] * static_cast<float>(sumi);
  }
  return acc;
}

float row_q4_1(const uint8_t* blk, int nb, const int16_t* xq, const float* xd,
               const int32_t* xsum) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 20, xq += 32) {
    const uint8_t* qs = blk + 4;
    int32_t sumi = 0;
    for (int j = 0; j < 16; ++j) sumi += (qs[j] & 0xF) * xq[j] + (qs[j] >> 4) * xq[j + 16];
    acc +=
        xd[b] * (f16(blk) * static_cast<float>(sumi) + f16(blk + 2) * static_cast<float>(xsum[b]));
  }
  return acc;
}

float row_q8_0(const uint8_t* blk, int nb, const int16_t* xq, const float* xd, const int32_t*) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 34, xq += 32) {
    const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
    int32_t sumi = 0;
    for (int j = 0; j < 32; ++j) sumi += qs[j] * xq[j];
    acc += f16(blk) * xd[b] * static_cast<float>(sumi);
  }
  return acc;
}

// nb: super-blocks of 256 (8 activation blocks each).
float row_q4_k(const uint8_t* blk, int nb, const int16_t* xq, const float* xd,
               const int32_t* xsum) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 144, xq += 256, xd += 8, xsum += 8) {
    const float d = f16(blk), dmin = f16(blk + 2);
    const uint8_t* q = blk + 16;
    for (int j = 0; j < 4; ++j, q += 32) {
      uint8_t sc0, m0, sc1, m1;
      scale_min_k4(2 * j, blk + 4, &sc0, &m0);
      scale_min_k4(2 * j + 1, blk + 4, &sc1, &m1);
      int32_t s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += (q[l] & 0xF) * xq[64 * j + l];
        s1 += (q[l] >> 4) * xq[64 * j + 32 + l];
      }
      acc += xd[2 * j] *
             (d * sc0 * static_cast<float>(s0) - dmin * m0 * static_cast<float>(xsum[2 * j]));
      acc += xd[2 * j + 1] *
             (d * sc1 * static_cast<float>(s1) - dmin * m1 * static_cast<float>(xsum[2 * j + 1]));
    }
  }
  return acc;
}

float row_q6_k(const uint8_t* blk, int nb, const int16_t* xq, const float* xd, const int32_t*) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 210, xq += 256, xd += 8) {
    const float d = f16(blk + 208);
    for (int n = 0; n < 2; ++n) {
      const uint8_t* ql = blk + 64 * n;
      const uint8_t* qh = blk + 128 + 32 * n;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192 + 8 * n);
      // Quarter k (activation block 4n + k) holds elements 32k..32k+31 of this half; its
      // first 16 have scale sc[2k], the next 16 sc[2k + 1]. One int32 sum per 16: each is at
      // most 16 * 32 * 128 * 32767 < 2^31, a quarter's two could reach 2^32.
      int32_t s[4][2] = {};
      for (int l = 0; l < 32; ++l) {
        const int g = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        const int16_t* x = xq + 128 * n + l;
        s[0][g] += sc[g] * q1 * x[0];
        s[1][g] += sc[g + 2] * q2 * x[32];
        s[2][g] += sc[g + 4] * q3 * x[64];
        s[3][g] += sc[g + 6] * q4 * x[96];
      }
      for (int k = 0; k < 4; ++k)
        acc += d * xd[4 * n + k] * (static_cast<float>(s[k][0]) + static_cast<float>(s[k][1]));
    }
  }
  return acc;
}

using RowFn = float (*)(const uint8_t*, int, const int16_t*, const float*, const int32_t*);

template <RowFn F, int kBlock>
void rows(const uint8_t* w, int64_t rb, const QuantActivations16& x, float* y, int ldy, int o0,
          int o1) {
  const int nb = x.in / kBlock, nx = x.in / kAct16Block;
  for (int o = o0; o < o1; ++o)
    for (int r = 0; r < x.m; ++r)
      y[int64_t(r) * ldy + o] = F(w + o * rb, nb, x.q.data() + int64_t(r) * x.in,
                                  x.d.data() + int64_t(r) * nx, x.isum.data() + int64_t(r) * nx);
}

// Repacked rows (repack_rows4): each row's blocks unpacked to the GGUF bytes, then the row
// kernel above, so the layout is checked independently of the SIMD kernels reading it.
template <RowFn F, DType T>
void rows_r4(const uint8_t* w, int64_t rb, const QuantActivations16& x, float* y, int ldy, int o0,
             int o1) {
  const int nb = x.in / 32;
  std::vector<uint8_t> row(rb);
  for (int o = o0; o < o1; ++o) {
    unpack_row4(T, w, o, x.in, row.data());
    for (int r = 0; r < x.m; ++r)
      y[int64_t(r) * ldy + o] = F(row.data(), nb, x.q.data() + int64_t(r) * x.in,
                                  x.d.data() + int64_t(r) * nb, x.isum.data() + int64_t(r) * nb);
  }
}

}  // namespace

Kernels16 portable_kernels16() {
  Kernels16 k;
  k.q4_0 = rows<row_q4_0, 32>;
  k.q4_1 = rows<row_q4_1, 32>;
  k.q8_0 = rows<row_q8_0, 32>;
  k.q4_k = rows<row_q4_k, 256>;
  k.q6_k = rows<row_q6_k, 256>;
  k.q4_0_r4 = rows_r4<row_q4_0, DType::kQ4_0>;
  k.q4_1_r4 = rows_r4<row_q4_1, DType::kQ4_1>;
  k.q8_0_r4 = rows_r4<row_q8_0, DType::kQ8_0>;
  return k;
}

}  // namespace hybridgen::cpu::quant
