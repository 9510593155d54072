// Host read bandwidth: a vectorized OpenMP sum over a buffer much larger than the caches,
// median of repetitions. The floor of a CPU decode step is (weight + KV bytes) / this.
//   hybridgen-membw [MiB=1024] [reps=9]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 1024;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 9;
  const size_t n = mib * (1 << 20) / sizeof(float);
  std::vector<float> buf(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = static_cast<float>(i & 1023) * 1e-3f;
  std::vector<double> gbs;
  double sink = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0;
    // Eight independent accumulators per thread, so the add latency never limits the stream.
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
    sink += total;
    gbs.push_back(n * sizeof(float) / s / 1e9);
  }
  std::sort(gbs.begin(), gbs.end());
  std::printf(
      "host read bandwidth: %.2f GB/s median (min %.2f, max %.2f) over %d reps of %zu MiB, "
      "%d threads (checksum %.3g)\n",
      gbs[gbs.size() / 2], gbs.front(), gbs.back(), reps, mib, omp_get_max_threads(), sink);
  return 0;
}
