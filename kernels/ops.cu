// The CUDA backend's kernels and their host launchers (declared in ops_api.h). Every kernel is a
// plain, bounds-checked, float32 kernel: correctness first (the CPU ops in src/cpu/ops.cpp are
// the reference, and tests/unit/cuda_ops_test.cpp compares each kernel with them).
#include <climits>
#include <cmath>
#include <string>

#include "ops.cuh"

namespace hybridgen::cuda {

namespace {

constexpr int kThreads = 256;      // element-wise kernels and row kernels
constexpr int kAttnThreads = 128;  // attention: 4 warps per (token, head)
constexpr int kAttnTile = 256;     // attention: positions scored per step of the online softmax

// ---- element-wise ---------------------------------------------------------------------------

__global__ void fill_kernel(float* __restrict__ x, int64_t n, float value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = value;
}

// Round to nearest even, NaN made quiet: the same bit arithmetic as hybridgen::f32_to_bf16.
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 64u);
  return static_cast<uint16_t>((u + (0x7FFFu + ((u >> 16) & 1u))) >> 16);
}

__global__ void to_bf16_kernel(const float* __restrict__ src, uint16_t* __restrict__ dst,
                               int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = f32_to_bf16_bits(src[i]);
}

__global__ void relu_kernel(float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    x[i] = v < 0.f ? 0.f : v;  // as std::max(v, 0.f): NaN stays NaN
  }
}

__global__ void add_kernel(float* __restrict__ x, const float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ bias, int n,
                                int width) {
  const int64_t total = int64_t(n) * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += bias[i % width];
}

__global__ void swiglu_kernel(const float* __restrict__ gu, int n, int d_ff,
                              float* __restrict__ out) {
  const int64_t total = int64_t(n) * d_ff;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / d_ff, j = i % d_ff;
    const float g = gu[t * 2 * d_ff + j];
    const float u = gu[t * 2 * d_ff + d_ff + j];
    out[i] = g / (1.0f + expf(-g)) * u;
  }
}

// ---- rows -----------------------------------------------------------------------------------

// grid: n blocks (one per token).
__global__ void embedding_kernel(const float* __restrict__ table, const int32_t* __restrict__ ids,
                                 int d, float* __restrict__ out) {
  const int t = blockIdx.x;
  const float* src = table + int64_t(ids[t]) * d;
  float* dst = out + int64_t(t) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

__global__ void add_positions_kernel(float* __restrict__ x, const float* __restrict__ table,
                                     const int32_t* __restrict__ pos, int offset, int d) {
  const int t = blockIdx.x;
  const float* src = table + (int64_t(pos[t]) + offset) * d;
  float* dst = x + int64_t(t) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] += src[i];
}

__global__ void gather_rows_kernel(const float* __restrict__ x, const int32_t* __restrict__ rows,
                                   int d, float* __restrict__ out) {
  const int r = blockIdx.x;
  const float* src = x + int64_t(rows[r]) * d;
  float* dst = out + int64_t(r) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

// grid: n blocks, kThreads threads. out may alias x: each element is read and written by the
// same thread, and every read of the reduction happens before the block_sum barrier.
__global__ void rms_norm_kernel(const float* x, const float* __restrict__ w, int d, float eps,
                                float* out) {
  __shared__ float red[33];
  const float* xr = x + int64_t(blockIdx.x) * d;
  float* o = out + int64_t(blockIdx.x) * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, red);
  const float inv = 1.0f / sqrtf(ss / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}

__global__ void layer_norm_kernel(const float* x, const float* __restrict__ w,
                                  const float* __restrict__ b, int d, float eps, float* out) {
  __shared__ float red[33];
  const float* xr = x + int64_t(blockIdx.x) * d;
  float* o = out + int64_t(blockIdx.x) * d;
  float sum = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) sum += xr[i];
  const float mean = block_sum(sum, red) / d;
  float var = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) var += (xr[i] - mean) * (xr[i] - mean);
  var = block_sum(var, red);
  const float inv = 1.0f / sqrtf(var / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = (xr[i] - mean) * inv * w[i] + b[i];
}

// One thread per rotated pair: total = n * n_heads * (rope_dim / 2).
__global__ void rope_kernel(float* __restrict__ x, int64_t row_stride, int n, int n_heads,
                            int head_dim, int half, const int32_t* __restrict__ pos,
                            const float* __restrict__ inv_freq, bool neox) {
  const int64_t total = int64_t(n) * n_heads * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int64_t th = idx / half;
    const int h = static_cast<int>(th % n_heads);
    const int64_t t = th / n_heads;
    float* v = x + t * row_stride + int64_t(h) * head_dim;
    // The angle is formed in float, as the CPU (and HF) do; sinf/cosf are the accurate ones
    // (this file is not built with --use_fast_math).
    const float angle = static_cast<float>(pos[t]) * inv_freq[i];
    const float c = cosf(angle), s = sinf(angle);
    const int a = neox ? i : 2 * i;
    const int b = neox ? i + half : 2 * i + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x1 * c + x0 * s;
  }
}

// ---- KV cache and attention -----------------------------------------------------------------

// One thread per copied element: total = n * n_kv_heads * head_dim.
__global__ void kv_append_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                 int64_t row_stride, int n, int n_kv_heads, int head_dim,
                                 const int32_t* __restrict__ seq, const int32_t* __restrict__ pos,
                                 float* const* __restrict__ k_slots,
                                 float* const* __restrict__ v_slots, int64_t layer_offset,
                                 int capacity) {
  const int64_t total = int64_t(n) * n_kv_heads * head_dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % head_dim);
    const int64_t th = idx / head_dim;
    const int h = static_cast<int>(th % n_kv_heads);
    const int64_t t = th / n_kv_heads;
    const int s = seq[t];
    const int64_t dst = layer_offset + (int64_t(h) * capacity + pos[t]) * head_dim + i;
    const int64_t src = t * row_stride + int64_t(h) * head_dim + i;
    k_slots[s][dst] = k[src];
    v_slots[s][dst] = v[src];
  }
}

// grid: n * n_heads blocks (block b: token b / n_heads, head b % n_heads); kAttnThreads threads;
// dynamic shared memory: (2 * head_dim + kAttnTile + 33) floats.
// The attended positions are visited in tiles of kAttnTile: each warp scores positions of the
// tile (lanes split head_dim, then a warp sum), the block takes the tile's max, rescales the
// running sum and accumulator (online softmax, all float32), and each thread accumulates
// p * V for the head dimensions it owns (i = threadIdx.x + k * blockDim.x).
__global__ void attention_kernel(const float* __restrict__ q, int64_t q_stride, int n_heads,
                                 int group, int head_dim, const int32_t* __restrict__ seq,
                                 const int32_t* __restrict__ pos,
                                 const float* const* __restrict__ k_slots,
                                 const float* const* __restrict__ v_slots, int64_t layer_offset,
                                 int capacity, float scale, int window, float* __restrict__ out) {
  extern __shared__ float smem[];
  float* q_s = smem;                 // [head_dim]
  float* acc = q_s + head_dim;       // [head_dim]
  float* sc = acc + head_dim;        // [kAttnTile]
  float* red = sc + kAttnTile;       // [33]

  const int t = blockIdx.x / n_heads;
  const int h = blockIdx.x % n_heads;
  const int kvh = h / group;
  const int hi = pos[t];
  const int lo = window > 0 ? max(0, hi - window + 1) : 0;
  const int64_t head_offset = layer_offset + int64_t(kvh) * capacity * head_dim;
  const float* kb = k_slots[seq[t]] + head_offset;  // [capacity, head_dim]
  const float* vb = v_slots[seq[t]] + head_offset;  // [capacity, head_dim]
  const float* qh = q + int64_t(t) * q_stride + int64_t(h) * head_dim;

  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    q_s[i] = qh[i];
    acc[i] = 0.f;
  }
  __syncthreads();

  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int n_warps = blockDim.x / kWarp;
  float m = -INFINITY;  // running max (the same in every thread)
  float l = 0.f;        // running sum of exp(score - m)
  for (int start = lo; start <= hi; start += kAttnTile) {
    const int len = min(kAttnTile, hi - start + 1);
    for (int j = warp; j < len; j += n_warps) {
      const float* kr = kb + int64_t(start + j) * head_dim;
      float dot = 0.f;
      for (int i = lane; i < head_dim; i += kWarp) dot += q_s[i] * kr[i];
      dot = warp_sum(dot);
      if (lane == 0) sc[j] = dot * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) mx = fmaxf(mx, sc[j]);
    mx = block_max(mx, red);
    const float m_new = fmaxf(m, mx);
    const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
    float sum = 0.f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
      const float p = expf(sc[j] - m_new);
      sc[j] = p;
      sum += p;
    }
    sum = block_sum(sum, red);  // its barriers also publish the sc[] writes above
    l = l * corr + sum;
    m = m_new;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
      float a = acc[i] * corr;
      for (int j = 0; j < len; ++j) a += sc[j] * vb[int64_t(start + j) * head_dim + i];
      acc[i] = a;
    }
    __syncthreads();  // sc[] is rewritten by the next tile
  }
  float* o = out + (int64_t(t) * n_heads + h) * head_dim;
  const float inv_l = 1.0f / l;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) o[i] = acc[i] * inv_l;
}

// grid: n_rows blocks, kThreads threads.
__global__ void argmax_kernel(const float* __restrict__ x, int width, int32_t* __restrict__ out) {
  __shared__ float best_v[kThreads];
  __shared__ int best_i[kThreads];
  const float* row = x + int64_t(blockIdx.x) * width;
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const float v = row[i];
    if (v > bv || (v == bv && i < bi)) {
      bv = v;
      bi = i;
    }
  }
  best_v[threadIdx.x] = bv;
  best_i[threadIdx.x] = bi;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const float ov = best_v[threadIdx.x + stride];
      const int oi = best_i[threadIdx.x + stride];
      if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = best_i[0] == INT_MAX ? 0 : best_i[0];
}

void check_arg(bool ok, const char* op, const std::string& what) {
  if (!ok) fail(std::string("cuda::") + op + ": " + what);
}

}  // namespace

// ---- device checks and memory ------------------------------------------------------------

bool kernels_runnable(std::string* why) {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, fill_kernel);
  if (e == cudaSuccess) return true;
  (void)cudaGetLastError();
  if (why) {
    int dev = 0;
    cudaDeviceProp prop{};
    std::string arch = "?";
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
      arch = "sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + " (" + prop.name +
             ")";
    (void)cudaGetLastError();
    *why = "the CUDA kernels of this build cannot run on device " + arch + ": " +
           cudaGetErrorString(e) +
           " (rebuild with -DCMAKE_CUDA_ARCHITECTURES=native or the device's architecture)";
  }
  return false;
}


void* device_alloc(size_t bytes, const char* what) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // an allocation failure is not sticky; clear it
    std::string msg = std::string("CUDA: cannot allocate ") + std::to_string(bytes) + " bytes (" +
                      std::to_string(bytes >> 20) + " MiB) for " + what + ": " +
                      cudaGetErrorString(e);
    if (e == cudaErrorMemoryAllocation)
      msg += "; " + memory_report() + "; " + kOomAdvice;
    fail(msg);
  }
  return p;
}

void device_free(void* p) noexcept {
  if (p) (void)cudaFree(p);
}

void copy_to_device(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* host_dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaDeviceSynchronize());
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost));
}

void device_synchronize() { CUDA_CHECK(cudaDeviceSynchronize()); }

BlasHandle blas_create(Stream stream) {
  cublasHandle_t h = nullptr;
  CUBLAS_CHECK(cublasCreate(&h));
  const cublasStatus_t st = cublasSetStream(h, stream);
  if (st != CUBLAS_STATUS_SUCCESS) {
    cublasDestroy(h);
    CUBLAS_CHECK(st);
  }
  return h;
}

void blas_destroy(BlasHandle handle) noexcept {
  if (handle) (void)cublasDestroy(handle);
}

// ---- launchers ------------------------------------------------------------------------------

void fill(float* x, int64_t n, float value, Stream stream) {
  if (n <= 0) return;
  fill_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(x, n, value);
  CUDA_CHECK_LAUNCH();
}

void to_bf16(const float* src, uint16_t* dst, int64_t n, Stream stream) {
  if (n <= 0) return;
  to_bf16_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(src, dst, n);
  CUDA_CHECK_LAUNCH();
}

void embedding(const float* table, const int32_t* ids, int n, int d, float* out, Stream stream) {
  if (n <= 0) return;
  check_arg(d > 0, "embedding", "d must be positive");
  embedding_kernel<<<n, kThreads, 0, stream>>>(table, ids, d, out);
  CUDA_CHECK_LAUNCH();
}

void add_positions(float* x, const float* table, const int32_t* pos, int offset, int n, int d,
                   Stream stream) {
  if (n <= 0) return;
  check_arg(d > 0 && offset >= 0, "add_positions", "bad d or offset");
  add_positions_kernel<<<n, kThreads, 0, stream>>>(x, table, pos, offset, d);
  CUDA_CHECK_LAUNCH();
}

void gather_rows(const float* x, const int32_t* rows, int n_rows, int d, float* out,
                 Stream stream) {
  if (n_rows <= 0) return;
  check_arg(d > 0, "gather_rows", "d must be positive");
  gather_rows_kernel<<<n_rows, kThreads, 0, stream>>>(x, rows, d, out);
  CUDA_CHECK_LAUNCH();
}

void rms_norm(const float* x, const float* w, int n, int d, float eps, float* out,
              Stream stream) {
  if (n <= 0) return;
  check_arg(d > 0, "rms_norm", "d must be positive");
  rms_norm_kernel<<<n, kThreads, 0, stream>>>(x, w, d, eps, out);
  CUDA_CHECK_LAUNCH();
}

void layer_norm(const float* x, const float* w, const float* b, int n, int d, float eps,
                float* out, Stream stream) {
  if (n <= 0) return;
  check_arg(d > 0, "layer_norm", "d must be positive");
  layer_norm_kernel<<<n, kThreads, 0, stream>>>(x, w, b, d, eps, out);
  CUDA_CHECK_LAUNCH();
}

void rope(float* x, int64_t row_stride, int n, int n_heads, int head_dim, int rope_dim,
          const int32_t* pos, const float* inv_freq, bool neox, Stream stream) {
  if (n <= 0) return;
  check_arg(n_heads > 0 && head_dim > 0 && rope_dim > 0 && rope_dim % 2 == 0 &&
                rope_dim <= head_dim && row_stride >= int64_t(n_heads) * head_dim,
            "rope", "bad shape (need 0 < rope_dim <= head_dim, rope_dim even, row_stride >= "
                    "n_heads * head_dim)");
  const int half = rope_dim / 2;
  const int64_t total = int64_t(n) * n_heads * half;
  rope_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(x, row_stride, n, n_heads,
                                                                  head_dim, half, pos, inv_freq,
                                                                  neox);
  CUDA_CHECK_LAUNCH();
}

void add_bias(float* y, const float* bias, int n, int width, Stream stream) {
  if (n <= 0 || width <= 0) return;
  const int64_t total = int64_t(n) * width;
  add_bias_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(y, bias, n, width);
  CUDA_CHECK_LAUNCH();
}

void swiglu(const float* gu, int n, int d_ff, float* out, Stream stream) {
  if (n <= 0 || d_ff <= 0) return;
  const int64_t total = int64_t(n) * d_ff;
  swiglu_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(gu, n, d_ff, out);
  CUDA_CHECK_LAUNCH();
}

void relu(float* x, int64_t n, Stream stream) {
  if (n <= 0) return;
  relu_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(x, n);
  CUDA_CHECK_LAUNCH();
}

void add(float* x, const float* y, int64_t n, Stream stream) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

void linear(BlasHandle handle, const uint16_t* w, const float* bias, const float* x,
            uint16_t* x_bf16, float* y, int m, int in, int out, Stream stream) {
  if (m <= 0) return;
  check_arg(in > 0 && out > 0, "linear", "empty weight");
  to_bf16(x, x_bf16, int64_t(m) * in, stream);
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  // Row-major y[m, out] = x[m, in] W[out, in]^T is, seen column-major, the [out, m] matrix
  // W^T(col-major [in, out], lda = in) transposed times x^T (col-major [in, m], ldb = in):
  // C[out, m] = op_T(A)[out, in] * B[in, m], ldc = out.
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, m, in, &alpha, w, CUDA_R_16BF,
                            in, x_bf16, CUDA_R_16BF, in, &beta, y, CUDA_R_32F, out,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (bias) add_bias(y, bias, m, out, stream);
}

void kv_append(const float* k, const float* v, int64_t row_stride, int n, int n_kv_heads,
               int head_dim, const int32_t* seq, const int32_t* pos, float* const* k_slots,
               float* const* v_slots, int layer, int capacity, Stream stream) {
  if (n <= 0) return;
  check_arg(n_kv_heads > 0 && head_dim > 0 && capacity > 0 && layer >= 0 &&
                row_stride >= int64_t(n_kv_heads) * head_dim,
            "kv_append", "bad shape");
  const int64_t total = int64_t(n) * n_kv_heads * head_dim;
  const int64_t layer_offset = int64_t(layer) * n_kv_heads * capacity * head_dim;
  kv_append_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(
      k, v, row_stride, n, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer_offset,
      capacity);
  CUDA_CHECK_LAUNCH();
}

void attention(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads,
               int head_dim, const int32_t* seq, const int32_t* pos,
               const float* const* k_slots, const float* const* v_slots, int layer,
               int capacity, float scale, int window, float* out, Stream stream) {
  if (n <= 0) return;
  check_arg(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention",
            "n_heads (" + std::to_string(n_heads) + ") must be a positive multiple of "
            "n_kv_heads (" + std::to_string(n_kv_heads) + ")");
  check_arg(head_dim > 0 && head_dim % 2 == 0 && head_dim <= kMaxHeadDim, "attention",
            "head_dim " + std::to_string(head_dim) + " is not supported by the CUDA backend "
            "(even, at most " + std::to_string(kMaxHeadDim) + ")");
  check_arg(q_stride >= int64_t(n_heads) * head_dim && capacity > 0 && layer >= 0 && window >= 0,
            "attention", "bad shape");
  const int64_t blocks = int64_t(n) * n_heads;
  check_arg(blocks <= INT_MAX, "attention", "too many (token, head) pairs in one call");
  const int64_t layer_offset = int64_t(layer) * n_kv_heads * capacity * head_dim;
  const size_t smem = sizeof(float) * (2 * size_t(head_dim) + kAttnTile + 33);
  attention_kernel<<<static_cast<unsigned>(blocks), kAttnThreads, smem, stream>>>(
      q, q_stride, n_heads, n_heads / n_kv_heads, head_dim, seq, pos, k_slots, v_slots,
      layer_offset, capacity, scale, window, out);
  CUDA_CHECK_LAUNCH();
}

void argmax(const float* x, int n_rows, int width, int32_t* out, Stream stream) {
  if (n_rows <= 0) return;
  check_arg(width > 0, "argmax", "width must be positive");
  argmax_kernel<<<n_rows, kThreads, 0, stream>>>(x, width, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hybridgen::cuda
