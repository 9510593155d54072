// The portable (x86-64 baseline) row kernels of the quantized GEMV: integer dot products per
// block, scaled once per block, in the formulas of ggml's scalar ggml_vec_dot_*_q8_* — and the
// reference the SIMD paths are read against.
#include <cstring>

#include "cpu/quant/quant_kernels.h"
#include "model/dequant.h"

namespace hybridgen::cpu::quant {

namespace {

// Block-32 weights: each kernel computes one weight row against activation row r.
//   blk: the row's in / 32 blocks;  xq: [in] int8;  xd, xs, xsum: [in / 32]
float row_q4_0(const uint8_t* blk, int nb, const int8_t* xq, const float* xd, const int32_t* xsum) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 18, xq += 32) {
    const uint8_t* qs = blk + 2;
    int sumi = 0;
    for (int j = 0; j < 16; ++j) sumi += (qs[j] & 0xF) * xq[j] + (qs[j] >> 4) * xq[j + 16];
    sumi -= 8 * xsum[b];  // (q - 8) · x = q · x - 8 sum(x)
    acc += f16(blk) * xd[b] * static_cast<float>(sumi);
  }
  return acc;
}

float row_q4_1(const uint8_t* blk, int nb, const int8_t* xq, const float* xd, const float* xs) {
  float acc = 0.f, acc_m = 0.f;
  for (int b = 0; b < nb; ++b, blk += 20, xq += 32) {
    const uint8_t* qs = blk + 4;
    int sumi = 0;
    for (int j = 0; j < 16; ++j) sumi += (qs[j] & 0xF) * xq[j] + (qs[j] >> 4) * xq[j + 16];
    acc += f16(blk) * xd[b] * static_cast<float>(sumi);
    acc_m += f16(blk + 2) * xs[b];  // m · sum(x) with Q8_1's s = d_x · sum(q_x)
  }
  return acc + acc_m;
}

float row_q8_0(const uint8_t* blk, int nb, const int8_t* xq, const float* xd) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 34, xq += 32) {
    const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
    int sumi = 0;
    for (int j = 0; j < 32; ++j) sumi += qs[j] * xq[j];
    acc += f16(blk) * xd[b] * static_cast<float>(sumi);
  }
  return acc;
}

// K-quants against block_q8_K:  xq: [in];  xd: [in / 256];  bsums: [in / 16]
float row_q4_k(const uint8_t* blk, int nb, const int8_t* xq, const float* xd,
               const int16_t* bsums) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 144, xq += 256, bsums += 16) {
    const uint8_t* scales = blk + 4;
    const uint8_t* q = blk + 16;
    int sumi = 0, summ = 0;
    for (int j = 0; j < 4; ++j, q += 32) {
      uint8_t sc0, m0, sc1, m1;
      scale_min_k4(2 * j, scales, &sc0, &m0);
      scale_min_k4(2 * j + 1, scales, &sc1, &m1);
      int s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += (q[l] & 0xF) * xq[64 * j + l];
        s1 += (q[l] >> 4) * xq[64 * j + 32 + l];
      }
      sumi += sc0 * s0 + sc1 * s1;
      summ += m0 * (bsums[4 * j] + bsums[4 * j + 1]) + m1 * (bsums[4 * j + 2] + bsums[4 * j + 3]);
    }
    const float d = f16(blk) * xd[b], dmin = f16(blk + 2) * xd[b];
    acc += d * static_cast<float>(sumi) - dmin * static_cast<float>(summ);
  }
  return acc;
}

float row_q6_k(const uint8_t* blk, int nb, const int8_t* xq, const float* xd) {
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 210, xq += 256) {
    int sumi = 0;
    for (int n = 0; n < 2; ++n) {
      const uint8_t* ql = blk + 64 * n;
      const uint8_t* qh = blk + 128 + 32 * n;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192 + 8 * n);
      const int8_t* x = xq + 128 * n;
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        sumi += sc[is] * q1 * x[l] + sc[is + 2] * q2 * x[l + 32] + sc[is + 4] * q3 * x[l + 64] +
                sc[is + 6] * q4 * x[l + 96];
      }
    }
    acc += f16(blk + 208) * xd[b] * static_cast<float>(sumi);
  }
  return acc;
}

void rows_q4_0(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy, int o0,
               int o1) {
  const int nb = x.in / 32;
  for (int o = o0; o < o1; ++o)
    for (int r = 0; r < x.m; ++r)
      y[int64_t(r) * ldy + o] = row_q4_0(w + o * rb, nb, x.q.data() + int64_t(r) * x.in,
                                         x.d.data() + r * nb, x.isum.data() + r * nb);
}

void rows_q4_1(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy, int o0,
               int o1) {
  const int nb = x.in / 32;
  for (int o = o0; o < o1; ++o)
    for (int r = 0; r < x.m; ++r)
      y[int64_t(r) * ldy + o] = row_q4_1(w + o * rb, nb, x.q.data() + int64_t(r) * x.in,
                                         x.d.data() + r * nb, x.s.data() + r * nb);
}

void rows_q8_0(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy, int o0,
               int o1) {
  const int nb = x.in / 32;
  for (int o = o0; o < o1; ++o)
    for (int r = 0; r < x.m; ++r)
      y[int64_t(r) * ldy + o] =
          row_q8_0(w + o * rb, nb, x.q.data() + int64_t(r) * x.in, x.d.data() + r * nb);
}

void rows_q4_k(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy, int o0,
               int o1) {
  const int nb = x.in / 256;
  for (int o = o0; o < o1; ++o)
    for (int r = 0; r < x.m; ++r)
      y[int64_t(r) * ldy + o] =
          row_q4_k(w + o * rb, nb, x.q.data() + int64_t(r) * x.in, x.d.data() + r * nb,
                   x.bsums.data() + int64_t(r) * (x.in / 16));
}

void rows_q6_k(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy, int o0,
               int o1) {
  const int nb = x.in / 256;
  for (int o = o0; o < o1; ++o)
    for (int r = 0; r < x.m; ++r)
      y[int64_t(r) * ldy + o] =
          row_q6_k(w + o * rb, nb, x.q.data() + int64_t(r) * x.in, x.d.data() + r * nb);
}

// The newer types: one weight row (nb blocks) against activation row r of x.
//   32-blocks: x.q [in], x.d / x.s / x.isum [in / 32];  256-blocks: x.d [in / 256], x.bsums [in /
//   16]

// Q5_0 / Q5_1's 5-bit q of element j (0..31): low nibbles, then the bit j of qh on top.
inline int q5(const uint8_t* qs, uint32_t qh, int j) {
  const int lo = j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4);
  return lo | static_cast<int>(((qh >> j) & 1) << 4);
}

float row_q5_0(const uint8_t* blk, int nb, const QuantActivations& x, int r) {
  const int8_t* xq = x.q.data() + int64_t(r) * x.in;
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 22, xq += 32) {
    uint32_t qh;
    std::memcpy(&qh, blk + 2, 4);
    int sumi = 0;
    for (int j = 0; j < 32; ++j) sumi += q5(blk + 6, qh, j) * xq[j];
    sumi -= 16 * x.isum[r * nb + b];  // (q - 16) · x = q · x - 16 sum(x)
    acc += f16(blk) * x.d[r * nb + b] * static_cast<float>(sumi);
  }
  return acc;
}

float row_q5_1(const uint8_t* blk, int nb, const QuantActivations& x, int r) {
  const int8_t* xq = x.q.data() + int64_t(r) * x.in;
  float acc = 0.f, acc_m = 0.f;
  for (int b = 0; b < nb; ++b, blk += 24, xq += 32) {
    uint32_t qh;
    std::memcpy(&qh, blk + 4, 4);
    int sumi = 0;
    for (int j = 0; j < 32; ++j) sumi += q5(blk + 8, qh, j) * xq[j];
    acc += f16(blk) * x.d[r * nb + b] * static_cast<float>(sumi);
    acc_m += f16(blk + 2) * x.s[r * nb + b];  // m · sum(x) through Q8_1's s
  }
  return acc + acc_m;
}

float row_iq4_nl(const uint8_t* blk, int nb, const QuantActivations& x, int r) {
  const int8_t* xq = x.q.data() + int64_t(r) * x.in;
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 18, xq += 32) {
    const uint8_t* qs = blk + 2;
    int sumi = 0;
    for (int j = 0; j < 16; ++j)
      sumi += kIq4nlValues[qs[j] & 0xF] * xq[j] + kIq4nlValues[qs[j] >> 4] * xq[j + 16];
    acc += f16(blk) * x.d[r * nb + b] * static_cast<float>(sumi);
  }
  return acc;
}

float row_q5_k(const uint8_t* blk, int nb, const QuantActivations& x, int r) {
  const int8_t* xq = x.q.data() + int64_t(r) * x.in;
  const int16_t* bsums = x.bsums.data() + int64_t(r) * (x.in / 16);
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 176, xq += 256, bsums += 16) {
    const uint8_t* qh = blk + 16;
    const uint8_t* ql = blk + 48;
    int sumi = 0, summ = 0;
    for (int j = 0; j < 4; ++j, ql += 32) {
      uint8_t sc0, m0, sc1, m1;
      scale_min_k4(2 * j, blk + 4, &sc0, &m0);
      scale_min_k4(2 * j + 1, blk + 4, &sc1, &m1);
      int s0 = 0, s1 = 0;
      for (int l = 0; l < 32; ++l) {
        s0 += ((ql[l] & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4)) * xq[64 * j + l];
        s1 += ((ql[l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4)) * xq[64 * j + 32 + l];
      }
      sumi += sc0 * s0 + sc1 * s1;
      summ += m0 * (bsums[4 * j] + bsums[4 * j + 1]) + m1 * (bsums[4 * j + 2] + bsums[4 * j + 3]);
    }
    const float d = f16(blk) * x.d[r * nb + b], dmin = f16(blk + 2) * x.d[r * nb + b];
    acc += d * static_cast<float>(sumi) - dmin * static_cast<float>(summ);
  }
  return acc;
}

// Q3_K / Q2_K element e = 128 n + 32 j + l (n < 2, j < 4, l < 32): 2 bits at shift 2 j of byte
// 32 n + l of qs; Q3_K's third bit is bit 4 n + j of hmask[l] (set: no -4); sub-block e / 16.
float row_q3_k(const uint8_t* blk, int nb, const QuantActivations& x, int r) {
  const int8_t* xq = x.q.data() + int64_t(r) * x.in;
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 110, xq += 256) {
    const uint8_t* hm = blk;
    const uint8_t* qs = blk + 32;
    int8_t sc[16];
    scales_q3_k(blk + 96, sc);
    int sumi = 0;
    for (int e = 0; e < 256; e += 16) {
      int s = 0;
      for (int i = e; i < e + 16; ++i) {
        const int n = i / 128, j = (i / 32) % 4, l = i % 32;
        const int q = ((qs[32 * n + l] >> (2 * j)) & 3) - ((hm[l] >> (4 * n + j)) & 1 ? 0 : 4);
        s += q * xq[i];
      }
      sumi += sc[e / 16] * s;
    }
    acc += f16(blk + 108) * x.d[r * nb + b] * static_cast<float>(sumi);
  }
  return acc;
}

float row_q2_k(const uint8_t* blk, int nb, const QuantActivations& x, int r) {
  const int8_t* xq = x.q.data() + int64_t(r) * x.in;
  const int16_t* bsums = x.bsums.data() + int64_t(r) * (x.in / 16);
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 84, xq += 256, bsums += 16) {
    const uint8_t* sc = blk;
    const uint8_t* qs = blk + 16;
    int sumi = 0, summ = 0;
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int i = 16 * g; i < 16 * g + 16; ++i) {
        const int n = i / 128, j = (i / 32) % 4, l = i % 32;
        s += ((qs[32 * n + l] >> (2 * j)) & 3) * xq[i];
      }
      sumi += (sc[g] & 0xF) * s;
      summ += (sc[g] >> 4) * bsums[g];
    }
    const float d = f16(blk + 80) * x.d[r * nb + b], dmin = f16(blk + 82) * x.d[r * nb + b];
    acc += d * static_cast<float>(sumi) - dmin * static_cast<float>(summ);
  }
  return acc;
}

float row_iq4_xs(const uint8_t* blk, int nb, const QuantActivations& x, int r) {
  const int8_t* xq = x.q.data() + int64_t(r) * x.in;
  float acc = 0.f;
  for (int b = 0; b < nb; ++b, blk += 136, xq += 256) {
    int sumi = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* qs = blk + 8 + 16 * ib;
      const int8_t* xb = xq + 32 * ib;
      int s = 0;
      for (int j = 0; j < 16; ++j)
        s += kIq4nlValues[qs[j] & 0xF] * xb[j] + kIq4nlValues[qs[j] >> 4] * xb[j + 16];
      sumi += scale_iq4_xs(blk, ib) * s;
    }
    acc += f16(blk) * x.d[r * nb + b] * static_cast<float>(sumi);
  }
  return acc;
}

template <float (*Row)(const uint8_t*, int, const QuantActivations&, int)>
void rows_of(const uint8_t* w, int64_t rb, const QuantActivations& x, float* y, int ldy, int o0,
             int o1) {
  const int nb = x.in / (Row == row_q5_0 || Row == row_q5_1 || Row == row_iq4_nl ? 32 : 256);
  for (int o = o0; o < o1; ++o)
    for (int r = 0; r < x.m; ++r) y[int64_t(r) * ldy + o] = Row(w + o * rb, nb, x, r);
}

}  // namespace

Kernels portable_kernels() {
  Kernels k;
  k.q4_0 = rows_q4_0;
  k.q4_1 = rows_q4_1;
  k.q8_0 = rows_q8_0;
  k.q4_k = rows_q4_k;
  k.q6_k = rows_q6_k;
  k.q5_0 = rows_of<row_q5_0>;
  k.q5_1 = rows_of<row_q5_1>;
  k.iq4_nl = rows_of<row_iq4_nl>;
  k.q5_k = rows_of<row_q5_k>;
  k.q3_k = rows_of<row_q3_k>;
  k.q2_k = rows_of<row_q2_k>;
  k.iq4_xs = rows_of<row_iq4_xs>;
  return k;
}

}  // namespace hybridgen::cpu::quant
