#include "cpu/linear.h"

#include <algorithm>
#include <cstring>
#include <dnnl.hpp>
#include <mutex>
#include <unordered_map>

#include "cpu/gemv.h"
#include "cpu/isa.h"
#include "cpu/quant/quant_gemv.h"
#include "cpu/quant/quant_gemv16.h"
#include "cpu/vec.h"
#include "model/dequant.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace {
// One oneDNN CPU engine per process: it is stateless apart from the primitive cache, and
// primitives created on it are cached per Linear below. active_isa() first: it applies the
// HYBRIDGEN_CPU_ISA cap to oneDNN, which must precede any primitive.
dnnl::engine& cpu_engine() {
  static dnnl::engine engine = [] {
    (void)active_isa();
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return engine;
}

// Rows of a bf16 weight converted to float32 at a time when oneDNN cannot multiply bf16:
// 512 rows × 4096 inputs × 4 B = 8 MiB of panel at most, reused for every panel.
constexpr int kPanelRows = 512;

// A oneDNN failure as the user should read it: the operation, its shapes, the CPU and the way
// out — never oneDNN's bare message.
[[noreturn]] void fail_matmul(const dnnl::error& e, int m, int in, int out, WeightType type) {
  fail(std::string("CPU matmul [") + std::to_string(m) + " x " + std::to_string(in) + "] x [" +
       std::to_string(in) + " x " + std::to_string(out) + "] with " +
       (type == WeightType::kBF16 ? "bf16"
        : is_quant(type)          ? "quantized"
                                  : "f32") +
       " weights failed in oneDNN (" + e.what() + ", status " +
       std::to_string(static_cast<int>(e.status)) + ") on a CPU with " + cpu_features() +
       " (kernels at " + isa_name(active_isa()) + ")" +
       (type == WeightType::kBF16 ? "; --weight-format f32 avoids bf16 GEMMs" : "") +
       (isa_capped() ? "; HYBRIDGEN_CPU_ISA is set, unset it to use the whole CPU" : ""));
}
}  // namespace

bool linear_bf16_uses_f32_panels() { return !isa_enabled(Isa::kAvx512); }

struct Linear::Impl {
  std::mutex mu;
  std::unordered_map<int, dnnl::matmul> by_m;  // one primitive per row count m
};

Linear::Linear(int out, int in, std::vector<float> weight, std::vector<float> bias, WeightType type)
    : out_(out), in_(in), type_(type), bias_(std::move(bias)), impl_(std::make_unique<Impl>()) {
  HG_CHECK(out > 0 && in > 0, "Linear: empty weight");
  HG_CHECK(!is_quant(type), "Linear: float weights cannot be of a quantized type");
  HG_CHECK(weight.size() == static_cast<size_t>(out) * in, "Linear: weight size mismatch");
  HG_CHECK(bias_.empty() || bias_.size() == static_cast<size_t>(out), "Linear: bias size mismatch");
  if (type == WeightType::kF32) {
    weight_f32_ = std::move(weight);
  } else {
    weight_bf16_.resize(weight.size());
    const VecKernels& vk = vec_kernels();
    const int64_t n = static_cast<int64_t>(weight.size()), block = 1 << 16;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += block)
      vk.to_bf16(weight.data() + i, weight_bf16_.data() + i, std::min(block, n - i));
  }
}

Linear::Linear(int in, std::vector<QuantPart> parts, std::vector<float> bias, WeightType type)
    : in_(in),
      type_(type),
      parts_(std::move(parts)),
      bias_(std::move(bias)),
      impl_(std::make_unique<Impl>()) {
  HG_CHECK(in > 0 && !parts_.empty(), "Linear: empty quantized weight");
  HG_CHECK(is_quant(type), "Linear: quantized parts need type kQuant or kQuantQ8");
  for (const QuantPart& p : parts_) {
    HG_CHECK(quant_gemv_supports(p.type),
             "Linear: no quantized GEMV for " + std::string(dtype_name(p.type)));
    HG_CHECK(p.rows > 0 && in % dtype_block_size(p.type) == 0 &&
                 p.blocks.size() == static_cast<size_t>(p.rows) * (in / dtype_block_size(p.type)) *
                                        dtype_block_bytes(p.type),
             "Linear: quantized part of " + std::to_string(p.rows) + " rows has " +
                 std::to_string(p.blocks.size()) + " bytes");
    HG_CHECK(!p.rows4, "Linear: quantized parts must be given in GGUF row order");
    out_ += p.rows;
  }
  HG_CHECK(bias_.empty() || bias_.size() == static_cast<size_t>(out_),
           "Linear: bias size mismatch");
  if (type_ == WeightType::kQuant)
    for (QuantPart& p : parts_)
      if (quant16_r4_preferred(p.type)) {
        p.blocks = repack_rows4(p.type, p.blocks.data(), p.rows, in_);
        p.rows4 = true;
      }
}

void Linear::part_row(const QuantPart& p, int r, uint8_t* out) const {
  const int64_t rb = in_ / dtype_block_size(p.type) * dtype_block_bytes(p.type);
  if (p.rows4)
    unpack_row4(p.type, p.blocks.data(), r, in_, out);
  else
    std::memcpy(out, p.blocks.data() + r * rb, size_t(rb));
}

Linear::Linear() = default;
Linear::Linear(Linear&&) noexcept = default;
Linear& Linear::operator=(Linear&&) noexcept = default;
Linear::~Linear() = default;

uint64_t Linear::weight_bytes() const {
  uint64_t q = 0;
  for (const QuantPart& p : parts_) q += p.blocks.size();
  return weight_f32_.size() * 4 + weight_bf16_.size() * 2 + q + bias_.size() * 4;
}

std::vector<float> Linear::weight_row(int r) const {
  std::vector<float> row(in_);
  if (is_quant(type_)) {
    for (const QuantPart& p : parts_) {
      if (r < p.rows) {
        std::vector<uint8_t> blocks(in_ / dtype_block_size(p.type) * dtype_block_bytes(p.type));
        part_row(p, r, blocks.data());
        dequantize(p.type, blocks.data(), row.data(), in_);
        return row;
      }
      r -= p.rows;
    }
    fail("Linear::weight_row: row out of range");
  }
  for (int i = 0; i < in_; ++i)
    row[i] = type_ == WeightType::kF32 ? weight_f32_[size_t(r) * in_ + i]
                                       : bf16_to_f32(weight_bf16_[size_t(r) * in_ + i]);
  return row;
}

void Linear::forward_quant_gemv(const float* x, float* y, int m, int n_rows) const {
  // kQuant: 16-bit activations, one format for every weight type that has 16-bit kernels, so
  // one quantization per call; a part of another type (Q5_K, IQ4_XS, ...) takes its 8-bit
  // kernel, as every part does under kQuantQ8 (8-bit activations per weight type: Q|K|V may
  // mix types). The buffers are per thread and kept between calls, so a decode step does not
  // allocate per projection; `filled` says which hold this call's x.
  thread_local QuantActivations16 act16;
  thread_local QuantActivations acts[2];
  bool filled16 = false, filled[2] = {false, false};
  int row0 = 0;
  for (const QuantPart& p : parts_) {
    if (row0 >= n_rows) break;
    const int rows = std::min(p.rows, n_rows - row0);
    const float* bias = has_bias() ? bias_.data() + row0 : nullptr;
    if (type_ == WeightType::kQuant && quant_gemv16_supports(p.type)) {
      if (!filled16) quantize_activations16(x, m, in_, &act16);
      filled16 = true;
      if (p.rows4)
        gemv_quant16_r4(p.type, p.blocks.data(), act16, bias, y + row0, n_rows, rows);
      else
        gemv_quant16(p.type, p.blocks.data(), act16, bias, y + row0, n_rows, rows);
      row0 += p.rows;
      continue;
    }
    QuantActivations* a = nullptr;
    for (int i = 0; i < 2; ++i)
      if (filled[i] && acts[i].weight_type == p.type) a = &acts[i];
    if (!a) {
      const int i = filled[0] ? 1 : 0;
      a = &acts[i];
      quantize_activations(p.type, x, m, in_, a);
      filled[i] = true;
    }
    gemv_quant(p.type, p.blocks.data(), *a, bias, y + row0, n_rows, rows);
    row0 += p.rows;
  }
}

// Dequantize kPanelRows rows at a time (bit-exact with ggml), then oneDNN's f32 GEMM, as
// forward_f32_panels does for bf16: the weights stay quantized in memory, and at prefill sizes
// the conversion is amortised over the m activation rows.
void Linear::forward_quant_panels(const float* x, float* y, int m) const {
  const int rows = std::min(kPanelRows, out_);
  std::vector<float> panel(static_cast<size_t>(rows) * in_);  // [rows, in]
  int row0 = 0;
  for (const QuantPart& p : parts_) {
    const int64_t rb = in_ / dtype_block_size(p.type) * dtype_block_bytes(p.type);
    for (int n0 = 0; n0 < p.rows; n0 += rows) {
      const int np = std::min(rows, p.rows - n0);
#pragma omp parallel for schedule(static)
      for (int r = 0; r < np; ++r) {
        if (!p.rows4) {
          dequantize(p.type, p.blocks.data() + (n0 + r) * rb, panel.data() + size_t(r) * in_, in_);
          continue;
        }
        thread_local std::vector<uint8_t> blocks;
        blocks.resize(size_t(rb));
        unpack_row4(p.type, p.blocks.data(), n0 + r, in_, blocks.data());
        dequantize(p.type, blocks.data(), panel.data() + size_t(r) * in_, in_);
      }
      const dnnl::status st = dnnl::sgemm('N', 'T', m, np, in_, 1.f, x, in_, panel.data(), in_, 0.f,
                                          y + row0 + n0, out_);
      if (st != dnnl::status::success)
        fail_matmul(dnnl::error(static_cast<dnnl_status_t>(st), "dnnl_sgemm"), m, in_, out_, type_);
    }
    row0 += p.rows;
  }
  if (has_bias()) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < m; ++r)
      for (int o = 0; o < out_; ++o) y[static_cast<size_t>(r) * out_ + o] += bias_[o];
  }
}

void Linear::forward(const float* x, float* y, int m) const {
  const float* bias = has_bias() ? bias_.data() : nullptr;
  if (is_quant(type_)) {
    if (m <= kGemvMaxRows) return forward_quant_gemv(x, y, m, out_);
    return forward_quant_panels(x, y, m);
  }
  if (m <= kGemvMaxRows) {  // decode: a memory-bound stream over the weights
    if (type_ == WeightType::kF32) {
      gemv_f32(weight_f32_.data(), x, bias, y, m, out_, in_);
    } else {
      std::vector<uint16_t> x_bf16(static_cast<size_t>(m) * in_);
      vec_kernels().to_bf16(x, x_bf16.data(), static_cast<int64_t>(x_bf16.size()));
      gemv_bf16(weight_bf16_.data(), x_bf16.data(), bias, y, m, out_, in_);
    }
    return;
  }
  if (type_ == WeightType::kBF16 && linear_bf16_uses_f32_panels())
    return forward_f32_panels(x, y, m);
  try {
    forward_onednn(x, y, m);
  } catch (const dnnl::error& e) {
    fail_matmul(e, m, in_, out_, type_);
  }
}

// bf16 weights where oneDNN has no bf16 matmul (below AVX-512): convert kPanelRows weight rows
// at a time to float32 and multiply with oneDNN's f32 GEMM. The conversion reads each weight
// once per call (amortised over m rows), so at prefill sizes it costs a few percent over f32
// weights (docs/benchmarks.md) while the weights stay half the memory.
void Linear::forward_f32_panels(const float* x, float* y, int m) const {
  const VecKernels& vk = vec_kernels();
  const int rows = std::min(kPanelRows, out_);
  std::vector<float> panel(static_cast<size_t>(rows) * in_);  // [rows, in]
  for (int n0 = 0; n0 < out_; n0 += rows) {
    const int np = std::min(rows, out_ - n0);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < np; ++r)
      vk.from_bf16(weight_bf16_.data() + static_cast<size_t>(n0 + r) * in_,
                   panel.data() + static_cast<size_t>(r) * in_, in_);
    // y[:, n0:n0+np] = x [m, in] · panelᵀ  (row-major; ldc = out)
    const dnnl::status st =
        dnnl::sgemm('N', 'T', m, np, in_, 1.f, x, in_, panel.data(), in_, 0.f, y + n0, out_);
    if (st != dnnl::status::success)
      fail_matmul(dnnl::error(static_cast<dnnl_status_t>(st), "dnnl_sgemm"), m, in_, out_, type_);
  }
  if (has_bias()) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < m; ++r)
      for (int o = 0; o < out_; ++o) y[static_cast<size_t>(r) * out_ + o] += bias_[o];
  }
}

void Linear::forward_onednn(const float* x, float* y, int m) const {
  using dnnl::memory;
  using tag = memory::format_tag;
  const memory::data_type wdt =
      type_ == WeightType::kF32 ? memory::data_type::f32 : memory::data_type::bf16;
  // src [m, in]; weights [in, out] seen through our [out, in] row-major storage ("ba");
  // bias [1, out]; dst [m, out].
  memory::desc src_md({m, in_}, wdt, tag::ab);
  memory::desc w_md({in_, out_}, wdt, tag::ba);
  memory::desc b_md({1, out_}, memory::data_type::f32, tag::ab);
  memory::desc dst_md({m, out_}, memory::data_type::f32, tag::ab);

  dnnl::matmul prim;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->by_m.find(m);
    if (it == impl_->by_m.end()) {
      auto desc = has_bias() ? dnnl::matmul::desc(src_md, w_md, b_md, dst_md)
                             : dnnl::matmul::desc(src_md, w_md, dst_md);
      dnnl::matmul::primitive_desc pd(desc, cpu_engine());
      it = impl_->by_m.emplace(m, dnnl::matmul(pd)).first;
    }
    prim = it->second;
  }

  auto& eng = cpu_engine();
  std::vector<uint16_t> x_bf16;
  void* src_ptr = const_cast<float*>(x);
  void* w_ptr = const_cast<float*>(weight_f32_.data());
  if (type_ == WeightType::kBF16) {
    x_bf16.resize(static_cast<size_t>(m) * in_);
    const VecKernels& vk = vec_kernels();
    const int64_t n = static_cast<int64_t>(x_bf16.size()), block = 1 << 14;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i += block)
      vk.to_bf16(x + i, x_bf16.data() + i, std::min(block, n - i));
    src_ptr = x_bf16.data();
    w_ptr = const_cast<uint16_t*>(weight_bf16_.data());
  }
  memory src_mem(src_md, eng, src_ptr);
  memory w_mem(w_md, eng, w_ptr);
  memory dst_mem(dst_md, eng, y);
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, dst_mem}};
  if (has_bias()) args.emplace(DNNL_ARG_BIAS, memory(b_md, eng, const_cast<float*>(bias_.data())));
  dnnl::stream stream(eng);
  prim.execute(stream, args);
  stream.wait();
}

void Linear::forward_rows(const float* x, float* y, int m, int n_rows) const {
  HG_CHECK(n_rows > 0 && n_rows <= out_,
           "Linear::forward_rows: " + std::to_string(n_rows) + " rows of " + std::to_string(out_));
  if (n_rows == out_) return forward(x, y, m);
  if (is_quant(type_) && m <= kGemvMaxRows) return forward_quant_gemv(x, y, m, n_rows);
  const float* bias = has_bias() ? bias_.data() : nullptr;
  if (m <= kGemvMaxRows) {  // weights are [out, in] row-major: the first rows are contiguous
    if (type_ == WeightType::kF32) {
      gemv_f32(weight_f32_.data(), x, bias, y, m, n_rows, in_);
    } else {
      std::vector<uint16_t> x_bf16(static_cast<size_t>(m) * in_);
      vec_kernels().to_bf16(x, x_bf16.data(), static_cast<int64_t>(x_bf16.size()));
      gemv_bf16(weight_bf16_.data(), x_bf16.data(), bias, y, m, n_rows, in_);
    }
    return;
  }
  std::vector<float> full(static_cast<size_t>(m) * out_);  // [m, out]
  forward(x, full.data(), m);
  for (int r = 0; r < m; ++r) std::copy_n(&full[size_t(r) * out_], n_rows, y + size_t(r) * n_rows);
}

Linear concat_rows(int in_features, std::vector<std::vector<float>> weights,
                   std::vector<std::vector<float>> biases, std::vector<int> outs, WeightType type) {
  HG_CHECK(weights.size() == outs.size() && biases.size() == outs.size(),
           "concat_rows: mismatched parts");
  int total = 0;
  bool any_bias = false;
  for (size_t i = 0; i < outs.size(); ++i) {
    total += outs[i];
    any_bias |= !biases[i].empty();
  }
  std::vector<float> w;
  w.reserve(static_cast<size_t>(total) * in_features);
  std::vector<float> b;
  for (size_t i = 0; i < outs.size(); ++i) {
    w.insert(w.end(), weights[i].begin(), weights[i].end());
    std::vector<float>().swap(weights[i]);
    if (any_bias) {
      if (biases[i].empty())
        b.insert(b.end(), outs[i], 0.f);
      else
        b.insert(b.end(), biases[i].begin(), biases[i].end());
    }
  }
  return Linear(total, in_features, std::move(w), std::move(b), type);
}

Linear concat_quant_rows(int in_features, std::vector<QuantPart> parts,
                         std::vector<std::vector<float>> biases, WeightType type) {
  HG_CHECK(biases.size() == parts.size(), "concat_quant_rows: mismatched parts");
  bool any_bias = false;
  for (const auto& b : biases) any_bias |= !b.empty();
  std::vector<float> b;
  std::vector<QuantPart> merged;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (any_bias) {
      if (biases[i].empty())
        b.insert(b.end(), parts[i].rows, 0.f);
      else
        b.insert(b.end(), biases[i].begin(), biases[i].end());
    }
    if (!merged.empty() && merged.back().type == parts[i].type) {
      merged.back().rows += parts[i].rows;
      merged.back().blocks.insert(merged.back().blocks.end(), parts[i].blocks.begin(),
                                  parts[i].blocks.end());
    } else {
      merged.push_back(std::move(parts[i]));
    }
  }
  return Linear(in_features, std::move(merged), std::move(b), type);
}

}  // namespace hybridgen::cpu
