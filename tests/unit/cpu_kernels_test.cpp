// The run-time dispatched CPU kernels (cpu/isa.h, cpu/vec.h, cpu/gemv.h, the bf16 prefill path of
// cpu/linear.h): every level this CPU can run is compared with an independent double-precision
// reference (or, for bf16 rounding, bit for bit with the scalar rule), whatever
// HYBRIDGEN_CPU_ISA says. CI runs the whole suite again under HYBRIDGEN_CPU_ISA=avx2 and
// =portable, where the default paths (Linear, the engine) take the lower levels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cpu/gemv.h"
#include "cpu/isa.h"
#include "cpu/linear.h"
#include "cpu/vec.h"
#include "hybridgen/error.h"
#include "model/dequant.h"

using namespace hybridgen;
using namespace hybridgen::cpu;

namespace {

std::vector<Isa> levels_this_cpu_has() {
  std::vector<Isa> out;
  for (Isa i : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16})
    if (static_cast<uint8_t>(i) <= static_cast<uint8_t>(detected_isa())) out.push_back(i);
  return out;
}

std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.f) {
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Sizes that hit every main loop, remainder loop and mask of the 8-, 16- and 32-wide bodies.
const int kSizes[] = {1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 576, 1000};

}  // namespace

TEST(Isa, NamesRoundTripAndBadNamesAreNamed) {
  for (Isa i : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16})
    EXPECT_EQ(parse_isa(isa_name(i), "test"), i);
  try {
    parse_isa("avx3", "HYBRIDGEN_CPU_ISA");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("HYBRIDGEN_CPU_ISA"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("avx3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("portable, avx2"), std::string::npos) << e.what();
  }
}

// The cap in the environment is what the kernels use (ctest runs this under every cap too).
TEST(Isa, ActiveLevelHonoursTheCapAndNeverExceedsTheCpu) {
  EXPECT_LE(static_cast<int>(active_isa()), static_cast<int>(detected_isa()));
  const char* env = std::getenv("HYBRIDGEN_CPU_ISA");
  if (env && *env) {
    const Isa want = parse_isa(env, "HYBRIDGEN_CPU_ISA");
    const Isa expect =
        static_cast<uint8_t>(want) <= static_cast<uint8_t>(detected_isa()) ? want : detected_isa();
    EXPECT_EQ(active_isa(), expect);
  } else {
    EXPECT_EQ(active_isa(), detected_isa());
  }
  const std::string report = describe_dispatch();
  EXPECT_NE(report.find(std::string("cpu: ") + isa_name(active_isa())), std::string::npos)
      << report;
  EXPECT_NE(report.find("gemv bf16 weights"), std::string::npos) << report;
  std::printf("%s\n", report.c_str());
}

TEST(VecKernels, DotAndAxpyMatchDoubleReferenceOnEveryLevel) {
  std::mt19937 rng(7);
  for (Isa isa : levels_this_cpu_has()) {
    SCOPED_TRACE(isa_name(isa));
    const VecKernels& k = vec_kernels_for(isa);
    for (int n : kSizes) {
      SCOPED_TRACE(n);
      const auto a = randn(n, rng), b = randn(n, rng);
      double ref = 0, mag = 0;
      for (int i = 0; i < n; ++i) {
        ref += double(a[i]) * b[i];
        mag += std::fabs(double(a[i]) * b[i]);
      }
      EXPECT_NEAR(k.dot(a.data(), b.data(), n), ref, 1e-6 * mag + 1e-7);
      // bf16 right-hand side (the host key/value stores): exact widening, f32 products
      std::vector<uint16_t> bb(n);
      double ref16 = 0;
      for (int i = 0; i < n; ++i) {
        bb[i] = f32_to_bf16(b[i]);
        ref16 += double(a[i]) * bf16_to_f32(bb[i]);
      }
      EXPECT_NEAR(k.dot_bf16(a.data(), bb.data(), n), ref16, 1e-6 * mag + 1e-7);
      auto z = randn(n, rng);
      const auto z0 = z;
      k.axpy_bf16(-1.5f, bb.data(), z.data(), n);
      for (int i = 0; i < n; ++i)
        ASSERT_NEAR(z[i], z0[i] - 1.5 * bf16_to_f32(bb[i]),
                    1e-6 * (std::fabs(z0[i]) + 2 * std::fabs(b[i])))
            << "axpy_bf16 element " << i;
      auto y = randn(n, rng);
      const auto y0 = y;
      k.axpy(0.37f, a.data(), y.data(), n);
      for (int i = 0; i < n; ++i)
        ASSERT_NEAR(y[i], y0[i] + 0.37 * a[i], 1e-6 * (std::fabs(y0[i]) + std::fabs(a[i])))
            << "element " << i;
    }
  }
}

// bf16 rounding must be bit-identical to the scalar rule on every level: ties to even, the
// largest finite values, infinities, signed zeros, denormals and NaNs (kept NaN, made quiet).
TEST(VecKernels, Bf16ConversionIsBitIdenticalToTheScalarRule) {
  std::vector<float> src;
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x00000001u, 0x807FFFFFu, 0x3F808000u, 0x3F818000u,
                     0x3F80FFFFu, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x7F800000u, 0xFF800000u, 0x7FC00000u,
                     0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0x3F7F8000u, 0x477FFF80u})
    src.push_back(from_bits(u));
  std::mt19937 rng(11);
  for (int i = 0; i < 20000; ++i) src.push_back(from_bits(rng()));  // every exponent, NaNs too
  for (Isa isa : levels_this_cpu_has()) {
    SCOPED_TRACE(isa_name(isa));
    const VecKernels& k = vec_kernels_for(isa);
    for (size_t n : {src.size(), size_t(13), size_t(1)}) {
      std::vector<uint16_t> got(n, 0xDEAD);
      k.to_bf16(src.data(), got.data(), static_cast<int64_t>(n));
      int bad = 0;
      for (size_t i = 0; i < n; ++i)
        if (got[i] != f32_to_bf16(src[i]) && bad++ < 5)
          ADD_FAILURE() << "f32 bits 0x" << std::hex << bits(src[i]) << ": got 0x" << got[i]
                        << ", want 0x" << f32_to_bf16(src[i]);
      std::vector<float> back(n, -1.f);
      k.from_bf16(got.data(), back.data(), static_cast<int64_t>(n));
      for (size_t i = 0; i < n; ++i)
        ASSERT_EQ(bits(back[i]), static_cast<uint32_t>(got[i]) << 16) << "element " << i;
    }
  }
}

// y = x Wᵀ + b for m = 1..4 on every level against a double reference of the same stored
// weights (bf16 weights and bf16-rounded activations: every product is exact in float32, so
// the only error is the float32 summation order).
TEST(Gemv, EveryLevelMatchesDoubleReference) {
  std::mt19937 rng(3);
  int checked = 0;
  for (Isa isa : levels_this_cpu_has()) {
    for (int in : {1, 7, 16, 17, 33, 64, 100, 576}) {
      for (int m = 1; m <= kGemvMaxRows; ++m) {
        const int out = 37;  // not a multiple of the 16-row chunk
        SCOPED_TRACE(std::string(isa_name(isa)) + " in=" + std::to_string(in) +
                     " m=" + std::to_string(m));
        const auto w = randn(size_t(out) * in, rng), x = randn(size_t(m) * in, rng);
        const auto bias = randn(out, rng);
        std::vector<uint16_t> wb(w.size()), xb(x.size());
        for (size_t i = 0; i < w.size(); ++i) wb[i] = f32_to_bf16(w[i]);
        for (size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
        std::vector<float> y32(size_t(m) * out, NAN), y16(size_t(m) * out, NAN);
        if (isa != Isa::kAvx512Bf16)
          gemv_f32_on(isa, w.data(), x.data(), bias.data(), y32.data(), m, out, in);
        gemv_bf16_on(isa, wb.data(), xb.data(), bias.data(), y16.data(), m, out, in);
        for (int r = 0; r < m; ++r)
          for (int o = 0; o < out; ++o) {
            double r32 = bias[o], r16 = bias[o], mag = std::fabs(bias[o]);
            for (int i = 0; i < in; ++i) {
              r32 += double(w[size_t(o) * in + i]) * x[size_t(r) * in + i];
              r16 +=
                  double(bf16_to_f32(wb[size_t(o) * in + i])) * bf16_to_f32(xb[size_t(r) * in + i]);
              mag += std::fabs(double(w[size_t(o) * in + i]) * x[size_t(r) * in + i]);
            }
            const double tol = 2e-6 * mag + 1e-6;
            if (isa != Isa::kAvx512Bf16) {
              ASSERT_NEAR(y32[size_t(r) * out + o], r32, tol) << "f32 row " << r << " out " << o;
            }
            ASSERT_NEAR(y16[size_t(r) * out + o], r16, tol) << "bf16 row " << r << " out " << o;
            ++checked;
          }
      }
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(Gemv, ALevelTheCpuLacksIsRefusedWithItsName) {
  if (detected_isa() == Isa::kAvx512Bf16) GTEST_SKIP() << "this CPU has every level";
  const float w = 1, x = 1;
  float y = 0;
  try {
    gemv_f32_on(Isa::kAvx512Bf16, &w, &x, nullptr, &y, 1, 1, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("avx512bf16"), std::string::npos) << e.what();
  }
}

// The prefill GEMM with bf16 weights on both of its paths (oneDNN's bf16 matmul where the CPU
// level allows it, float32 panels below AVX-512) against a double reference of the stored bf16
// weights. The panel path keeps the activations in float32; oneDNN's bf16 matmul rounds them
// to bf16 (2^-9 relative per element), hence the looser bound for it.
TEST(Linear, Bf16PrefillMatchesDoubleReferenceOnBothPaths) {
  std::mt19937 rng(5);
  const int out = 1100, in = 200, m = 37;  // out > the 512-row panel: three panels, one partial
  const auto w = randn(size_t(out) * in, rng, 0.05f), x = randn(size_t(m) * in, rng);
  const auto bias = randn(out, rng);
  Linear lin(out, in, w, bias, WeightType::kBF16);
  std::vector<float> y_auto(size_t(m) * out, NAN), y_panels(size_t(m) * out, NAN);
  lin.forward(x.data(), y_auto.data(), m);
  lin.forward_f32_panels(x.data(), y_panels.data(), m);
  const bool auto_is_panels = linear_bf16_uses_f32_panels();
  for (int r = 0; r < m; ++r)
    for (int o = 0; o < out; ++o) {
      double ref = bias[o], mag = std::fabs(bias[o]);
      for (int i = 0; i < in; ++i) {
        const double p =
            double(bf16_to_f32(f32_to_bf16(w[size_t(o) * in + i]))) * x[size_t(r) * in + i];
        ref += p;
        mag += std::fabs(p);
      }
      ASSERT_NEAR(y_panels[size_t(r) * out + o], ref, 2e-6 * mag + 1e-6) << r << "," << o;
      ASSERT_NEAR(y_auto[size_t(r) * out + o], ref, (auto_is_panels ? 2e-6 : 4e-3) * mag + 1e-6)
          << r << "," << o;
    }
}
