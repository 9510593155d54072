// The CUDA backend's tensor callback (Backend::set_tensor_callback): the same named
// intermediates as the CPU backend, in the same order and shapes, and their values close to the
// CPU backend's layer by layer. Both load the weights as bf16, so they differ only in float32
// summation order and the bf16 activation roundings it flips (tests/unit/cuda_model_test.cpp
// measures that floor on the logits: <= 2.5e-2 of the row's scale). Stated tolerance here, every
// element: |cuda - cpu| <= 2.5e-2 * max(1, max |cpu| of that tensor).
// Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model_loader.h"
#include "runtime/backend.h"
#include "runtime/transformer.h"

namespace hybridgen {
namespace {

struct Dumped {
  std::string name;
  int il, n, width;
  std::vector<float> data;
};

std::vector<Dumped> run(Backend& b, kv::KvCacheManager& cache, const Batch& batch) {
  std::vector<Dumped> out;
  b.set_tensor_callback([&](const char* name, int il, const float* data, int n, int width) {
    out.push_back({name, il, n, width, std::vector<float>(data, data + size_t(n) * width)});
  });
  std::vector<float> logits;
  b.forward(batch, cache, logits);
  b.set_tensor_callback(nullptr);
  return out;
}

class CudaTensorCallback : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaTensorCallback, SameIntermediatesAsTheCpuBackend) {
  std::string why;
  if (!cuda_available(&why)) GTEST_SKIP() << "no CUDA: " << why;
  const std::string dir = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/" + GetParam();
  LoadedModel m = load_model(dir, false, 0, WeightChoice::kBF16);
  const ModelConfig c = m.config;
  const int n_ctx = 64;
  std::unique_ptr<Backend> gpu = make_cuda_backend(m.config, m.weights, n_ctx, 1);
  Transformer cpu(std::move(m.config), std::move(m.weights));
  kv::KvCacheManager cache_cpu(kv::KvShape{c.n_layers, c.n_kv_heads, c.head_dim}, n_ctx, 1);
  kv::KvCacheManager cache_gpu(kv::KvShape{c.n_layers, c.n_kv_heads, c.head_dim}, n_ctx, 1);
  const int s_cpu = cache_cpu.open_sequence(), s_gpu = cache_gpu.open_sequence();
  Batch bc, bg;
  for (int i = 0; i < 12; ++i) {
    bc.add((i * 31 + 5) % c.vocab_size, s_cpu, i == 11);
    bg.add((i * 31 + 5) % c.vocab_size, s_gpu, i == 11);
  }
  const std::vector<Dumped> want = run(cpu, cache_cpu, bc);
  const std::vector<Dumped> got = run(*gpu, cache_gpu, bg);
  ASSERT_EQ(got.size(), want.size());
  ASSERT_EQ(want.size(), size_t(2 + 7 * c.n_layers));  // inp_embd, 7 per layer, result_norm
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const Dumped &a = got[i], &b = want[i];
    ASSERT_EQ(a.name, b.name) << "intermediate " << i;
    ASSERT_EQ(a.il, b.il) << a.name;
    ASSERT_EQ(a.n, b.n) << a.name;
    ASSERT_EQ(a.width, b.width) << a.name;
    double scale = 1;
    for (float x : b.data) scale = std::max(scale, double(std::fabs(x)));
    int bad = 0;
    for (size_t e = 0; e < b.data.size(); ++e) {
      ASSERT_TRUE(std::isfinite(a.data[e])) << a.name << " layer " << a.il;
      const double err = std::fabs(double(a.data[e]) - b.data[e]) / scale;
      worst = std::max(worst, err);
      if (!(err <= 2.5e-2) && bad++ < 3)
        ADD_FAILURE() << a.name << " layer " << a.il << " element " << e << ": cuda " << a.data[e]
                      << ", cpu " << b.data[e] << " (normalized error " << err << ")";
    }
  }
  std::printf("[ %s ] %zu intermediates, max normalized |cuda - cpu| = %.3g\n", GetParam().c_str(),
              want.size(), worst);
}

INSTANTIATE_TEST_SUITE_P(Architectures, CudaTensorCallback,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-opt"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace hybridgen
