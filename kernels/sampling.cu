// Device sampling (kernels/sampling.h): one segmented radix sort of every row's logits
// (descending; stable, so equal logits keep ascending ids: the CPU sampler's tie-break), then one
// block per row walks the sorted row with block-wide scans for top-p and the draw. Sums in
// double, probabilities rounded to float as the CPU sampler stores them.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <string>

#include "ops.cuh"
#include "sampling.h"

namespace hybridgen::cuda {

namespace {

constexpr int kSampleThreads = 256;

void check_arg(bool ok, const char* what) {
  if (!ok) fail(std::string("cuda::sample: ") + what);
}

__global__ void iota_rows_kernel(int32_t* __restrict__ ids, int32_t* __restrict__ offsets, int rows,
                                 int vocab) {
  const int64_t total = int64_t(rows) * vocab;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x)
    ids[e] = int32_t(e % vocab);
  if (blockIdx.x == 0)
    for (int r = threadIdx.x; r <= rows; r += blockDim.x) offsets[r] = r * vocab;
}

__device__ __forceinline__ double block_sum_d(double v, double* red) {
  using Scan = cub::BlockReduce<double, kSampleThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const double s = Scan(tmp).Sum(v);
  if (threadIdx.x == 0) *red = s;
  __syncthreads();
  const double r = *red;
  __syncthreads();
  return r;
}

// The smallest n in [1, limit] whose prefix sum of w(j), j < n, reaches `target` (>=), or limit
// when none does; sums in double, in chunks of the block with a block scan.
template <class W>
__device__ int first_prefix_reaching(int limit, double target, W w, double* red, int* found) {
  using Scan = cub::BlockScan<double, kSampleThreads>;
  __shared__ typename Scan::TempStorage tmp;
  double base = 0;
  for (int c = 0; c < limit; c += kSampleThreads) {
    const int j = c + threadIdx.x;
    const double x = j < limit ? w(j) : 0.0;
    double incl, total;
    Scan(tmp).InclusiveSum(x, incl, total);
    if (threadIdx.x == 0) *found = INT_MAX;
    __syncthreads();
    if (j < limit && base + incl >= target) atomicMin(found, j + 1);
    __syncthreads();
    const int f = *found;
    __syncthreads();
    if (f != INT_MAX) return f;
    base += total;
  }
  (void)red;
  return limit;
}

// One block per row: sorted logits sl [vocab] and their ids sid [vocab].
__global__ void __launch_bounds__(kSampleThreads)
    select_kernel(const float* __restrict__ sorted, const int32_t* __restrict__ sorted_ids,
                  int vocab, DeviceSampling p, const double* __restrict__ u,
                  int32_t* __restrict__ out) {
  const float* sl = sorted + int64_t(blockIdx.x) * vocab;
  const int32_t* sid = sorted_ids + int64_t(blockIdx.x) * vocab;
  __shared__ double red;
  __shared__ int found;
  const int keep = p.top_k > 0 && p.top_k < vocab ? p.top_k : vocab;
  // softmax over the kept: p_j = float(exp(l_j - l_0) / sum), as the CPU sampler.
  const float mx = sl[0];
  double s = 0;
  for (int j = threadIdx.x; j < keep; j += blockDim.x) s += double(expf(sl[j] - mx));
  const double sum = block_sum_d(s, &red);
  auto prob = [&](int j) { return float(double(expf(sl[j] - mx)) / sum); };
  int n = keep;
  if (p.top_p < 1.0f)  // the smallest prefix whose mass reaches top_p
    n = first_prefix_reaching(
        keep, double(p.top_p), [&](int j) { return double(prob(j)); }, &red, &found);
  if (p.min_p > 0.f) {  // probabilities are non-increasing: the kept ones are a prefix
    const float floor_p = p.min_p * prob(0);
    if (threadIdx.x == 0) found = n;
    __syncthreads();
    for (int j = 1 + threadIdx.x; j < n; j += blockDim.x)
      if (prob(j) < floor_p) atomicMin(&found, j);
    __syncthreads();
    n = found;
    __syncthreads();
  }
  // temperature, softmax again over the n kept, then the draw.
  // As the CPU sampler: each logit divided by the temperature (not times its reciprocal).
  const float t = p.temperature;
  const float mx2 = sl[0] / t;
  double s2 = 0;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s2 += double(expf(sl[j] / t - mx2));
  const double sum2 = block_sum_d(s2, &red);
  const double r = u[blockIdx.x];
  // first j with r < cum(j + 1): the smallest prefix n' whose mass exceeds r.
  using Scan = cub::BlockScan<double, kSampleThreads>;
  __shared__ typename Scan::TempStorage tmp;
  double base = 0;
  int pick = n - 1;
  for (int c = 0; c < n; c += kSampleThreads) {
    const int j = c + threadIdx.x;
    const double x = j < n ? double(float(double(expf(sl[j] / t - mx2)) / sum2)) : 0.0;
    double incl, total;
    Scan(tmp).InclusiveSum(x, incl, total);
    if (threadIdx.x == 0) found = INT_MAX;
    __syncthreads();
    if (j < n && r < base + incl) atomicMin(&found, j);
    __syncthreads();
    const int f = found;
    __syncthreads();
    if (f != INT_MAX) {
      pick = f;
      break;
    }
    base += total;
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sid[pick];
}

struct Layout {
  size_t keys, ids_in, ids_out, offsets, u, cub, total;
};

size_t align256(size_t b) { return (b + 255) & ~size_t(255); }

size_t cub_bytes(int rows, int vocab) {
  size_t b = 0;
  CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, b, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), rows * vocab, rows,
      static_cast<const int32_t*>(nullptr), static_cast<const int32_t*>(nullptr) + 1));
  return b;
}

Layout layout(int rows, int vocab) {
  Layout l;
  const size_t n = size_t(rows) * vocab;
  l.keys = 0;
  l.ids_in = l.keys + align256(n * 4);
  l.ids_out = l.ids_in + align256(n * 4);
  l.offsets = l.ids_out + align256(n * 4);
  l.u = l.offsets + align256(size_t(rows + 1) * 4);
  l.cub = l.u + align256(size_t(rows) * 8);
  l.total = l.cub + align256(cub_bytes(rows, vocab));
  return l;
}

}  // namespace

size_t sampling_workspace_bytes(int max_rows, int vocab) {
  if (max_rows <= 0 || vocab <= 0) return 0;
  return layout(max_rows, vocab).total;
}

void sample(const float* logits, int rows, int vocab, const DeviceSampling& p, const double* u,
            void* workspace, size_t workspace_bytes, int32_t* out, Stream stream) {
  if (rows <= 0) return;
  check_arg(vocab > 0, "vocab must be positive");
  if (p.temperature <= 0.f) {
    argmax(logits, rows, vocab, out, stream);
    return;
  }
  check_arg(p.top_p > 0.f && p.min_p <= 1.f, "top_p must be positive and min_p at most 1");
  const Layout l = layout(rows, vocab);
  check_arg(workspace && workspace_bytes >= l.total,
            "workspace smaller than sampling_workspace_bytes(rows, vocab)");
  char* w = static_cast<char*>(workspace);
  float* keys = reinterpret_cast<float*>(w + l.keys);
  int32_t* ids_in = reinterpret_cast<int32_t*>(w + l.ids_in);
  int32_t* ids_out = reinterpret_cast<int32_t*>(w + l.ids_out);
  int32_t* offsets = reinterpret_cast<int32_t*>(w + l.offsets);
  double* ud = reinterpret_cast<double*>(w + l.u);
  const int64_t n = int64_t(rows) * vocab;
  const int blocks = int(std::min<int64_t>((n + 255) / 256, 4096));
  iota_rows_kernel<<<blocks, 256, 0, stream>>>(ids_in, offsets, rows, vocab);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cudaMemcpyAsync(ud, u, sizeof(double) * rows, cudaMemcpyHostToDevice, stream));
  size_t cb = workspace_bytes - l.cub;
  CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      w + l.cub, cb, logits, keys, ids_in, ids_out, int(n), rows, offsets, offsets + 1, 0,
      int(sizeof(float) * 8), stream));
  select_kernel<<<rows, kSampleThreads, 0, stream>>>(keys, ids_out, vocab, p, ud, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hybridgen::cuda
