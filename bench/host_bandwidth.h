// Host read bandwidth, the ceiling of every CPU-side floor: a vectorized OpenMP sum over a
// buffer far larger than the caches, with eight independent accumulators of 16 floats per
// thread so that add latency never limits the stream. Shared by the benchmarks in bench/.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

namespace hybridgen::bench {

// GB/s of each repetition over `mib` MiB, with the threads OpenMP is set to use.
inline std::vector<double> host_read_gbs(size_t mib, int reps) {
  const size_t n = mib * (size_t{1} << 20) / sizeof(float);
  std::vector<float> buf(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = static_cast<float>(i & 1023) * 1e-3f;
  std::vector<double> gbs;
  volatile float sink = 0;  // keeps the sums alive
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
      float acc[8][16] = {};
#pragma omp for schedule(static)
      for (size_t b = 0; b < n / 128; ++b) {
        const float* p = &buf[b * 128];
        for (int j = 0; j < 8; ++j)
#pragma omp simd
          for (int k = 0; k < 16; ++k) acc[j][k] += p[j * 16 + k];
      }
      for (int j = 0; j < 8; ++j)
        for (int k = 0; k < 16; ++k) total += acc[j][k];
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink = sink + total;
    gbs.push_back(n * sizeof(float) / s / 1e9);
  }
  return gbs;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace hybridgen::bench
