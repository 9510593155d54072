// Device sampling (kernels/sampling.h) against the CPU Sampler (src/runtime/sampler.cpp), the
// reference: for each case a fresh Sampler with seed s draws its one uniform number from
// std::mt19937_64(s) through std::uniform_real_distribution<double>(0, 1); the device gets that
// same number, so both must pick the same token. Stated agreement: greedy and top-k-only cases
// every row; with top-p / min-p / temperature the device's float exp and its summation order can
// move a probability by an ulp and flip a token sitting exactly on a boundary, so >= 99% of the
// rows. Random logits (fresh per case, never zeros), vocab 1000 and 151936 (Qwen2's), ties
// included (quantized logits). Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <span>
#include <vector>

#include "../../kernels/ops_api.h"
#include "../../kernels/sampling.h"
#include "runtime/backend.h"
#include "runtime/sampler.h"

namespace hybridgen {
namespace {

TEST(CudaSampler, SameTokensAsTheCpuSampler) {
  std::string why;
  if (!cuda_available(&why)) GTEST_SKIP() << why;
  struct P {
    float temperature;
    int top_k;
    float top_p, min_p;
  };
  const P params[] = {{0.f, 40, 0.95f, 0.05f},  {0.8f, 40, 0.95f, 0.05f}, {1.0f, 0, 1.0f, 0.f},
                      {0.5f, 5, 1.0f, 0.f},     {1.3f, 0, 0.9f, 0.f},     {0.7f, 0, 1.0f, 0.1f},
                      {2.0f, 1000, 0.5f, 0.02f}};
  std::mt19937_64 gen(7);
  for (const int vocab : {1000, 151936}) {
    const int rows = 64;
    const size_t wb = cuda::sampling_workspace_bytes(rows, vocab);
    void* ws = cuda::device_alloc(wb, "sampling workspace");
    float* logits = static_cast<float*>(cuda::device_alloc(sizeof(float) * rows * vocab, "logits"));
    int32_t* out = static_cast<int32_t*>(cuda::device_alloc(sizeof(int32_t) * rows, "tokens"));
    for (const P& p : params) {
      std::vector<float> host(size_t(rows) * vocab);
      std::normal_distribution<float> nd(0.f, 3.f);
      for (size_t i = 0; i < host.size(); ++i) {
        host[i] = nd(gen);
        if (i % 7 == 0) host[i] = std::round(host[i] * 4.f) / 4.f;  // ties
      }
      cuda::copy_to_device(logits, host.data(), sizeof(float) * host.size());
      std::vector<double> u(rows);
      std::vector<int32_t> want(rows);
      for (int r = 0; r < rows; ++r) {
        SamplingParams sp;
        sp.temperature = p.temperature;
        sp.top_k = p.top_k;
        sp.top_p = p.top_p;
        sp.min_p = p.min_p;
        sp.repeat_penalty = 1.f;
        sp.seed = 1000 + r;
        Sampler s(sp);
        want[r] = s.sample(std::span<const float>(&host[size_t(r) * vocab], vocab), {});
        std::mt19937_64 rng(sp.seed);
        std::uniform_real_distribution<double> uni(0.0, 1.0);
        u[r] = uni(rng);
      }
      cuda::DeviceSampling dp;
      dp.temperature = p.temperature;
      dp.top_k = p.top_k;
      dp.top_p = p.top_p;
      dp.min_p = p.min_p;
      const std::vector<int32_t> poison(rows, -1);  // every row must be written
      cuda::copy_to_device(out, poison.data(), sizeof(int32_t) * rows);
      cuda::sample(logits, rows, vocab, dp, u.data(), ws, wb, out, nullptr);
      cuda::device_synchronize();
      std::vector<int32_t> got(rows);
      cuda::copy_to_host(got.data(), out, sizeof(int32_t) * rows);
      int same = 0;
      for (int r = 0; r < rows; ++r) {
        ASSERT_GE(got[r], 0) << "row " << r << " not written";
        ASSERT_LT(got[r], vocab);
        same += got[r] == want[r];
      }
      const bool exact = p.temperature <= 0.f || (p.top_p >= 1.f && p.min_p <= 0.f);
      if (exact)
        EXPECT_EQ(same, rows) << "vocab " << vocab << " temp " << p.temperature;
      else
        EXPECT_GE(same, rows * 99 / 100) << "vocab " << vocab << " temp " << p.temperature;
      std::printf(
          "[ vocab %d temp %.2f top-k %d top-p %.2f min-p %.2f ] %d/%d rows equal to the "
          "CPU sampler\n",
          vocab, p.temperature, p.top_k, p.top_p, p.min_p, same, rows);
    }
    cuda::device_free(ws);
    cuda::device_free(logits);
    cuda::device_free(out);
  }
}

}  // namespace
}  // namespace hybridgen
