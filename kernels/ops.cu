// The CUDA backend's kernels and their host launchers (declared in ops_api.h). Every kernel is a
// plain, bounds-checked, float32 kernel: correctness first (the CPU ops in src/cpu/ops.cpp are
// the reference, and tests/unit/cuda_ops_test.cpp compares each kernel with them).
#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "ops.cuh"

namespace hybridgen::cuda {

namespace {

constexpr int kThreads = 256;      // element-wise kernels and row kernels
constexpr int kAttnThreads = 128;  // attention: 4 warps per (token, head)
constexpr int kAttnTile = 256;     // attention: positions scored per step of the online softmax
// Split-KV attention (at most kSplitMaxTokens query tokens per call: decode).
constexpr int kSplitMaxTokens = 64;
constexpr int kSplitThreads = 128;
constexpr int kSplitTile = 64;            // positions per online-softmax step
constexpr int kSplitMaxG = 8;             // query heads of one KV head per block
constexpr int kSplitMaxSplits = 64;       // chunks per (token, head)
constexpr int kSplitTargetBlocks = 1024;  // ~8 blocks per SM on an H100/H200
// Query-tiled attention (more tokens: prefill), head_dim 64 and 128.
constexpr int kTileQ = 64;
constexpr int kTileThreads = 256;

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
// The KV cache holds float32 or bf16 (uint16_t bits); the kernels are templates on the element
// type T and read every element through kv_load (bf16 widens exactly to float32), so the
// arithmetic (scores, softmax, accumulation) is float32 for both.

__device__ __forceinline__ float kv_load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float kv_load(const uint16_t* p, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(p[i]) << 16);
}
__device__ __forceinline__ void kv_store(float* p, int64_t i, float x) { p[i] = x; }
// Round to nearest even, as hybridgen::f32_to_bf16 (NaN kept quiet).
__device__ __forceinline__ void kv_store(uint16_t* p, int64_t i, float x) {
  const uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p[i] = static_cast<uint16_t>((u >> 16) | 0x40);
    return;
  }
  p[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// One thread per copied element: total = n * n_kv_heads * head_dim.
template <class T>
__global__ void kv_append_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                 int64_t row_stride, int n, int n_kv_heads, int head_dim,
                                 const int32_t* __restrict__ seq, const int32_t* __restrict__ pos,
                                 T* const* __restrict__ k_slots, T* const* __restrict__ v_slots,
                                 int64_t layer_offset, int capacity) {
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
    kv_store(k_slots[s], dst, k[src]);
    kv_store(v_slots[s], dst, v[src]);
  }
}

// grid: n * n_heads blocks (block b: token b / n_heads, head b % n_heads); kAttnThreads threads;
// dynamic shared memory: (2 * head_dim + kAttnTile + 33) floats.
// The attended positions are visited in tiles of kAttnTile: each warp scores positions of the
// tile (lanes split head_dim, then a warp sum), the block takes the tile's max, rescales the
// running sum and accumulator (online softmax, all float32), and each thread accumulates
// p * V for the head dimensions it owns (i = threadIdx.x + k * blockDim.x).
template <class T>
__global__ void attention_kernel(const float* __restrict__ q, int64_t q_stride, int n_heads,
                                 int group, int head_dim, const int32_t* __restrict__ seq,
                                 const int32_t* __restrict__ pos,
                                 const T* const* __restrict__ k_slots,
                                 const T* const* __restrict__ v_slots, int64_t layer_offset,
                                 int capacity, float scale, int window, float* __restrict__ out) {
  extern __shared__ float smem[];
  float* q_s = smem;            // [head_dim]
  float* acc = q_s + head_dim;  // [head_dim]
  float* sc = acc + head_dim;   // [kAttnTile]
  float* red = sc + kAttnTile;  // [33]

  const int t = blockIdx.x / n_heads;
  const int h = blockIdx.x % n_heads;
  const int kvh = h / group;
  const int hi = pos[t];
  const int lo = window > 0 ? max(0, hi - window + 1) : 0;
  const int64_t head_offset = layer_offset + int64_t(kvh) * capacity * head_dim;
  const T* kb = k_slots[seq[t]] + head_offset;  // [capacity, head_dim]
  const T* vb = v_slots[seq[t]] + head_offset;  // [capacity, head_dim]
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
      const T* kr = kb + int64_t(start + j) * head_dim;
      float dot = 0.f;
      for (int i = lane; i < head_dim; i += kWarp) dot += q_s[i] * kv_load(kr, i);
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
      for (int j = 0; j < len; ++j) a += sc[j] * kv_load(vb, int64_t(start + j) * head_dim + i);
      acc[i] = a;
    }
    __syncthreads();  // sc[] is rewritten by the next tile
  }
  float* o = out + (int64_t(t) * n_heads + h) * head_dim;
  const float inv_l = 1.0f / l;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) o[i] = acc[i] * inv_l;
}

// ---- split-KV attention (few query tokens: decode) -------------------------------------------
// Each (token, KV head, sub-group of up to kSplitMaxG query heads) is split over n_splits chunks
// of its attended positions; a block scores its chunk in tiles of kSplitTile positions with an
// online float32 softmax per query head and writes the unnormalised partial output and its
// (max, sum); attention_combine_kernel merges the chunks exactly as one softmax would.

// The chunk of split c: positions [*c_lo, *c_hi] of [lo, hi]; false if split c is empty.
// Chunks are whole numbers of kSplitTile-position tiles, spread evenly over the splits.
__device__ __forceinline__ bool split_range(int lo, int hi, int n_splits, int c, int* c_lo,
                                            int* c_hi) {
  const int len = hi - lo + 1;
  const int tiles = (len + kSplitTile - 1) / kSplitTile;
  const int per_split = (tiles + n_splits - 1) / n_splits;
  const int first = c * per_split;  // first tile of split c
  if (first >= tiles) return false;
  *c_lo = lo + first * kSplitTile;
  *c_hi = min(hi, *c_lo + per_split * kSplitTile - 1);
  return true;
}

// grid: x = n * n_kv_heads * n_sub (token-major), y = split (n_splits); kSplitThreads threads;
// dynamic shared memory: (gmax * head_dim + kSplitMaxG * (kSplitTile + 3)) floats, gmax =
// min(group, kSplitMaxG).
// work_o: [n * n_heads, n_splits, head_dim]; work_ml: [n * n_heads, n_splits, 2] (max, sum).
template <class T>
__global__ void __launch_bounds__(kSplitThreads)
    attention_split_kernel(const float* __restrict__ q, int64_t q_stride, int n_heads,
                           int n_kv_heads, int group, int head_dim, const int32_t* __restrict__ seq,
                           const int32_t* __restrict__ pos, const T* const* __restrict__ k_slots,
                           const T* const* __restrict__ v_slots, int64_t layer_offset, int capacity,
                           float scale, int window, int n_splits, float* __restrict__ work_o,
                           float* __restrict__ work_ml) {
  extern __shared__ float smem[];
  const int gmax = min(group, kSplitMaxG);
  float* q_s = smem;                          // [gmax, head_dim]
  float* sc = q_s + gmax * head_dim;          // [kSplitMaxG, kSplitTile] scores, then p
  float* m_s = sc + kSplitMaxG * kSplitTile;  // [kSplitMaxG] running max
  float* l_s = m_s + kSplitMaxG;              // [kSplitMaxG] running sum
  float* corr_s = l_s + kSplitMaxG;           // [kSplitMaxG] rescale of this tile

  const int n_sub = (group + kSplitMaxG - 1) / kSplitMaxG;
  const int split = blockIdx.y;
  int yi = blockIdx.x;
  const int sub = yi % n_sub;
  yi /= n_sub;
  const int kvh = yi % n_kv_heads;
  const int t = yi / n_kv_heads;
  const int h0 = kvh * group + sub * kSplitMaxG;  // first query head of this block
  const int gsz = min(kSplitMaxG, group - sub * kSplitMaxG);
  const int hi = pos[t];
  const int lo = window > 0 ? max(0, hi - window + 1) : 0;
  int c_lo = 0, c_hi = -1;
  if (!split_range(lo, hi, n_splits, split, &c_lo, &c_hi)) return;  // never read

  const int64_t head_offset = layer_offset + int64_t(kvh) * capacity * head_dim;
  const T* kb = k_slots[seq[t]] + head_offset;  // [capacity, head_dim]
  const T* vb = v_slots[seq[t]] + head_offset;  // [capacity, head_dim]
  const float* qt = q + int64_t(t) * q_stride + int64_t(h0) * head_dim;
  for (int i = threadIdx.x; i < gsz * head_dim; i += blockDim.x) q_s[i] = qt[i];
  if (threadIdx.x < kSplitMaxG) {
    m_s[threadIdx.x] = -INFINITY;
    l_s[threadIdx.x] = 0.f;
  }

  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  constexpr int kWarps = kSplitThreads / kWarp;
  constexpr int kRegs = kMaxHeadDim / kWarp;          // K elements per lane
  constexpr int kDims = kMaxHeadDim / kSplitThreads;  // output dimensions per thread
  constexpr int kRows = 4;                            // K rows in flight per warp
  float acc[kDims][kSplitMaxG];
#pragma unroll
  for (int r = 0; r < kDims; ++r)
#pragma unroll
    for (int g = 0; g < kSplitMaxG; ++g) acc[r][g] = 0.f;
  __syncthreads();

  for (int start = c_lo; start <= c_hi; start += kSplitTile) {
    const int len = min(kSplitTile, c_hi - start + 1);
    // Scores: warp w takes positions w, w + kWarps, ...; kRows rows loaded before use.
    for (int j0 = warp * kRows; j0 < len; j0 += kWarps * kRows) {
      float kr[kRows][kRegs];
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
        const int j = j0 + u;
        const T* row = kb + int64_t(start + j) * head_dim;
#pragma unroll
        for (int r = 0; r < kRegs; ++r) {
          const int i = lane + r * kWarp;
          kr[u][r] = (j < len && i < head_dim) ? kv_load(row, i) : 0.f;
        }
      }
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
        const int j = j0 + u;
#pragma unroll
        for (int g = 0; g < kSplitMaxG; ++g) {
          if (g < gsz) {
            float dot = 0.f;
#pragma unroll
            for (int r = 0; r < kRegs; ++r) {
              const int i = lane + r * kWarp;
              if (i < head_dim) dot += q_s[g * head_dim + i] * kr[u][r];
            }
            dot = warp_sum(dot);
            if (lane == 0 && j < len) sc[g * kSplitTile + j] = dot * scale;
          }
        }
      }
    }
    __syncthreads();
    // Online softmax: warp w updates query heads w, w + kWarps, ...
    for (int g = warp; g < gsz; g += kWarps) {
      float mx = -INFINITY;
      for (int j = lane; j < len; j += kWarp) mx = fmaxf(mx, sc[g * kSplitTile + j]);
      mx = warp_max(mx);
      const float m_old = m_s[g];
      const float m_new = fmaxf(m_old, mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      float sum = 0.f;
      for (int j = lane; j < len; j += kWarp) {
        const float p = expf(sc[g * kSplitTile + j] - m_use);
        sc[g * kSplitTile + j] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float corr = expf(m_old - m_use);  // 0 on the first tile (m_old = -inf)
        corr_s[g] = corr;
        l_s[g] = l_s[g] * corr + sum;
        m_s[g] = m_new;
      }
    }
    __syncthreads();
    // p V: thread owns dimensions threadIdx.x + r * kSplitThreads, for all gsz heads.
#pragma unroll
    for (int r = 0; r < kDims; ++r) {
      const int i = threadIdx.x + r * kSplitThreads;
      if (i < head_dim) {
#pragma unroll
        for (int g = 0; g < kSplitMaxG; ++g)
          if (g < gsz) acc[r][g] *= corr_s[g];
#pragma unroll 4
        for (int j = 0; j < len; ++j) {
          const float v = kv_load(vb, int64_t(start + j) * head_dim + i);
#pragma unroll
          for (int g = 0; g < kSplitMaxG; ++g)
            if (g < gsz) acc[r][g] += sc[g * kSplitTile + j] * v;
        }
      }
    }
    __syncthreads();  // sc[] and corr_s[] are rewritten by the next tile
  }

  const int64_t row0 = int64_t(t) * n_heads + h0;  // (token, head) row of head h0
#pragma unroll
  for (int r = 0; r < kDims; ++r) {
    const int i = threadIdx.x + r * kSplitThreads;
    if (i < head_dim) {
#pragma unroll
      for (int g = 0; g < kSplitMaxG; ++g)
        if (g < gsz) work_o[((row0 + g) * n_splits + split) * head_dim + i] = acc[r][g];
    }
  }
  if (threadIdx.x < gsz) {
    const int64_t at = ((row0 + threadIdx.x) * n_splits + split) * 2;
    work_ml[at] = m_s[threadIdx.x];
    work_ml[at + 1] = l_s[threadIdx.x];
  }
}

// grid: n * n_heads blocks (block b: token b / n_heads, head b % n_heads); kSplitThreads threads.
// Merges the non-empty splits: out = sum_c exp(m_c - M) o_c / sum_c exp(m_c - M) l_c.
__global__ void __launch_bounds__(kSplitThreads)
    attention_combine_kernel(int n_heads, int head_dim, const int32_t* __restrict__ pos, int window,
                             int n_splits, const float* __restrict__ work_o,
                             const float* __restrict__ work_ml, float* __restrict__ out) {
  const int64_t row = blockIdx.x;  // t * n_heads + h
  const int t = static_cast<int>(row / n_heads);
  const int hi = pos[t];
  const int lo = window > 0 ? max(0, hi - window + 1) : 0;
  int used = 0;  // splits 0 .. used-1 are non-empty (a prefix)
  for (int c = 0, a, b; c < n_splits && split_range(lo, hi, n_splits, c, &a, &b); ++c) used = c + 1;
  const float* ml = work_ml + row * n_splits * 2;
  float M = -INFINITY;
  for (int c = 0; c < used; ++c) M = fmaxf(M, ml[2 * c]);
  const float M_use = M == -INFINITY ? 0.f : M;
  float L = 0.f;
  for (int c = 0; c < used; ++c) L += expf(ml[2 * c] - M_use) * ml[2 * c + 1];
  const float inv_L = 1.0f / L;
  const float* o = work_o + row * n_splits * head_dim;
  for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float a = 0.f;
    for (int c = 0; c < used; ++c) a += expf(ml[2 * c] - M_use) * o[int64_t(c) * head_dim + i];
    out[row * head_dim + i] = a * inv_L;
  }
}

// ---- query-tiled attention (many query tokens: prefill) --------------------------------------
// grid: x = n_heads, y = ceil(n / kTileQ); kTileThreads threads; dynamic shared memory
// tile_smem_floats<HD>() floats. Block (h, y) handles tokens [y * kTileQ, ...) of head h. Its
// tokens are cut into runs of consecutive tokens of one sequence at consecutive positions
// (prefill: one run); for each run, K/V tiles of TileK<HD> positions stream through shared
// memory once for all the run's queries, with an online float32 softmax per query row.
// Thread (ty = tid / 16, tx = tid % 16) owns query rows ty + 16 a (a < 4), score columns
// tx + 16 b and output dimensions tx + 16 c; a row's 16 owners are lanes of one half-warp.
template <int HD>
struct TileK {
  static constexpr int value = HD >= 128 ? 32 : 64;
};

template <int HD>
constexpr int tile_smem_floats() {
  return kTileQ * (HD + 1) + TileK<HD>::value * (HD + 1) + TileK<HD>::value * HD +
         kTileQ * (TileK<HD>::value + 1);
}

template <int HD, class T>
__global__ void __launch_bounds__(kTileThreads, 2)
    attention_tiled_kernel(const float* __restrict__ q, int64_t q_stride, int n, int n_heads,
                           int group, const int32_t* __restrict__ seq,
                           const int32_t* __restrict__ pos, const T* const* __restrict__ k_slots,
                           const T* const* __restrict__ v_slots, int64_t layer_offset, int capacity,
                           float scale, int window, float* __restrict__ out) {
  constexpr int BK = TileK<HD>::value;
  constexpr int NB = BK / 16;                           // score columns per thread
  constexpr int NC = HD / 16;                           // output dimensions per thread
  constexpr int NA = kTileQ / 16;                       // query rows per thread
  constexpr int QS = HD + 1, KS = HD + 1, PS = BK + 1;  // padded row strides
  extern __shared__ float smem[];
  float* Qs = smem;              // [kTileQ, QS]
  float* Ks = Qs + kTileQ * QS;  // [BK, KS]
  float* Vs = Ks + BK * KS;      // [BK, HD]
  float* Ps = Vs + BK * HD;      // [kTileQ, PS]

  const int h = blockIdx.x;
  const int kvh = h / group;
  const int t0 = blockIdx.y * kTileQ;
  const int rows = min(kTileQ, n - t0);
  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;

  int rs = 0;
  while (rs < rows) {  // uniform over the block: every thread computes the same runs
    const int s0 = seq[t0 + rs];
    const int p0 = pos[t0 + rs];
    int re = rs + 1;
    while (re < rows && seq[t0 + re] == s0 && pos[t0 + re] == p0 + (re - rs)) ++re;
    // Run: block rows [rs, re), query positions p0 + (r - rs).
    const int k_lo = window > 0 ? max(0, p0 - window + 1) : 0;
    const int k_hi = p0 + (re - rs) - 1;
    const int64_t head_offset = layer_offset + int64_t(kvh) * capacity * HD;
    const T* kb = k_slots[s0] + head_offset;  // [capacity, HD]
    const T* vb = v_slots[s0] + head_offset;  // [capacity, HD]

    for (int idx = tid; idx < kTileQ * HD; idx += kTileThreads) {
      const int r = idx / HD, d = idx % HD;
      Qs[r * QS + d] =
          (r >= rs && r < re) ? q[int64_t(t0 + r) * q_stride + int64_t(h) * HD + d] : 0.f;
    }
    int qpos[NA];
    bool qvalid[NA];
    float m_run[NA], l_run[NA], o[NA][NC];
#pragma unroll
    for (int a = 0; a < NA; ++a) {
      const int r = ty + 16 * a;
      qvalid[a] = r >= rs && r < re;
      qpos[a] = p0 + (r - rs);
      m_run[a] = -INFINITY;
      l_run[a] = 0.f;
#pragma unroll
      for (int c = 0; c < NC; ++c) o[a][c] = 0.f;
    }

    for (int kt = k_lo; kt <= k_hi; kt += BK) {
      // K and V tile: positions kt .. kt + BK - 1 (zero past k_hi, never read from memory).
      for (int idx = tid; idx < BK * HD; idx += kTileThreads) {
        const int j = idx / HD, d = idx % HD;
        const int kp = kt + j;
        float kv = 0.f, vv = 0.f;
        if (kp <= k_hi) {
          kv = kv_load(kb, int64_t(kp) * HD + d);
          vv = kv_load(vb, int64_t(kp) * HD + d);
        }
        Ks[j * KS + d] = kv;
        Vs[j * HD + d] = vv;
      }
      __syncthreads();  // also publishes Qs on the first tile

      float s[NA][NB];
#pragma unroll
      for (int a = 0; a < NA; ++a)
#pragma unroll
        for (int b = 0; b < NB; ++b) s[a][b] = 0.f;
#pragma unroll 4
      for (int d = 0; d < HD; ++d) {
        float qa[NA], kv[NB];
#pragma unroll
        for (int a = 0; a < NA; ++a) qa[a] = Qs[(ty + 16 * a) * QS + d];
#pragma unroll
        for (int b = 0; b < NB; ++b) kv[b] = Ks[(tx + 16 * b) * KS + d];
#pragma unroll
        for (int a = 0; a < NA; ++a)
#pragma unroll
          for (int b = 0; b < NB; ++b) s[a][b] += qa[a] * kv[b];
      }

#pragma unroll
      for (int a = 0; a < NA; ++a) {
        float mx = -INFINITY;
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          const int kp = kt + tx + 16 * b;
          const bool ok = qvalid[a] && kp <= qpos[a] && (window <= 0 || kp > qpos[a] - window);
          s[a][b] = ok ? s[a][b] * scale : -INFINITY;
          mx = fmaxf(mx, s[a][b]);
        }
#pragma unroll
        for (int off = 8; off > 0; off >>= 1)
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));  // the row's 16 lanes
        const float m_new = fmaxf(m_run[a], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        const float corr = expf(m_run[a] - m_use);  // 0 while the row had nothing
        float sum = 0.f;
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          const float p = expf(s[a][b] - m_use);  // 0 where masked
          Ps[(ty + 16 * a) * PS + tx + 16 * b] = p;
          sum += p;
        }
#pragma unroll
        for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        l_run[a] = l_run[a] * corr + sum;
        m_run[a] = m_new;
#pragma unroll
        for (int c = 0; c < NC; ++c) o[a][c] *= corr;
      }
      __syncthreads();  // Ps complete

#pragma unroll 4
      for (int j = 0; j < BK; ++j) {
        float pa[NA], vc[NC];
#pragma unroll
        for (int a = 0; a < NA; ++a) pa[a] = Ps[(ty + 16 * a) * PS + j];
#pragma unroll
        for (int c = 0; c < NC; ++c) vc[c] = Vs[j * HD + tx + 16 * c];
#pragma unroll
        for (int a = 0; a < NA; ++a)
#pragma unroll
          for (int c = 0; c < NC; ++c) o[a][c] += pa[a] * vc[c];
      }
      __syncthreads();  // Ks, Vs, Ps (and Qs, after the last tile) are rewritten next
    }

#pragma unroll
    for (int a = 0; a < NA; ++a) {
      if (!qvalid[a]) continue;
      const float inv_l = 1.0f / l_run[a];
      float* orow = out + (int64_t(t0 + ty + 16 * a) * n_heads + h) * HD;
#pragma unroll
      for (int c = 0; c < NC; ++c) orow[tx + 16 * c] = o[a][c] * inv_l;
    }
    rs = re;
  }
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
      arch =
          "sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + " (" + prop.name + ")";
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
    if (e == cudaErrorMemoryAllocation) msg += "; " + memory_report() + "; " + kOomAdvice;
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

void rms_norm(const float* x, const float* w, int n, int d, float eps, float* out, Stream stream) {
  if (n <= 0) return;
  check_arg(d > 0, "rms_norm", "d must be positive");
  rms_norm_kernel<<<n, kThreads, 0, stream>>>(x, w, d, eps, out);
  CUDA_CHECK_LAUNCH();
}

void layer_norm(const float* x, const float* w, const float* b, int n, int d, float eps, float* out,
                Stream stream) {
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
            "rope",
            "bad shape (need 0 < rope_dim <= head_dim, rope_dim even, row_stride >= "
            "n_heads * head_dim)");
  const int half = rope_dim / 2;
  const int64_t total = int64_t(n) * n_heads * half;
  rope_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(
      x, row_stride, n, n_heads, head_dim, half, pos, inv_freq, neox);
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

namespace {
template <class T>
void kv_append_impl(const float* k, const float* v, int64_t row_stride, int n, int n_kv_heads,
                    int head_dim, const int32_t* seq, const int32_t* pos, T* const* k_slots,
                    T* const* v_slots, int layer, int capacity, Stream stream) {
  if (n <= 0) return;
  check_arg(n_kv_heads > 0 && head_dim > 0 && capacity > 0 && layer >= 0 &&
                row_stride >= int64_t(n_kv_heads) * head_dim,
            "kv_append", "bad shape");
  const int64_t total = int64_t(n) * n_kv_heads * head_dim;
  const int64_t layer_offset = int64_t(layer) * n_kv_heads * capacity * head_dim;
  kv_append_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
      k, v, row_stride, n, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer_offset,
      capacity);
  CUDA_CHECK_LAUNCH();
}
}  // namespace

void kv_append(const float* k, const float* v, int64_t row_stride, int n, int n_kv_heads,
               int head_dim, const int32_t* seq, const int32_t* pos, float* const* k_slots,
               float* const* v_slots, int layer, int capacity, Stream stream) {
  kv_append_impl(k, v, row_stride, n, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer,
                 capacity, stream);
}

void kv_append(const float* k, const float* v, int64_t row_stride, int n, int n_kv_heads,
               int head_dim, const int32_t* seq, const int32_t* pos, uint16_t* const* k_slots,
               uint16_t* const* v_slots, int layer, int capacity, Stream stream) {
  kv_append_impl(k, v, row_stride, n, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer,
                 capacity, stream);
}

namespace {

void check_attention_args(int64_t q_stride, int n_heads, int n_kv_heads, int head_dim, int layer,
                          int capacity, int window) {
  check_arg(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention",
            "n_heads (" + std::to_string(n_heads) +
                ") must be a positive multiple of "
                "n_kv_heads (" +
                std::to_string(n_kv_heads) + ")");
  check_arg(head_dim > 0 && head_dim % 2 == 0 && head_dim <= kMaxHeadDim, "attention",
            "head_dim " + std::to_string(head_dim) +
                " is not supported by the CUDA backend "
                "(even, at most " +
                std::to_string(kMaxHeadDim) + ")");
  check_arg(q_stride >= int64_t(n_heads) * head_dim && capacity > 0 && layer >= 0 && window >= 0,
            "attention", "bad shape");
}

// Splits per (token, head) of the split-KV path: enough blocks to fill the GPU, no more chunks
// than the cache has tiles.
int split_count(int n, int n_heads, int n_kv_heads, int capacity) {
  const int group = n_heads / n_kv_heads;
  const int64_t units =
      int64_t(n) * n_kv_heads * ((group + kSplitMaxG - 1) / kSplitMaxG);  // blocks per split
  int64_t splits = (kSplitTargetBlocks + units - 1) / units;
  splits = std::min<int64_t>(splits, kSplitMaxSplits);
  splits = std::min<int64_t>(splits, (int64_t(capacity) + kSplitTile - 1) / kSplitTile);
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

bool use_split(int n) { return n <= kSplitMaxTokens; }

// Workspace of the split-KV path: partial outputs then (max, sum) pairs, float32.
size_t split_workspace_bytes(int n, int n_heads, int head_dim, int splits) {
  return sizeof(float) * size_t(n) * n_heads * splits * (size_t(head_dim) + 2);
}

template <int HD, class T>
void launch_tiled(const float* q, int64_t q_stride, int n, int n_heads, int group,
                  const int32_t* seq, const int32_t* pos, const T* const* k_slots,
                  const T* const* v_slots, int64_t layer_offset, int capacity, float scale,
                  int window, float* out, Stream stream) {
  const size_t smem = sizeof(float) * size_t(tile_smem_floats<HD>());
  CUDA_CHECK(cudaFuncSetAttribute(attention_tiled_kernel<HD, T>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(n_heads), static_cast<unsigned>((n + kTileQ - 1) / kTileQ));
  attention_tiled_kernel<HD, T>
      <<<grid, kTileThreads, smem, stream>>>(q, q_stride, n, n_heads, group, seq, pos, k_slots,
                                             v_slots, layer_offset, capacity, scale, window, out);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void attention_impl(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads,
                    int head_dim, const int32_t* seq, const int32_t* pos, const T* const* k_slots,
                    const T* const* v_slots, int layer, int capacity, float scale, int window,
                    void* workspace, size_t workspace_bytes, float* out, Stream stream);

template <class T>
void attention_alloc(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads,
                     int head_dim, const int32_t* seq, const int32_t* pos, const T* const* k_slots,
                     const T* const* v_slots, int layer, int capacity, float scale, int window,
                     float* out, Stream stream);

}  // namespace

size_t attention_workspace_bytes(int n, int n_heads, int n_kv_heads, int head_dim, int capacity) {
  if (n <= 0 || !use_split(n) || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0 ||
      capacity <= 0)
    return 0;
  return split_workspace_bytes(n, n_heads, head_dim, split_count(n, n_heads, n_kv_heads, capacity));
}

void attention(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* seq, const int32_t* pos, const float* const* k_slots,
               const float* const* v_slots, int layer, int capacity, float scale, int window,
               void* workspace, size_t workspace_bytes, float* out, Stream stream) {
  attention_impl(q, q_stride, n, n_heads, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer,
                 capacity, scale, window, workspace, workspace_bytes, out, stream);
}

void attention(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* seq, const int32_t* pos, const uint16_t* const* k_slots,
               const uint16_t* const* v_slots, int layer, int capacity, float scale, int window,
               void* workspace, size_t workspace_bytes, float* out, Stream stream) {
  attention_impl(q, q_stride, n, n_heads, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer,
                 capacity, scale, window, workspace, workspace_bytes, out, stream);
}

void attention(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* seq, const int32_t* pos, const float* const* k_slots,
               const float* const* v_slots, int layer, int capacity, float scale, int window,
               float* out, Stream stream) {
  attention_alloc(q, q_stride, n, n_heads, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer,
                  capacity, scale, window, out, stream);
}

void attention(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* seq, const int32_t* pos, const uint16_t* const* k_slots,
               const uint16_t* const* v_slots, int layer, int capacity, float scale, int window,
               float* out, Stream stream) {
  attention_alloc(q, q_stride, n, n_heads, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer,
                  capacity, scale, window, out, stream);
}

namespace {

template <class T>
void attention_impl(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads,
                    int head_dim, const int32_t* seq, const int32_t* pos, const T* const* k_slots,
                    const T* const* v_slots, int layer, int capacity, float scale, int window,
                    void* workspace, size_t workspace_bytes, float* out, Stream stream) {
  if (n <= 0) return;
  check_attention_args(q_stride, n_heads, n_kv_heads, head_dim, layer, capacity, window);
  const int64_t layer_offset = int64_t(layer) * n_kv_heads * capacity * head_dim;
  const int group = n_heads / n_kv_heads;

  if (use_split(n)) {
    const int splits = split_count(n, n_heads, n_kv_heads, capacity);
    const size_t need = split_workspace_bytes(n, n_heads, head_dim, splits);
    check_arg(workspace != nullptr && workspace_bytes >= need, "attention",
              "workspace too small (" + std::to_string(workspace_bytes) + " bytes, need " +
                  std::to_string(need) + ")");
    float* work_o = static_cast<float*>(workspace);  // [n * n_heads, splits, head_dim]
    float* work_ml = work_o + size_t(n) * n_heads * splits * head_dim;  // [.., splits, 2]
    const int n_sub = (group + kSplitMaxG - 1) / kSplitMaxG;
    const int gmax = std::min(group, kSplitMaxG);
    const size_t smem = sizeof(float) * (size_t(gmax) * head_dim + kSplitMaxG * (kSplitTile + 3));
    const dim3 grid(static_cast<unsigned>(n * n_kv_heads * n_sub), static_cast<unsigned>(splits));
    attention_split_kernel<T><<<grid, kSplitThreads, smem, stream>>>(
        q, q_stride, n_heads, n_kv_heads, group, head_dim, seq, pos, k_slots, v_slots, layer_offset,
        capacity, scale, window, splits, work_o, work_ml);
    CUDA_CHECK_LAUNCH();
    attention_combine_kernel<<<static_cast<unsigned>(n * n_heads), kSplitThreads, 0, stream>>>(
        n_heads, head_dim, pos, window, splits, work_o, work_ml, out);
    CUDA_CHECK_LAUNCH();
    return;
  }
  check_arg((int64_t(n) + kTileQ - 1) / kTileQ <= 65535, "attention",
            "too many tokens in one call");
  if (head_dim == 128) {
    launch_tiled<128>(q, q_stride, n, n_heads, group, seq, pos, k_slots, v_slots, layer_offset,
                      capacity, scale, window, out, stream);
    return;
  }
  if (head_dim == 64) {
    launch_tiled<64>(q, q_stride, n, n_heads, group, seq, pos, k_slots, v_slots, layer_offset,
                     capacity, scale, window, out, stream);
    return;
  }
  // Other head sizes (the tiny test models): one block per (token, head).
  const int64_t blocks = int64_t(n) * n_heads;
  check_arg(blocks <= INT_MAX, "attention", "too many (token, head) pairs in one call");
  const size_t smem = sizeof(float) * (2 * size_t(head_dim) + kAttnTile + 33);
  attention_kernel<T><<<static_cast<unsigned>(blocks), kAttnThreads, smem, stream>>>(
      q, q_stride, n_heads, group, head_dim, seq, pos, k_slots, v_slots, layer_offset, capacity,
      scale, window, out);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void attention_alloc(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads,
                     int head_dim, const int32_t* seq, const int32_t* pos, const T* const* k_slots,
                     const T* const* v_slots, int layer, int capacity, float scale, int window,
                     float* out, Stream stream) {
  if (n <= 0) return;
  check_attention_args(q_stride, n_heads, n_kv_heads, head_dim, layer, capacity, window);
  const size_t bytes = attention_workspace_bytes(n, n_heads, n_kv_heads, head_dim, capacity);
  void* work = nullptr;
  if (bytes > 0) CUDA_CHECK(cudaMallocAsync(&work, bytes, stream));
  try {
    attention_impl(q, q_stride, n, n_heads, n_kv_heads, head_dim, seq, pos, k_slots, v_slots, layer,
                   capacity, scale, window, work, bytes, out, stream);
  } catch (...) {
    if (work) (void)cudaFreeAsync(work, stream);
    throw;
  }
  if (work) CUDA_CHECK(cudaFreeAsync(work, stream));
}

}  // namespace

void argmax(const float* x, int n_rows, int width, int32_t* out, Stream stream) {
  if (n_rows <= 0) return;
  check_arg(width > 0, "argmax", "width must be positive");
  argmax_kernel<<<n_rows, kThreads, 0, stream>>>(x, width, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hybridgen::cuda
