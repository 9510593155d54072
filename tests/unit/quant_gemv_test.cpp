// The quantized GEMV (cpu/quant/quant_gemv.h) on every path this CPU can run, whatever
// HYBRIDGEN_CPU_ISA says, against a double-precision dequantize-then-multiply reference: the
// weights dequantized by model/dequant (bit-exact with gguf-py, dequant_test), the activations
// as their quantized blocks say (d * q; for Q4_1 the block sums as Q8_1's s defines them).
// Random blocks with f16 scales and mins at their extremes (+-65504, 2^-24, 0, random finite
// bit patterns), sub-block scales at their extremes, activation blocks all zero or dominated
// by one value.
#include "cpu/quant/quant_gemv.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/gemv.h"
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
    {DType::kQ4_0, {0}, 0, 0},      {DType::kQ4_1, {0, 2}, 0, 0},    {DType::kQ8_0, {0}, 0, 0},
    {DType::kQ4_K, {0, 2}, 4, 16},  {DType::kQ6_K, {208}, 192, 208}, {DType::kQ5_0, {0}, 0, 0},
    {DType::kQ5_1, {0, 2}, 0, 0},   {DType::kIQ4_NL, {0}, 0, 0},     {DType::kQ5_K, {0, 2}, 4, 16},
    {DType::kQ3_K, {108}, 96, 108}, {DType::kQ2_K, {80, 82}, 0, 16}, {DType::kIQ4_XS, {0}, 2, 8},
};

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
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
      // Largest sub-scales (0xFF: 63 / 63 for Q4_K and Q5_K, 15 / 15 for Q2_K, +31 for Q3_K and
      // IQ4_XS; -1 for Q6_K, so also 0x7F / 0x80 below) or zero ones (-32 for Q3_K and IQ4_XS).
      for (int i = L.sc_lo; i < L.sc_hi; ++i)
        blk[i] = kind == 6 ? 0 : L.t == DType::kQ6_K ? (i % 2 ? 0x80 : 0x7F) : 0xFF;
    }
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
  }
  return x;
}

// The reference: sum over blocks of sum_j (double) W_deq[j] * (d_x * q_x[j]); for Q4_1 the
// m * sum(x) part with Q8_1's s in place of d_x * sum(q_x).
//   W: [rows, in] dequantized;  returns y: [m, rows] and sum |terms| for the tolerance
void reference(const Layout& L, const std::vector<float>& W, const QuantActivations& xq, int rows,
               const std::vector<uint8_t>& blocks, std::vector<double>* y,
               std::vector<double>* mag) {
  const int in = xq.in, m = xq.m;
  const int xblock = quant_act_block(L.t);
  y->assign(size_t(m) * rows, 0.0);
  mag->assign(size_t(m) * rows, 0.0);
  for (int r = 0; r < m; ++r)
    for (int o = 0; o < rows; ++o) {
      double s = 0, a = 0;
      for (int i = 0; i < in; ++i) {
        const double xv =
            double(xq.d[size_t(r) * (in / xblock) + i / xblock]) * xq.q[size_t(r) * in + i];
        const double t = double(W[size_t(o) * in + i]) * xv;
        s += t;
        a += std::fabs(t);
      }
      if (L.t == DType::kQ4_1 || L.t == DType::kQ5_1) {  // d_x * sum(q) -> s in the m term
        const int bytes = static_cast<int>(dtype_block_bytes(L.t));
        for (int b = 0; b < in / 32; ++b) {
          const uint8_t* blk = blocks.data() + (size_t(o) * (in / 32) + b) * bytes;
          uint16_t h;
          std::memcpy(&h, blk + 2, 2);
          const double mw = f16_to_f32(h);
          const size_t xb = size_t(r) * (in / 32) + b;
          s += mw * (double(xq.s[xb]) - double(xq.d[xb]) * xq.isum[xb]);
          a += std::fabs(mw * xq.s[xb]);
        }
      }
      (*y)[size_t(r) * rows + o] = s;
      (*mag)[size_t(r) * rows + o] = a;
    }
}

}  // namespace

TEST(QuantGemv, EveryPathMatchesDoubleReference) {
  std::mt19937 rng(16);
  const std::vector<QuantPath> paths = quant_paths_this_cpu_has();
  for (const Layout& L : kLayouts) {
    const bool k = quant_act_block(L.t) == 256;
    // 96 = 3 blocks of 32 (an odd block count: the AVX-512 tail); 512 = 2 K super-blocks.
    for (int in : k ? std::vector<int>{256, 512} : std::vector<int>{32, 96, 576}) {
      const int rows = 67;  // not a multiple of the 64-row chunk
      const std::vector<uint8_t> w = random_blocks(L, rows, in, rng);
      std::vector<float> W(size_t(rows) * in);
      dequantize(L.t, w.data(), W.data(), int64_t(rows) * in);
      for (int m = 1; m <= kGemvMaxRows; ++m) {
        const std::vector<float> x = random_activations(m, in, rng);
        QuantActivations xq;
        quantize_activations(L.t, x.data(), m, in, &xq);
        std::vector<double> ref, mag;
        reference(L, W, xq, rows, w, &ref, &mag);
        std::vector<float> bias(rows);
        for (int o = 0; o < rows; ++o) bias[o] = 0.25f * float(o % 5) - 0.5f;
        for (QuantPath p : paths) {
          SCOPED_TRACE(std::string(dtype_name(L.t)) + " in " + std::to_string(in) + " m " +
                       std::to_string(m) + " path " + quant_path_name(p));
          const int ldy = rows + 3;  // y is a column range of a wider output
          std::vector<float> y(size_t(m) * ldy, -777.f);
          gemv_quant_on(p, L.t, w.data(), xq, bias.data(), y.data(), ldy, rows);
          int bad = 0;
          for (int r = 0; r < m; ++r) {
            for (int o = 0; o < rows; ++o) {
              const double want = ref[size_t(r) * rows + o] + bias[o];
              const double tol = 2e-6 * mag[size_t(r) * rows + o] + 1e-6;
              const double got = y[size_t(r) * ldy + o];
              if (!(std::fabs(got - want) <= tol) && ++bad <= 3)
                ADD_FAILURE() << "y[" << r << "," << o << "] = " << got << ", reference " << want
                              << " (tolerance " << tol << ")";
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

// The activation blocks are what llama.cpp's quantize_row_q8_0 / q8_1 / q8_K make of x:
// d is amax / 127 rounded to f16 (Q8_K: max / -127 in f32), every |x - d q| within half a
// step (plus the f16 rounding of d), sums as defined.
TEST(QuantGemv, ActivationBlocksAsGgml) {
  std::mt19937 rng(7);
  const int in = 512;
  const std::vector<float> x = random_activations(2, in, rng);
  for (DType t : {DType::kQ4_1, DType::kQ4_K}) {
    QuantActivations a;
    quantize_activations(t, x.data(), 2, in, &a);
    const int block = t == DType::kQ4_K ? 256 : 32;
    for (int r = 0; r < 2; ++r)
      for (int b = 0; b < in / block; ++b) {
        const float* xb = x.data() + size_t(r) * in + size_t(b) * block;
        float amax = 0.f, mx = 0.f;
        for (int j = 0; j < block; ++j)
          if (std::fabs(xb[j]) > amax) amax = std::fabs(xb[j]), mx = xb[j];
        const float d = a.d[size_t(r) * (in / block) + b];
        if (t == DType::kQ4_K)
          EXPECT_EQ(d, amax == 0.f ? 0.f : 1 / (-127.f / mx));
        else
          EXPECT_EQ(d, f16_to_f32(f32_to_f16(amax / 127.f)));
        int sum = 0;
        for (int j = 0; j < block; ++j) {
          const int q = a.q[size_t(r) * in + size_t(b) * block + j];
          sum += q;
          EXPECT_LE(std::abs(q), 127);
          // Q8_K's d carries the sign of the max; Q8_0's is the f16 of amax / 127, off by
          // |d - amax / 127| per unit of q.
          const float d_exact = t == DType::kQ4_K ? d : amax / 127.f;
          EXPECT_LE(std::fabs(xb[j] - d * q),
                    0.5f * std::fabs(d_exact) * 1.0001f + 127.f * std::fabs(d - d_exact) + 1e-30f)
              << "block " << b << " element " << j;
        }
        if (t == DType::kQ4_1) {
          const size_t xb32 = size_t(r) * (in / 32) + b;
          EXPECT_EQ(a.isum[xb32], sum);
          EXPECT_EQ(a.s[xb32], f16_to_f32(f32_to_f16(amax / 127.f * float(sum))));
        } else {
          int s16 = 0;
          for (int j = 0; j < 16; ++j) s16 += a.q[size_t(r) * in + size_t(b) * block + j];
          EXPECT_EQ(a.bsums[size_t(r) * (in / 16) + size_t(b) * 16], s16);
        }
      }
  }
}

TEST(QuantGemv, BadArgumentsAreNamed) {
  QuantActivations a;
  std::vector<float> x(40, 1.f);
  EXPECT_THROW(quantize_activations(DType::kQ4_1, x.data(), 1, 40, &a), Error);
  EXPECT_THROW(quantize_activations(DType::kQ5_K, x.data(), 1, 32, &a), Error);  // not 256
  EXPECT_THROW(quantize_activations(DType::kF16, x.data(), 1, 32, &a), Error);
  quantize_activations(DType::kQ4_1, x.data(), 1, 32, &a);
  std::vector<uint8_t> w(20);
  float y[1];
  EXPECT_THROW(gemv_quant_on(QuantPath::kPortable, DType::kQ8_0, w.data(), a, nullptr, y, 1, 1),
               Error);
}

// -v's line: every native type named once per path, at a level that has its kernel.
TEST(QuantGemv, DescribeNamesEveryTypeOnce) {
  for (QuantPath p : quant_paths_this_cpu_has()) {
    const std::string s = quant_gemv_describe(p);
    std::printf("%s\n", s.c_str());
    EXPECT_EQ(s.rfind(quant_path_name(p), 0), 0u) << s;
    std::string words = s;  // the type names as words
    for (char& c : words)
      if (c == '(' || c == ')' || c == ';') c = ' ';
    for (const Layout& L : kLayouts) {
      const std::string name(dtype_name(L.t));
      int n = 0;
      std::istringstream in(words);
      for (std::string w; in >> w;) n += w == name;
      EXPECT_EQ(n, 1) << name << " in " << s;
    }
  }
}
