// The quantized GEMV's dispatch: which path a machine takes, and the OpenMP split over rows.
#include "cpu/quant/quant_gemv.h"

#include <string>

#include "cpu/gemv.h"
#include "cpu/quant/quant_kernels.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace {

// Output rows per OpenMP work item (a Q4_1 row of 576 inputs is 360 bytes: 64 rows ~ 23 KB).
constexpr int kRowsPerChunk = 64;

bool cpu_has_avx512_vnni() {
  static const bool has = __builtin_cpu_supports("avx512vnni");
  return has;
}

Isa path_level(QuantPath p) {
  switch (p) {
    case QuantPath::kPortable:
      return Isa::kPortable;
    case QuantPath::kAvx2:
      return Isa::kAvx2;
    case QuantPath::kAvx512:
    case QuantPath::kAvx512Vnni:
      return Isa::kAvx512;
  }
  return Isa::kPortable;
}

quant::Kernels kernels_of(QuantPath p) {
  switch (p) {
    case QuantPath::kPortable:
      return quant::portable_kernels();
    case QuantPath::kAvx2:
      return quant::avx2_kernels();
    case QuantPath::kAvx512:
      return quant::avx512_kernels(false);
    case QuantPath::kAvx512Vnni:
      return quant::avx512_kernels(true);
  }
  return quant::portable_kernels();
}

quant::RowsFn pick(const quant::Kernels& k, DType t) {
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
    case DType::kQ5_0:
      return k.q5_0;
    case DType::kQ5_1:
      return k.q5_1;
    case DType::kIQ4_NL:
      return k.iq4_nl;
    case DType::kQ5_K:
      return k.q5_k;
    case DType::kQ3_K:
      return k.q3_k;
    case DType::kQ2_K:
      return k.q2_k;
    case DType::kIQ4_XS:
      return k.iq4_xs;
    default:
      return nullptr;
  }
}

// The kernel `path` runs for t, and the path it belongs to: a path without a kernel for t falls
// to the next lower one (AVX-512 -> AVX2 where only AVX2 has it); avx512-vnni takes the plain
// AVX-512 kernel where it has no VNNI one.
quant::RowsFn resolve(QuantPath path, DType t, QuantPath* used) {
  for (int p = static_cast<int>(path); p >= 0; --p) {
    const QuantPath q = static_cast<QuantPath>(p);
    if (quant::RowsFn fn = pick(kernels_of(q), t)) {
      *used = q;
      return fn;
    }
  }
  return nullptr;
}

}  // namespace

const char* quant_path_name(QuantPath p) {
  switch (p) {
    case QuantPath::kPortable:
      return "portable";
    case QuantPath::kAvx2:
      return "avx2";
    case QuantPath::kAvx512:
      return "avx512";
    case QuantPath::kAvx512Vnni:
      return "avx512-vnni";
  }
  return "?";
}

QuantPath quant_gemv_path() {
  if (isa_enabled(Isa::kAvx512))
    return cpu_has_avx512_vnni() ? QuantPath::kAvx512Vnni : QuantPath::kAvx512;
  if (isa_enabled(Isa::kAvx2)) return QuantPath::kAvx2;
  return QuantPath::kPortable;
}

std::vector<QuantPath> quant_paths_this_cpu_has() {
  std::vector<QuantPath> out{QuantPath::kPortable};
  const auto d = static_cast<uint8_t>(detected_isa());
  if (d >= static_cast<uint8_t>(Isa::kAvx2)) out.push_back(QuantPath::kAvx2);
  if (d >= static_cast<uint8_t>(Isa::kAvx512)) {
    out.push_back(QuantPath::kAvx512);
    if (cpu_has_avx512_vnni()) out.push_back(QuantPath::kAvx512Vnni);
  }
  return out;
}

std::string quant_gemv_describe(QuantPath path) {
  // The native types in the order of docs/quantization.md's table.
  static constexpr DType kTypes[] = {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0,   DType::kQ5_1,
                                     DType::kQ8_0, DType::kQ2_K, DType::kQ3_K,   DType::kQ4_K,
                                     DType::kQ5_K, DType::kQ6_K, DType::kIQ4_NL, DType::kIQ4_XS};
  std::string s = quant_path_name(path);
  for (int p = static_cast<int>(path); p >= 0; --p) {
    std::string types;
    for (DType t : kTypes) {
      QuantPath used;
      if (!resolve(path, t, &used) || static_cast<int>(used) != p) continue;
      if (!types.empty()) types += ' ';
      types += dtype_name(t);
    }
    if (types.empty()) continue;
    s += s.find('(') == std::string::npos ? " (" : "; ";
    s += types;
    if (p != static_cast<int>(path))
      s += std::string(" at ") + quant_path_name(static_cast<QuantPath>(p));
  }
  return s + ")";
}

void gemv_quant_on(QuantPath path, DType t, const uint8_t* w, const QuantActivations& x,
                   const float* bias, float* y, int ldy, int rows) {
  HG_CHECK(static_cast<uint8_t>(path_level(path)) <= static_cast<uint8_t>(detected_isa()) &&
               (path != QuantPath::kAvx512Vnni || cpu_has_avx512_vnni()),
           std::string("gemv quant: this CPU cannot run the ") + quant_path_name(path) +
               " path (features: " + cpu_features() + ")");
  HG_CHECK(x.weight_type == t, std::string("gemv quant: activations quantized for ") +
                                   std::string(dtype_name(x.weight_type)) + ", weights are " +
                                   std::string(dtype_name(t)));
  HG_CHECK(x.m >= 1 && x.m <= kGemvMaxRows,
           "gemv quant: m must be in [1, 4], got " + std::to_string(x.m));
  QuantPath used;
  const quant::RowsFn fn = resolve(path, t, &used);
  HG_CHECK(fn, std::string("gemv quant: no kernel for ") + std::string(dtype_name(t)));
  const int64_t row_bytes = x.in / dtype_block_size(t) * dtype_block_bytes(t);
  const int chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  // Guided, as gemv.cpp's run_chunks (a slowed core does not leave the other at the barrier).
#pragma omp parallel for schedule(guided)
  for (int c = 0; c < chunks; ++c) {
    const int o0 = c * kRowsPerChunk, o1 = o0 + kRowsPerChunk < rows ? o0 + kRowsPerChunk : rows;
    fn(w, row_bytes, x, y, ldy, o0, o1);
    if (bias)
      for (int r = 0; r < x.m; ++r)
        for (int o = o0; o < o1; ++o) y[int64_t(r) * ldy + o] += bias[o];
  }
}

}  // namespace hybridgen::cpu
