// Decode GEMV on GGUF quantized weights as they are stored: the weight blocks are never widened;
// the activations are quantized per block to 8 bits the way llama.cpp quantizes them for its
// vec_dot kernels, and each block's integer dot product is scaled once.
//
//   weights Q4_0, Q8_0 -> activations as block_q8_0 (32 values: f16 d, int8 q)
//   weights Q4_1       -> activations as block_q8_1 (32 values: f16 d, f16 s = d * sum(q), q)
//   weights Q5_0, IQ4_NL -> block_q8_0;  Q5_1 -> block_q8_1
//   weights Q4_K, Q6_K -> activations as block_q8_K (256 values: f32 d, int8 q, 16 int16 sums)
//   weights Q5_K, Q3_K, Q2_K, IQ4_XS -> block_q8_K
//
// d = amax / 127 and q = round-to-nearest-even(x * 127 / amax), as ggml's AVX2 quantize_row_q8_0
// / q8_1; Q8_K as ggml's quantize_row_q8_K (d = max / -127 with the signed max). The integer dot
// products are exact; only the order of the float32 sums of the scaled block results differs
// from llama.cpp's.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "model/tensor.h"

namespace hybridgen::cpu {

// Whether `t` has a native GEMV here (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, IQ4_NL, Q4_K, Q6_K, Q5_K,
// Q3_K, Q2_K, IQ4_XS). Other GGUF types are dequantized at load.
bool quant_gemv_supports(DType t);
// The activation block size t's kernels pair with: 32 (Q8_0 / Q8_1), 256 (Q8_K), 0 if none.
int quant_act_block(DType t);

// Activations quantized for one weight type's kernels (see the table above).
struct QuantActivations {
  DType weight_type = DType::kQ8_0;
  int m = 0, in = 0;
  std::vector<int8_t> q;       // [m, in]
  std::vector<float> d;        // [m, in / block]: the scale (an f16 value widened, or Q8_K's f32)
  std::vector<float> s;        // [m, in / 32]: Q8_1's s (Q4_1, Q5_1)
  std::vector<int32_t> isum;   // [m, in / 32]: sum of q per block (Q4_0's -8, Q5_0's -16)
  std::vector<int16_t> bsums;  // [m, in / 16]: Q8_K's sums of 16 (K-quants only)
};
// x: [m, in] float32. PRECOND: quant_gemv_supports(weight_type), in % block size == 0.
void quantize_activations(DType weight_type, const float* x, int m, int in, QuantActivations* out);

// The kernel variants. A path needs its ISA level; kAvx512Vnni also the CPU's AVX512_VNNI.
enum class QuantPath : uint8_t { kPortable, kAvx2, kAvx512, kAvx512Vnni };
const char* quant_path_name(QuantPath p);
// The path this machine takes (active_isa(), HYBRIDGEN_CPU_ISA honoured; VNNI where present).
QuantPath quant_gemv_path();
// Every path this CPU can run (tests).
std::vector<QuantPath> quant_paths_this_cpu_has();
// For -v: the path and which types run at which level, e.g. "avx512-vnni (Q4_0 Q4_1 Q8_0;
// Q4_K Q6_K at avx512; Q5_0 … at avx2)".
std::string quant_gemv_describe(QuantPath path);

// y[r * ldy + o] = sum_i W[o, i] * X[r, i] (+ bias[o]) for r < m, o < rows, W the weight rows
// as stored and X the quantized activations.
//   w: rows * (in / block) blocks of weight_type, row-major;  y: [m, ldy] (columns [0, rows))
// PRECOND: 1 <= m <= kGemvMaxRows, x.weight_type == t, the path runs on this CPU.
void gemv_quant_on(QuantPath path, DType t, const uint8_t* w, const QuantActivations& x,
                   const float* bias, float* y, int ldy, int rows);
inline void gemv_quant(DType t, const uint8_t* w, const QuantActivations& x, const float* bias,
                       float* y, int ldy, int rows) {
  gemv_quant_on(quant_gemv_path(), t, w, x, bias, y, ldy, rows);
}

}  // namespace hybridgen::cpu
