// The 16-bit-activation quantized GEMV (cpu/quant/quant_gemv16.h) on every path this CPU can run,
// whatever HYBRIDGEN_CPU_ISA says, every native type, against two double-precision references
// of the weights dequantized by model/dequant (bit-exact with gguf-py, dequant_test):
//  * W x̂ with x̂ = d q the quantized activations: the kernels' only error is float32
//    summation (and the int32 -> float conversion of block sums), bounded by 4e-6 of the sum
//    of |terms| (including the split of Q4_1's and Q4_K's mins);
//  * W x with the float activations: the bound is the int16 rounding, |x - d q| <= 0.51 d per
//    element (half a step, plus the float rounding of x * 32767 / amax), so
//    sum over blocks of 0.51 d_x sum |W| plus the summation slack above.
// Weights with f16 scales and mins at their extremes (+-65504, 2^-24, 0, random finite bit
// patterns), sub-block scales at their extremes; activations with zero blocks, blocks of
// 1e-3 and 30, single 1e4 outliers.
#include "cpu/quant/quant_gemv16.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/gemv.h"
#include "cpu/quant/quant_kernels.h"
#include "hybridgen/error.h"
#include "model/dequant.h"

using namespace hybridgen;
using namespace hybridgen::cpu;

namespace {

struct Layout {
  DType t;
  std::vector<int> f16_fields;  // offsets of f16 scale / min
  int sc_lo, sc_hi;             // byte range of sub-block scales (0, 0: none)
};

const Layout kLayouts[] = {
    {DType::kQ4_0, {0}, 0, 0},     {DType::kQ4_1, {0, 2}, 0, 0},    {DType::kQ8_0, {0}, 0, 0},
    {DType::kQ4_K, {0, 2}, 4, 16}, {DType::kQ6_K, {208}, 192, 208},
};

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
float get_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// rows x (in / block) random blocks; block b's f16 fields cycle through the extremes.
std::vector<uint8_t> random_blocks(const Layout& L, int rows, int in, std::mt19937& rng) {
  const int64_t bb = dtype_block_bytes(L.t), nb = int64_t(rows) * in / dtype_block_size(L.t);
  std::vector<uint8_t> w(nb * bb);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> mag(1e-3f, 5e-2f);
  for (auto& v : w) v = static_cast<uint8_t>(byte(rng));
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* blk = w.data() + b * bb;
    const int kind = static_cast<int>(b % 8);
    for (size_t k = 0; k < L.f16_fields.size(); ++k) {
      uint8_t* p = blk + L.f16_fields[k];
      switch (kind) {
        case 1:
          put_f16(p, 65504.f);
          break;
        case 2:
          put_f16(p, k == 0 ? 65504.f : -65504.f);
          break;
        case 3: {
          const uint16_t h = k == 0 ? 0x0001 : 0x8001;  // +-2^-24
          std::memcpy(p, &h, 2);
          break;
        }
        case 4:
          put_f16(p, 0.f);
          break;
        case 7: {  // any finite f16
          const uint16_t h = static_cast<uint16_t>((byte(rng) << 8 | byte(rng)) % 0x7C00) |
                             static_cast<uint16_t>((byte(rng) & 1) << 15);
          std::memcpy(p, &h, 2);
          break;
        }
        default:
          put_f16(p, mag(rng) * (byte(rng) & 1 ? 1.f : -1.f));
      }
    }
    if (L.sc_hi > L.sc_lo && (kind == 5 || kind == 6)) {
      // Largest sub-scales (0xFF: 63 / 63 for Q4_K; Q6_K's int8 at 0x7F / 0x80) or zero ones.
      for (int i = L.sc_lo; i < L.sc_hi; ++i)
        blk[i] = kind == 6 ? 0 : L.t == DType::kQ6_K ? (i % 2 ? 0x80 : 0x7F) : 0xFF;
    }
    if (L.t == DType::kQ6_K && kind == 5)  // every q - 32 = -32 against the -128 scales
      std::memset(blk, 0, 192);
  }
  return w;
}

// Activations with blocks all zero, dominated by one value, and of very different sizes.
std::vector<float> random_activations(int m, int in, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(size_t(m) * in);
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t blk = i / 32;
    const float scale = blk % 5 == 0 ? 1e-3f : blk % 5 == 1 ? 30.f : 1.f;
    x[i] = blk % 7 == 3 ? 0.f : nd(rng) * scale;
    if (blk % 11 == 5 && i % 32 == 7) x[i] = 1e4f;
    if (blk % 13 == 6) x[i] = -1e4f;  // a block at its most negative everywhere
  }
  return x;
}

// The magnitude of a min part per block of 32 inputs (Q4_1's m, Q4_K's dmin * m_j; 0 else):
// the kernels subtract it from the scaled sum, so its size enters the float slack.
double min_part(DType t, const uint8_t* row, int b32) {
  if (t == DType::kQ4_1) return std::fabs(get_f16(row + 20 * b32 + 2));
  if (t == DType::kQ4_K) {
    const uint8_t* blk = row + 144 * (b32 / 8);
    uint8_t sc, mn;
    quant::scale_min_k4(b32 % 8, blk + 4, &sc, &mn);
    return std::fabs(double(get_f16(blk + 2)) * mn);
  }
  return 0;
}

struct Ref {
  std::vector<double> exact_q;  // [m, rows] W x̂
  std::vector<double> exact_x;  // [m, rows] W x
  std::vector<double> slack;    // [m, rows] float summation bound
  std::vector<double> round;    // [m, rows] the int16 rounding bound
};

Ref reference(const Layout& L, const std::vector<float>& W, const std::vector<uint8_t>& w,
              const std::vector<float>& x, const QuantActivations16& xq, int rows) {
  const int in = xq.in, m = xq.m, nx = in / 32;
  const int64_t rb = in / dtype_block_size(L.t) * dtype_block_bytes(L.t);
  Ref R;
  for (auto* v : {&R.exact_q, &R.exact_x, &R.slack, &R.round}) v->assign(size_t(m) * rows, 0.0);
  for (int r = 0; r < m; ++r)
    for (int o = 0; o < rows; ++o) {
      double sq = 0, sx = 0, a = 0, rnd = 0;
      for (int b = 0; b < nx; ++b) {
        const double d = xq.d[size_t(r) * nx + b];
        double wabs = 0, xabs = 0;
        for (int j = 32 * b; j < 32 * b + 32; ++j) {
          const double wv = W[size_t(o) * in + j];
          const double xh = d * xq.q[size_t(r) * in + j];
          sq += wv * xh;
          sx += wv * x[size_t(r) * in + j];
          a += std::fabs(wv * xh);
          wabs += std::fabs(wv);
          xabs += std::fabs(xh);
        }
        a += 2 * min_part(L.t, w.data() + o * rb, b) * xabs;  // the min, and the rest before it
        rnd += 0.51 * d * wabs;
      }
      const size_t k = size_t(r) * rows + o;
      R.exact_q[k] = sq;
      R.exact_x[k] = sx;
      R.slack[k] = 4e-6 * a + 1e-6;
      R.round[k] = rnd;
    }
  return R;
}

}  // namespace

TEST(QuantGemv16, EveryPathEveryTypeMatchesDoubleReference) {
  std::mt19937 rng(1616);
  const std::vector<QuantPath> paths = quant_paths_this_cpu_has();
  std::printf("[ quant16 ] paths:");
  for (QuantPath p : paths) std::printf(" %s", quant_path_name(p));
  std::printf("\n");
  for (const Layout& L : kLayouts) {
    const bool k = L.t == DType::kQ4_K || L.t == DType::kQ6_K;
    for (int in : k ? std::vector<int>{256, 512} : std::vector<int>{32, 96, 576}) {
      const int rows = 67;  // not a multiple of the 64-row chunk
      const std::vector<uint8_t> w = random_blocks(L, rows, in, rng);
      std::vector<float> W(size_t(rows) * in);
      dequantize(L.t, w.data(), W.data(), int64_t(rows) * in);
      for (int m = 1; m <= kGemvMaxRows; ++m) {
        const std::vector<float> x = random_activations(m, in, rng);
        QuantActivations16 xq;
        quantize_activations16(x.data(), m, in, &xq);
        const Ref R = reference(L, W, w, x, xq, rows);
        std::vector<float> bias(rows);
        for (int o = 0; o < rows; ++o) bias[o] = 0.25f * float(o % 5) - 0.5f;
        for (QuantPath p : paths) {
          SCOPED_TRACE(std::string(dtype_name(L.t)) + " in " + std::to_string(in) + " m " +
                       std::to_string(m) + " path " + quant_path_name(p));
          const int ldy = rows + 3;  // y is a column range of a wider output
          std::vector<float> y(size_t(m) * ldy, -777.f);
          gemv_quant16_on(p, L.t, w.data(), xq, bias.data(), y.data(), ldy, rows);
          int bad = 0;
          for (int r = 0; r < m; ++r) {
            for (int o = 0; o < rows; ++o) {
              const size_t i = size_t(r) * rows + o;
              const double got = y[size_t(r) * ldy + o] - double(bias[o]);
              if (!(std::fabs(got - R.exact_q[i]) <= R.slack[i]) && ++bad <= 3)
                ADD_FAILURE() << "y[" << r << "," << o << "] = " << got << ", W x̂ " << R.exact_q[i]
                              << " (slack " << R.slack[i] << ")";
              if (!(std::fabs(got - R.exact_x[i]) <= R.round[i] + R.slack[i]) && ++bad <= 3)
                ADD_FAILURE() << "y[" << r << "," << o << "] = " << got << ", W x " << R.exact_x[i]
                              << " (bound " << R.round[i] + R.slack[i] << ")";
            }
            for (int o = rows; o < ldy; ++o)  // columns past `rows` untouched
              EXPECT_EQ(y[size_t(r) * ldy + o], -777.f);
          }
          EXPECT_EQ(bad, 0);
        }
      }
    }
  }
}

// Rows interleaved by four (repack_rows4): the round trip gives GGUF's bytes back, and the
// interleaved kernels of every path meet the same two references as the row-major ones, on
// row counts that leave a last group of 1..3 rows (padded) and chunk edges inside groups' reach.
TEST(QuantGemv16, InterleavedRowsMatchDoubleReference) {
  std::mt19937 rng(4444);
  const std::vector<QuantPath> paths = quant_paths_this_cpu_has();
  for (const Layout& L : kLayouts) {
    if (!quant16_r4_supports(L.t)) continue;
    for (int in : {32, 96, 576}) {
      for (int rows : {1, 67, 130, 4}) {
        const std::vector<uint8_t> w = random_blocks(L, rows, in, rng);
        const std::vector<uint8_t> packed = repack_rows4(L.t, w.data(), rows, in);
        const int64_t rb = in / 32 * dtype_block_bytes(L.t);
        ASSERT_EQ(packed.size(), size_t((rows + 3) / 4) * 4 * rb);
        std::vector<uint8_t> back(rb);
        for (int o = 0; o < rows; ++o) {
          unpack_row4(L.t, packed.data(), o, in, back.data());
          ASSERT_EQ(0, std::memcmp(back.data(), w.data() + o * rb, rb))
              << dtype_name(L.t) << " row " << o;
        }
        std::vector<float> W(size_t(rows) * in);
        dequantize(L.t, w.data(), W.data(), int64_t(rows) * in);
        for (int m = 1; m <= kGemvMaxRows; ++m) {
          const std::vector<float> x = random_activations(m, in, rng);
          QuantActivations16 xq;
          quantize_activations16(x.data(), m, in, &xq);
          const Ref R = reference(L, W, w, x, xq, rows);
          std::vector<float> bias(rows);
          for (int o = 0; o < rows; ++o) bias[o] = 0.125f * float(o % 3) - 0.25f;
          for (QuantPath p : paths) {
            SCOPED_TRACE(std::string(dtype_name(L.t)) + " r4 in " + std::to_string(in) + " rows " +
                         std::to_string(rows) + " m " + std::to_string(m) + " path " +
                         quant_path_name(p));
            const int ldy = rows + 5;
            std::vector<float> y(size_t(m) * ldy, -777.f);
            gemv_quant16_r4_on(p, L.t, packed.data(), xq, bias.data(), y.data(), ldy, rows);
            int bad = 0;
            for (int r = 0; r < m; ++r) {
              for (int o = 0; o < rows; ++o) {
                const size_t i = size_t(r) * rows + o;
                const double got = y[size_t(r) * ldy + o] - double(bias[o]);
                if (!(std::fabs(got - R.exact_q[i]) <= R.slack[i]) && ++bad <= 3)
                  ADD_FAILURE() << "y[" << r << "," << o << "] = " << got << ", W x̂ "
                                << R.exact_q[i] << " (slack " << R.slack[i] << ")";
                if (!(std::fabs(got - R.exact_x[i]) <= R.round[i] + R.slack[i]) && ++bad <= 3)
                  ADD_FAILURE() << "y[" << r << "," << o << "] = " << got << ", W x "
                                << R.exact_x[i] << " (bound " << R.round[i] + R.slack[i] << ")";
              }
              for (int o = rows; o < ldy; ++o)  // the padded rows are not written
                EXPECT_EQ(y[size_t(r) * ldy + o], -777.f);
            }
            EXPECT_EQ(bad, 0);
          }
        }
      }
    }
  }
  EXPECT_THROW(repack_rows4(DType::kQ4_K, nullptr, 4, 256), Error);
  EXPECT_THROW(repack_rows4(DType::kQ4_1, nullptr, 4, 40), Error);
}

// The activation blocks: d = amax / 32767 (a subnormal d rounded up), |q| <= 32767,
// |x - d q| <= 0.51 d, isum = sum q; all-zero blocks have d = 0, q = 0.
TEST(QuantGemv16, ActivationBlocks) {
  std::mt19937 rng(7);
  const int in = 512, m = 3;
  std::vector<float> x = random_activations(m, in, rng);
  for (int j = 64; j < 96; ++j) x[j] = 3e-36f * float(j - 80);  // 32767 / amax overflows float
  QuantActivations16 a;
  quantize_activations16(x.data(), m, in, &a);
  ASSERT_EQ(a.q.size(), size_t(m) * in);
  int zero_blocks = 0;
  for (int r = 0; r < m; ++r)
    for (int b = 0; b < in / 32; ++b) {
      const float* xb = x.data() + size_t(r) * in + 32 * b;
      float amax = 0.f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const size_t bi = size_t(r) * (in / 32) + b;
      const float d = a.d[bi];
      if (amax == 0.f || amax / 32767.f >= 1e-34f)
        EXPECT_EQ(d, amax / 32767.f) << "block " << bi;
      else  // subnormal d: the first one at or above amax / 32767
        EXPECT_TRUE(d >= amax / 32767.0 && std::nextafter(d, 0.f) < amax / 32767.0)
            << "block " << bi << " d " << d;
      zero_blocks += amax == 0.f;
      int32_t sum = 0;
      for (int j = 0; j < 32; ++j) {
        const int q = a.q[size_t(r) * in + 32 * b + j];
        sum += q;
        EXPECT_LE(std::abs(q), 32767);
        EXPECT_LE(std::fabs(double(xb[j]) - double(d) * q), 0.51 * d) << "block " << bi << " " << j;
      }
      EXPECT_EQ(a.isum[bi], sum);
    }
  EXPECT_GT(zero_blocks, 0);
}

TEST(QuantGemv16, BadArgumentsAreNamed) {
  QuantActivations16 a;
  std::vector<float> x(64, 1.f);
  EXPECT_THROW(quantize_activations16(x.data(), 1, 40, &a), Error);
  quantize_activations16(x.data(), 1, 32, &a);
  std::vector<uint8_t> w(210);
  float y[1];
  // Q4_K needs whole super-blocks of 256; Q5_K has no kernel.
  EXPECT_THROW(gemv_quant16_on(QuantPath::kPortable, DType::kQ4_K, w.data(), a, nullptr, y, 1, 1),
               Error);
  EXPECT_THROW(gemv_quant16_on(QuantPath::kPortable, DType::kQ5_K, w.data(), a, nullptr, y, 1, 1),
               Error);
  try {
    gemv_quant16_on(QuantPath::kPortable, DType::kQ5_K, w.data(), a, nullptr, y, 1, 1);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q5_K"), std::string::npos) << e.what();
  }
}
