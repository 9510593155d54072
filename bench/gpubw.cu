// GPU ceilings: HBM bandwidth (device-to-device copy, bytes read + written) and pinned
// host-to-device bandwidth, median of repetitions timed with events.
//   hybridgen-gpubw [MiB=2048] [reps=20]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                              \
  do {                                                                                        \
    cudaError_t e = (x);                                                                      \
    if (e != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

template <typename Op>
static double median_ms(cudaEvent_t a, cudaEvent_t b, int reps, Op&& op) {
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    CHECK(cudaEventRecord(a));
    op();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float t;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int main(int argc, char** argv) {
  const size_t bytes = (argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 2048) << 20;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  void *a, *b, *h;
  CHECK(cudaMalloc(&a, bytes));
  CHECK(cudaMalloc(&b, bytes));
  CHECK(cudaMallocHost(&h, bytes));
  CHECK(cudaMemset(a, 1, bytes));
  std::fill_n(static_cast<char*>(h), bytes, 1);
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));  // warm-up
  const double d2d =
      median_ms(e0, e1, reps, [&] { CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice)); });
  const double h2d =
      median_ms(e0, e1, reps, [&] { CHECK(cudaMemcpy(a, h, bytes, cudaMemcpyHostToDevice)); });
  std::printf(
      "%s: HBM copy %.0f GB/s (read + write), pinned H2D %.1f GB/s (medians of %d x %zu MiB)\n",
      prop.name, 2.0 * bytes / (d2d * 1e-3) / 1e9, bytes / (h2d * 1e-3) / 1e9, reps, bytes >> 20);
  return 0;
}
