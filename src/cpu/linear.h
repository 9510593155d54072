// y = x W^T (+ b): every projection of the model, through oneDNN's matmul (AMX/AVX-512 where
// the CPU has them).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/tensor.h"

namespace hybridgen::cpu {

// kQuant: GGUF blocks kept as stored, decode activations quantized to int16 per block of 32
// (cpu/quant/quant_gemv16.h; --weight-format native). kQuantQ8: the same blocks with llama.cpp's
// 8-bit activations (cpu/quant/quant_gemv.h; --weight-format native-q8).
enum class WeightType { kF32, kBF16, kQuant, kQuantQ8 };
inline bool is_quant(WeightType t) { return t == WeightType::kQuant || t == WeightType::kQuantQ8; }

// Consecutive weight rows stored in one GGUF block type: rows * (in / block) blocks, row-major.
struct QuantPart {
  DType type = DType::kQ8_0;
  int rows = 0;
  std::vector<uint8_t> blocks;
  // blocks holds rows interleaved by four (cpu::repack_rows4) instead of GGUF's row-major
  // blocks: Linear repacks kQuant parts at load where quant16_r4_preferred(type). The parts
  // given to Linear are always in GGUF order.
  bool rows4 = false;
};

class Linear {
 public:
  Linear();
  // weight: [out_features, in_features] row-major float32; bias: [out_features] or empty.
  Linear(int out_features, int in_features, std::vector<float> weight, std::vector<float> bias,
         WeightType type);
  // Quantized weights as stored: the parts' rows one after the other (e.g. Q|K|V, each in its
  // own GGUF type), in_features a multiple of every part's block size. PRECOND:
  // quant_gemv_supports(part.type) for every part. bias: [sum of rows] or empty.
  // type: kQuant or kQuantQ8 (the decode activations' format).
  Linear(int in_features, std::vector<QuantPart> parts, std::vector<float> bias,
         WeightType type = WeightType::kQuant);
  Linear(Linear&&) noexcept;
  Linear& operator=(Linear&&) noexcept;
  ~Linear();

  // x: [m, in_features] float32 -> y: [m, out_features] float32 (overwritten).
  void forward(const float* x, float* y, int m) const;
  // Only the first n_rows outputs (e.g. the Q part of a fused Q|K|V projection):
  // x: [m, in_features] -> y: [m, n_rows]. Streams only those weight rows for decode-sized m.
  void forward_rows(const float* x, float* y, int m, int n_rows) const;

  int out_features() const { return out_; }
  int in_features() const { return in_; }
  WeightType type() const { return type_; }
  uint64_t weight_bytes() const;
  bool has_bias() const { return !bias_.empty(); }
  // Raw storage for other backends to upload: [out, in] row-major, one of the two is empty.
  const std::vector<float>& weight_f32() const { return weight_f32_; }
  const std::vector<uint16_t>& weight_bf16() const { return weight_bf16_; }
  const std::vector<float>& bias() const { return bias_; }  // [out] or empty
  // The stored weight converted back to float32 row `r` (tests and reference paths).
  std::vector<float> weight_row(int r) const;

  // forward() for bf16 weights below AVX-512 (linear_bf16_uses_f32_panels()): panels of weight
  // rows widened to float32 and multiplied by oneDNN's f32 GEMM. Public so that tests check it
  // on every machine.   x: [m, in] -> y: [m, out]
  void forward_f32_panels(const float* x, float* y, int m) const;
  // forward() for quantized weights at prefill sizes: panels of rows dequantized to float32
  // (model/dequant, bit-exact with ggml) and multiplied by oneDNN's f32 GEMM.  x: [m, in]
  void forward_quant_panels(const float* x, float* y, int m) const;
  const std::vector<QuantPart>& quant_parts() const { return parts_; }

 private:
  // Row r (< p.rows) of part p as GGUF stores it.  out: [in / block * block_bytes]
  void part_row(const QuantPart& p, int r, uint8_t* out) const;
  // The GEMV over quantized parts, output rows [0, n_rows):  x: [m, in] -> y: [m, n_rows]
  void forward_quant_gemv(const float* x, float* y, int m, int n_rows) const;
  struct Impl;
  void forward_onednn(const float* x, float* y, int m) const;
  int out_ = 0, in_ = 0;
  WeightType type_ = WeightType::kF32;
  std::vector<float> weight_f32_;      // [out, in] when type_ == kF32
  std::vector<uint16_t> weight_bf16_;  // [out, in] when type_ == kBF16
  std::vector<QuantPart> parts_;       // when is_quant(type_)
  std::vector<float> bias_;            // [out]
  std::unique_ptr<Impl> impl_;         // cached oneDNN primitives, keyed by m
};

// Whether bf16 weights go through float32 panels in the prefill GEMM on this machine (oneDNN
// 2.6 multiplies bf16 only from AVX-512 on; below it Linear converts panels of weight rows).
bool linear_bf16_uses_f32_panels();

// Fuses several projections that read the same input into one GEMM (Q|K|V, gate|up): rows are
// concatenated in the order given.
Linear concat_rows(int in_features, std::vector<std::vector<float>> weights,
                   std::vector<std::vector<float>> biases, std::vector<int> outs, WeightType type);
// The same for quantized parts (adjacent parts of one type are merged into one).
Linear concat_quant_rows(int in_features, std::vector<QuantPart> parts,
                         std::vector<std::vector<float>> biases,
                         WeightType type = WeightType::kQuant);

}  // namespace hybridgen::cpu
