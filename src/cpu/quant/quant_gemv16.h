// Decode GEMV on GGUF quantized weights as they are stored, with 16-bit activations: the
// weight blocks are never widened to float, the activations are quantized per block of 32 to
// int16 (d = amax / 32767 in float32, q = round-to-nearest(x / d)), each block's integer dot
// product is exact in int32 and scaled once per block (Q6_K: its two sub-block scales of 16
// are folded into the int16 weights first). The relative rounding step of an activation is
// 1/65534 of its block's largest value, 258x finer than llama.cpp's Q8 (1/254): near-float
// results, which is what --weight-format native (and auto) runs; native-q8 keeps llama.cpp's
// 8-bit activations (cpu/quant/quant_gemv.h).
//
// One activation format serves every weight type (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K), so a fused
// projection of mixed types (Q|K|V of a Q4_K_M file) quantizes its input once. Exactness of
// the int32 block sums: |w| <= 128 (Q8_0), <= 15 (Q4_x nibbles), <= 63 * 15 (Q4_K, scale
// folded in), <= 32 * 128 (Q6_K, scale folded in); a SIMD lane sums at most 4 products
// (4 * 4096 * 32767 < 2^31), the portable kernels one sub-block (Q6_K: 16 * 4096 * 32767 <
// 2^31); the float conversion of a sum is the only rounding before the block's scale.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/quant/quant_gemv.h"

namespace hybridgen::cpu {

// The block of the 16-bit activations (every weight type's block is a multiple of it).
constexpr int kAct16Block = 32;

struct QuantActivations16 {
  int m = 0, in = 0;
  std::vector<int16_t> q;     // [m, in]
  std::vector<float> d;       // [m, in / 32]: amax / 32767 (0 for an all-zero block)
  std::vector<int32_t> isum;  // [m, in / 32]: sum of q per block (Q4_1's and Q4_K's mins)
};
// Whether `t` has 16-bit-activation kernels (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K). The other native
// types (Q5_0, Q5_1, Q5_K, Q3_K, Q2_K, IQ4_NL, IQ4_XS) run their 8-bit kernels under
// --weight-format native too (cpu::Linear; a load-time log line names them).
bool quant_gemv16_supports(DType t);
// x: [m, in] float32. PRECOND: in % 32 == 0 (checked).
void quantize_activations16(const float* x, int m, int in, QuantActivations16* out);

// y[r * ldy + o] = sum_i W[o, i] * X[r, i] (+ bias[o]) for r < m, o < rows; as gemv_quant_on
// with 16-bit activations.  w: rows * (in / block) blocks of t;  y: [m, ldy]
// PRECOND: quant_gemv_supports(t), in % block(t) == 0, 1 <= m <= kGemvMaxRows, the path runs
// on this CPU (all checked).
void gemv_quant16_on(QuantPath path, DType t, const uint8_t* w, const QuantActivations16& x,
                     const float* bias, float* y, int ldy, int rows);
// The path the engine takes for 16-bit activations: quant_gemv_path(), stepped down to the
// highest path whose kernels have run (and passed quant_gemv16_test) on a CPU that has it
// (the table in quant_gemv16.cpp). Kernels not yet run are still tested, through
// gemv_quant16_on, on every CPU that has their path.
QuantPath quant_gemv16_path();
inline void gemv_quant16(DType t, const uint8_t* w, const QuantActivations16& x, const float* bias,
                         float* y, int ldy, int rows) {
  gemv_quant16_on(quant_gemv16_path(), t, w, x, bias, y, ldy, rows);
}

// ---- Rows interleaved by four (Q4_0, Q4_1, Q8_0) --------------------------------------------
// The AVX2 kernels spend more time on per-block scalar work (an f16 scale converted, multiplied
// and broadcast per row and block, Q4_1's min in scalar float) than on the weights' bytes. With
// four rows' blocks side by side, one F16C conversion widens four rows' scales, one activation
// load feeds four rows and the four int32 block sums land in the lanes of one register, scaled
// by one FMA. Linear repacks at load (same bytes: a group of 4 rows is 4 x row_bytes).
//   Layout, group g = rows 4g..4g+3, block b (of 32 inputs), at (g * nb + b) * 4 * block_bytes:
//     Q4_0: d[4] f16 | qs[4][16]          Q4_1: d[4] f16 | m[4] f16 | qs[4][16]
//     Q8_0: d[4] f16 | qs[4][32]          (qs[k] is row 4g + k's block, as stored in GGUF)
//   A last group of fewer than 4 rows is padded with zero blocks (d = 0).
bool quant16_r4_supports(DType t);
// Whether Linear repacks parts of type t at load: the 16-bit path is avx2 (the portable
// kernels keep the GGUF layout) and t has interleaved kernels.
bool quant16_r4_preferred(DType t);
// w: rows * (in / 32) blocks of t -> the layout above. PRECOND: quant16_r4_supports(t),
// in % 32 == 0 (checked).
std::vector<uint8_t> repack_rows4(DType t, const uint8_t* w, int rows, int in);
// Row `row`'s in / 32 blocks, as GGUF stores them, out of a repacked buffer.
//   out: [in / 32 * block_bytes(t)]
void unpack_row4(DType t, const uint8_t* packed, int row, int in, uint8_t* out);
// gemv_quant16_on for repacked weights (same results to the float summation order).
void gemv_quant16_r4_on(QuantPath path, DType t, const uint8_t* packed, const QuantActivations16& x,
                        const float* bias, float* y, int ldy, int rows);
inline void gemv_quant16_r4(DType t, const uint8_t* packed, const QuantActivations16& x,
                            const float* bias, float* y, int ldy, int rows) {
  gemv_quant16_r4_on(quant_gemv16_path(), t, packed, x, bias, y, ldy, rows);
}

}  // namespace hybridgen::cpu
