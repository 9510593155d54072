// The 16-bit activation quantization of the quantized GEMV (cpu/quant/quant_gemv16.h): per block of
// 32, d = amax / 32767 in float32 and q = round-half-even(x * 32767 / amax), clamped to
// +-32767 (never -32768: VPMADDWD's one overflow is (-32768)^2 * 2); below amax ~1e-34, where
// 32767 / amax overflows float, d is the subnormal just above amax / 32767. Scalar but written so
// the compiler vectorizes it (no libm call in the loops): a decode step quantizes a few thousand
// values per projection, against megabytes of weight blocks streamed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "cpu/quant/quant_gemv16.h"
#include "cpu/quant/simd_helpers.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace {

using quant::nearest_int;

//   x: [in];  q: [in];  d, isum: [in / 32]
void quantize_row16(const float* x, int in, int16_t* q, float* d, int32_t* isum) {
  for (int b = 0; b < in / kAct16Block; ++b) {
    const float* xb = x + kAct16Block * b;
    int16_t* qb = q + kAct16Block * b;
    float amax = 0.f;
    for (int j = 0; j < kAct16Block; ++j) amax = std::max(amax, std::fabs(xb[j]));
    if (amax == 0.f) {
      d[b] = 0.f;
      isum[b] = 0;
      std::fill(qb, qb + kAct16Block, int16_t{0});
      continue;
    }
    float dd = amax / 32767.f;
    const float id = 32767.f / amax;
    int32_t sum = 0;
    if (std::isfinite(id)) {
      for (int j = 0; j < kAct16Block; ++j) {
        const int v = std::clamp(nearest_int(xb[j] * id), -32767, 32767);
        qb[j] = static_cast<int16_t>(v);
        sum += v;
      }
    } else {
      // amax below ~1e-34: d is subnormal (coarse), so round x / d in double against the d
      // actually stored, d raised until amax / d <= 32767 (no clamping, half a step of d).
      while (double(amax) / dd > 32767.0) dd = std::nextafter(dd, 1.f);
      for (int j = 0; j < kAct16Block; ++j) {
        const int v = static_cast<int>(std::nearbyint(double(xb[j]) / dd));
        qb[j] = static_cast<int16_t>(v);
        sum += v;
      }
    }
    d[b] = dd;
    isum[b] = sum;
  }
}

}  // namespace

void quantize_activations16(const float* x, int m, int in, QuantActivations16* out) {
  HG_CHECK(m >= 1 && in > 0 && in % kAct16Block == 0,
           "quantize_activations16: " + std::to_string(in) + " inputs is not a multiple of " +
               std::to_string(kAct16Block));
  out->m = m;
  out->in = in;
  const size_t n = static_cast<size_t>(m) * in, nb = n / kAct16Block;
  out->q.resize(n);
  out->d.resize(nb);
  out->isum.resize(nb);
  for (int r = 0; r < m; ++r) {
    const size_t b0 = size_t(r) * (in / kAct16Block);
    quantize_row16(x + size_t(r) * in, in, out->q.data() + size_t(r) * in, out->d.data() + b0,
                   out->isum.data() + b0);
  }
}

}  // namespace hybridgen::cpu
