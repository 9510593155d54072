// The 16-bit-activation quantized GEMV's dispatch (the path as quant_gemv.cpp picks it) and
// its OpenMP split over rows.
#include "cpu/quant/quant_gemv16.h"

#include <algorithm>
#include <string>

#include "cpu/gemv.h"
#include "cpu/quant/quant_kernels16.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace {

// Output rows per OpenMP work item, as quant_gemv.cpp.
constexpr int kRowsPerChunk = 64;

quant::Kernels16 kernels_of(QuantPath p) {
  switch (p) {
    case QuantPath::kPortable:
      return quant::portable_kernels16();
    case QuantPath::kAvx2:
      return quant::avx2_kernels16();
    case QuantPath::kAvx512:
      return quant::avx512_kernels16(false);
    case QuantPath::kAvx512Vnni:
      return quant::avx512_kernels16(true);
  }
  return quant::portable_kernels16();
}

quant::Rows16Fn pick(const quant::Kernels16& k, DType t) {
  switch (t) {
    case DType::kQ4_0:
      return k.q4_0;
    case DType::kQ4_1:
      return k.q4_1;
    case DType::kQ8_0:
      return k.q8_0;
    case DType::kQ4_K:
      return k.q4_k;
    case DType::kQ6_K:
      return k.q6_k;
    default:
      return nullptr;
  }
}

// Policy: which paths' 16-bit kernels the engine may take. A kernel is taken only once it has
// run on a CPU with its instructions; until then the next lower path runs instead (same
// results within the int16 rounding, the avx2 kernels on an AVX-512 CPU).
struct Verified16 {
  QuantPath path;
  bool has_run;
  const char* evidence;
};
constexpr Verified16 kVerified16[] = {
    {QuantPath::kPortable, true, "quant_gemv16_test + mutation checks, 2026-12-02 (AVX2 EPYC)"},
    {QuantPath::kAvx2, true, "quant_gemv16_test + mutation checks, 2026-12-02 (AVX2 EPYC)"},
    {QuantPath::kAvx512, false, "compiled only: no AVX-512 CPU in the session that wrote it"},
    {QuantPath::kAvx512Vnni, false, "compiled only: no AVX-512 CPU in the session that wrote it"},
};

quant::Rows16Fn pick_r4(const quant::Kernels16& k, DType t) {
  switch (t) {
    case DType::kQ4_0:
      return k.q4_0_r4;
    case DType::kQ4_1:
      return k.q4_1_r4;
    case DType::kQ8_0:
      return k.q8_0_r4;
    default:
      return nullptr;
  }
}

bool has_run(QuantPath p) {
  for (const Verified16& v : kVerified16)
    if (v.path == p) return v.has_run;
  return false;
}

}  // namespace

bool quant_gemv16_supports(DType t) {
  return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ8_0 || t == DType::kQ4_K ||
         t == DType::kQ6_K;
}

QuantPath quant_gemv16_path() {
  QuantPath p = quant_gemv_path();
  while (p != QuantPath::kPortable && !has_run(p))
    p = p == QuantPath::kAvx512Vnni ? QuantPath::kAvx512
                                    : static_cast<QuantPath>(static_cast<int>(p) - 1);
  return p;
}

void gemv_quant16_on(QuantPath path, DType t, const uint8_t* w, const QuantActivations16& x,
                     const float* bias, float* y, int ldy, int rows) {
  static const std::vector<QuantPath> has = quant_paths_this_cpu_has();
  HG_CHECK(std::find(has.begin(), has.end(), path) != has.end(),
           std::string("gemv quant16: this CPU cannot run the ") + quant_path_name(path) +
               " path (features: " + cpu_features() + ")");
  HG_CHECK(quant_gemv16_supports(t),
           std::string("gemv quant16: no kernel for ") + std::string(dtype_name(t)));
  HG_CHECK(x.m >= 1 && x.m <= kGemvMaxRows,
           "gemv quant16: m must be in [1, 4], got " + std::to_string(x.m));
  HG_CHECK(x.in % dtype_block_size(t) == 0, "gemv quant16: " + std::to_string(x.in) +
                                                " inputs is not a multiple of the " +
                                                std::string(dtype_name(t)) + " block");
  const quant::Rows16Fn fn = pick(kernels_of(path), t);
  HG_CHECK(fn, std::string("gemv quant16: no kernel for ") + std::string(dtype_name(t)));
  const int64_t row_bytes = x.in / dtype_block_size(t) * dtype_block_bytes(t);
  const int chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
#pragma omp parallel for schedule(guided)
  for (int c = 0; c < chunks; ++c) {
    const int o0 = c * kRowsPerChunk, o1 = std::min(o0 + kRowsPerChunk, rows);
    fn(w, row_bytes, x, y, ldy, o0, o1);
    if (bias)
      for (int r = 0; r < x.m; ++r)
        for (int o = o0; o < o1; ++o) y[int64_t(r) * ldy + o] += bias[o];
  }
}

void gemv_quant16_r4_on(QuantPath path, DType t, const uint8_t* packed, const QuantActivations16& x,
                        const float* bias, float* y, int ldy, int rows) {
  static const std::vector<QuantPath> has = quant_paths_this_cpu_has();
  HG_CHECK(std::find(has.begin(), has.end(), path) != has.end(),
           std::string("gemv quant16 r4: this CPU cannot run the ") + quant_path_name(path) +
               " path (features: " + cpu_features() + ")");
  HG_CHECK(quant16_r4_supports(t),
           std::string("gemv quant16 r4: no interleaved kernel for ") + std::string(dtype_name(t)));
  HG_CHECK(x.m >= 1 && x.m <= kGemvMaxRows,
           "gemv quant16 r4: m must be in [1, 4], got " + std::to_string(x.m));
  HG_CHECK(x.in % 32 == 0 && x.in > 0,
           "gemv quant16 r4: " + std::to_string(x.in) + " inputs is not a multiple of 32");
  quant::Rows16Fn fn = pick_r4(kernels_of(path), t);
  if (!fn) fn = pick_r4(quant::avx2_kernels16(), t);  // the AVX-512 paths: every such CPU has AVX2
  HG_CHECK(fn, std::string("gemv quant16 r4: no kernel for ") + std::string(dtype_name(t)));
  const int64_t row_bytes = x.in / 32 * dtype_block_bytes(t);
  static_assert(kRowsPerChunk % 4 == 0, "chunks start at a group of 4 rows");
  const int chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
#pragma omp parallel for schedule(guided)
  for (int c = 0; c < chunks; ++c) {
    const int o0 = c * kRowsPerChunk, o1 = std::min(o0 + kRowsPerChunk, rows);
    fn(packed, row_bytes, x, y, ldy, o0, o1);
    if (bias)
      for (int r = 0; r < x.m; ++r)
        for (int o = o0; o < o1; ++o) y[int64_t(r) * ldy + o] += bias[o];
  }
}

}  // namespace hybridgen::cpu
