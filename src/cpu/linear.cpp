#include "cpu/linear.h"

#include <dnnl.hpp>
#include <mutex>
#include <unordered_map>

#include "cpu/gemv.h"
#include "model/dequant.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace {
// One oneDNN CPU engine per process: it is stateless apart from the primitive cache, and
// primitives created on it are cached per Linear below.
dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}
}  // namespace

struct Linear::Impl {
  std::mutex mu;
  std::unordered_map<int, dnnl::matmul> by_m;  // one primitive per row count m
};

Linear::Linear(int out, int in, std::vector<float> weight, std::vector<float> bias, WeightType type)
    : out_(out), in_(in), type_(type), bias_(std::move(bias)), impl_(std::make_unique<Impl>()) {
  HG_CHECK(out > 0 && in > 0, "Linear: empty weight");
  HG_CHECK(weight.size() == static_cast<size_t>(out) * in, "Linear: weight size mismatch");
  HG_CHECK(bias_.empty() || bias_.size() == static_cast<size_t>(out), "Linear: bias size mismatch");
  if (type == WeightType::kF32) {
    weight_f32_ = std::move(weight);
  } else {
    weight_bf16_.resize(weight.size());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(weight.size()); ++i)
      weight_bf16_[i] = f32_to_bf16(weight[i]);
  }
}

Linear::Linear() = default;
Linear::Linear(Linear&&) noexcept = default;
Linear& Linear::operator=(Linear&&) noexcept = default;
Linear::~Linear() = default;

uint64_t Linear::weight_bytes() const {
  return weight_f32_.size() * 4 + weight_bf16_.size() * 2 + bias_.size() * 4;
}

std::vector<float> Linear::weight_row(int r) const {
  std::vector<float> row(in_);
  for (int i = 0; i < in_; ++i)
    row[i] = type_ == WeightType::kF32 ? weight_f32_[size_t(r) * in_ + i]
                                       : bf16_to_f32(weight_bf16_[size_t(r) * in_ + i]);
  return row;
}

void Linear::forward(const float* x, float* y, int m) const {
  const float* bias = has_bias() ? bias_.data() : nullptr;
  if (m <= kGemvMaxRows) {  // decode: a memory-bound stream over the weights
    if (type_ == WeightType::kF32) {
      gemv_f32(weight_f32_.data(), x, bias, y, m, out_, in_);
    } else {
      std::vector<uint16_t> x_bf16(static_cast<size_t>(m) * in_);
      for (size_t i = 0; i < x_bf16.size(); ++i) x_bf16[i] = f32_to_bf16(x[i]);
      gemv_bf16(weight_bf16_.data(), x_bf16.data(), bias, y, m, out_, in_);
    }
    return;
  }
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
#pragma omp parallel for schedule(static) if (x_bf16.size() > 65536)
    for (int64_t i = 0; i < static_cast<int64_t>(x_bf16.size()); ++i) x_bf16[i] = f32_to_bf16(x[i]);
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
  const float* bias = has_bias() ? bias_.data() : nullptr;
  if (m <= kGemvMaxRows) {  // weights are [out, in] row-major: the first rows are contiguous
    if (type_ == WeightType::kF32) {
      gemv_f32(weight_f32_.data(), x, bias, y, m, n_rows, in_);
    } else {
      std::vector<uint16_t> x_bf16(static_cast<size_t>(m) * in_);
      for (size_t i = 0; i < x_bf16.size(); ++i) x_bf16[i] = f32_to_bf16(x[i]);
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

}  // namespace hybridgen::cpu
