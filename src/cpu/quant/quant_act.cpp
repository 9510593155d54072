// Activation quantization for the quantized GEMV: ggml's quantize_row_q8_0 / q8_1 (the AVX2
// versions, which llama.cpp runs on x86: scale 127 / amax, round to nearest even) and
// quantize_row_q8_K_ref. Scalar: a decode step quantizes a few thousand values per projection,
// against millions of weight bytes streamed.
#include <cmath>
#include <cstring>

#include "cpu/quant/quant_gemv.h"
#include "cpu/quant/quant_kernels.h"
#include "cpu/quant/simd_helpers.h"
#include "model/dequant.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace quant {

float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

void scales_q3_k(const uint8_t* q, int8_t out[16]) {
  // ggml's unpacking: the low nibbles of bytes 0..7, then their high nibbles, with two bits of
  // bytes 8..11 on top of each.
  uint8_t s[16];
  for (int j = 0; j < 8; ++j) {
    s[j] = q[j] & 0xF;
    s[j + 8] = q[j] >> 4;
  }
  for (int j = 0; j < 16; ++j)
    out[j] = static_cast<int8_t>((s[j] | (((q[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
}

int scale_iq4_xs(const uint8_t* blk, int ib) {
  const int h = blk[2] | (blk[3] << 8);
  return (((blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((h >> (2 * ib)) & 3) << 4)) - 32;
}

}  // namespace quant

bool quant_gemv_supports(DType t) { return quant_act_block(t) != 0; }

int quant_act_block(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kIQ4_NL:
      return 32;  // block_q8_0 / block_q8_1
    case DType::kQ4_K:
    case DType::kQ6_K:
    case DType::kQ5_K:
    case DType::kQ3_K:
    case DType::kQ2_K:
    case DType::kIQ4_XS:
      return 256;  // block_q8_K
    default:
      return 0;
  }
}

namespace {

using quant::nearest_int;

// One row into blocks of 32 (block_q8_0 / block_q8_1).
//   x: [in];  q: [in];  d, s, isum: [in / 32]
void quantize_row_q8_32(const float* x, int in, int8_t* q, float* d, float* s, int32_t* isum) {
  for (int b = 0; b < in / 32; ++b) {
    const float* xb = x + 32 * b;
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float dd = amax / 127.f;
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int v = static_cast<int>(std::nearbyint(xb[j] * id));  // nearest even
      q[32 * b + j] = static_cast<int8_t>(v);
      sum += v;
    }
    d[b] = f16_to_f32(f32_to_f16(dd));
    s[b] = f16_to_f32(f32_to_f16(dd * static_cast<float>(sum)));
    isum[b] = sum;
  }
}

// One row into block_q8_K (quantize_row_q8_K_ref).   q: [in];  d: [in / 256];  bsums: [in / 16]
void quantize_row_q8_k(const float* x, int in, int8_t* q, float* d, int16_t* bsums) {
  for (int b = 0; b < in / 256; ++b) {
    const float* xb = x + 256 * b;
    int8_t* qb = q + 256 * b;
    float max = 0.f, amax = 0.f;
    for (int j = 0; j < 256; ++j) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) {
        amax = ax;
        max = xb[j];
      }
    }
    if (amax == 0.f) {
      d[b] = 0.f;
      std::memset(qb, 0, 256);
      for (int j = 0; j < 16; ++j) bsums[16 * b + j] = 0;
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; ++j)
      qb[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * xb[j])));
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += qb[16 * j + l];
      bsums[16 * b + j] = static_cast<int16_t>(sum);
    }
    d[b] = 1 / iscale;
  }
}

}  // namespace

void quantize_activations(DType t, const float* x, int m, int in, QuantActivations* out) {
  HG_CHECK(quant_gemv_supports(t),
           std::string("quantize_activations: no native GEMV for ") + std::string(dtype_name(t)));
  const int block = quant_act_block(t);
  const bool k = block == 256;
  HG_CHECK(m >= 1 && in > 0 && in % block == 0, "quantize_activations: " + std::to_string(in) +
                                                    " inputs is not a multiple of " +
                                                    std::to_string(block));
  out->weight_type = t;
  out->m = m;
  out->in = in;
  const size_t n = static_cast<size_t>(m) * in;
  out->q.resize(n);
  out->d.resize(n / block);
  if (k) {
    out->bsums.resize(n / 16);
    for (int r = 0; r < m; ++r)
      quantize_row_q8_k(x + size_t(r) * in, in, out->q.data() + size_t(r) * in,
                        out->d.data() + size_t(r) * (in / 256),
                        out->bsums.data() + size_t(r) * (in / 16));
  } else {
    out->s.resize(n / 32);
    out->isum.resize(n / 32);
    for (int r = 0; r < m; ++r) {
      const size_t b0 = size_t(r) * (in / 32);
      quantize_row_q8_32(x + size_t(r) * in, in, out->q.data() + size_t(r) * in, out->d.data() + b0,
                         out->s.data() + b0, out->isum.data() + b0);
    }
  }
}

}  // namespace hybridgen::cpu
