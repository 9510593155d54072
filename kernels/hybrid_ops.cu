// Kernels of the CUDA device stage (kernels/hybrid_ops.h): window writes, the decode merge,
// exact attention over both tiers. Float32 math; K/V of the window and the offloaded tokens are
// bf16. STATUS: compiled in CI; written in a session without a GPU, so not yet run
// (tests/unit/cuda_device_stage_test.cpp checks it against the CPU device stage on a GPU).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "hybrid_ops.h"
#include "ops.cuh"

namespace hybridgen::cuda {

namespace {

constexpr int kThreads = 128;  // per block: 4 warps
constexpr int kMaxHeadDim = kHybridMaxHeadDim;

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t b) {
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}

// Round to nearest even, as hybridgen::f32_to_bf16 (NaN kept quiet).
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ __forceinline__ float block_max(float v, float* red) {
  const int lane = threadIdx.x % kWarp, wid = threadIdx.x / kWarp;
  const int n_warps = blockDim.x / kWarp;
  v = cuda::warp_max(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float s = lane < n_warps ? red[lane] : -INFINITY;
    s = cuda::warp_max(s);
    if (lane == 0) red[32] = s;
  }
  __syncthreads();
  return red[32];
}

// Warp-cooperative dot of a float query (shared) with one key row.
__device__ __forceinline__ float warp_dot_bf16(const float* q, const uint16_t* k, int hd) {
  float s = 0.f;
  for (int i = threadIdx.x % kWarp; i < hd; i += kWarp) s += q[i] * bf16_bits_to_f32(k[i]);
  return warp_sum(s);
}
__device__ __forceinline__ float warp_dot_f32(const float* q, const float* k, int hd) {
  float s = 0.f;
  for (int i = threadIdx.x % kWarp; i < hd; i += kWarp) s += q[i] * k[i];
  return warp_sum(s);
}

// Window writes: n tokens' float32 K/V ([n, n_kv_heads, head_dim]) into ring slots
// [slot, slot + n) of [n_kv_heads, cap, head_dim] bf16.
__global__ void window_write_kernel(const float* __restrict__ k, const float* __restrict__ v, int n,
                                    int n_kv_heads, int hd, int cap, int slot,
                                    uint16_t* __restrict__ wk, uint16_t* __restrict__ wv) {
  const int64_t total = int64_t(n) * n_kv_heads * hd;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(e % hd);
    const int h = int((e / hd) % n_kv_heads);
    const int t = int(e / (int64_t(hd) * n_kv_heads));
    const int64_t dst = (int64_t(h) * cap + slot + t) * hd + d;
    wk[dst] = f32_to_bf16_bits(k[e]);
    wv[dst] = f32_to_bf16_bits(v[e]);
  }
}

// grid (n_heads, n_rows), kThreads threads. Logits of the CPU part (given, or from its staged K
// rows with q: exact-selected), the window (ring,
// slot (first_slot + i) % cap for window-local i) and the new token; window positions older than
// the sliding window (n_off + i < lo_pos) masked; softmax; values. Leaves the probabilities in
// scores as [CPU part k | window nw (window-local order) | new token].
__global__ void __launch_bounds__(kThreads)
    decode_merge_kernel(const RowDesc* __restrict__ rows, int group, int hd, float scale) {
  const RowDesc r = rows[blockIdx.y];
  const int qh = blockIdx.x, h = qh / group;
  __shared__ float q[kMaxHeadDim];
  __shared__ float red[33];
  for (int i = threadIdx.x; i < hd; i += blockDim.x) q[i] = r.q[int64_t(qh) * hd + i];
  __syncthreads();
  const int total = r.k + r.nw + 1;
  float* sc = r.scores + int64_t(qh) * r.score_stride;
  const int warp = threadIdx.x / kWarp, n_warps = blockDim.x / kWarp;
  if (r.cpu_keys) {  // exact-selected: the kept tokens' logits with this row's (true) query
    for (int j = warp; j < r.k; j += n_warps) {
      const float s = warp_dot_bf16(q, r.cpu_keys + (int64_t(h) * r.k + j) * hd, hd) * scale;
      if (threadIdx.x % kWarp == 0) sc[j] = s;
    }
  } else {
    for (int j = threadIdx.x; j < r.k; j += blockDim.x) sc[j] = r.cpu_logits[int64_t(qh) * r.k + j];
  }
  for (int i = warp; i < r.nw; i += n_warps) {
    const int slot = (r.first_slot + i) % r.cap;
    const float s = warp_dot_bf16(q, r.wk + (int64_t(h) * r.cap + slot) * hd, hd) * scale;
    if (threadIdx.x % kWarp == 0) sc[r.k + i] = r.n_off + i < r.lo_pos ? -INFINITY : s;
  }
  if (warp == n_warps - 1) {
    const float s = warp_dot_f32(q, r.k_new + int64_t(h) * hd, hd) * scale;
    if (threadIdx.x % kWarp == 0) sc[total - 1] = s;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int j = threadIdx.x; j < total; j += blockDim.x) m = fmaxf(m, sc[j]);
  m = block_max(m, red);
  float l = 0.f;
  for (int j = threadIdx.x; j < total; j += blockDim.x) {
    const float e = __expf(sc[j] - m);
    sc[j] = e;
    l += e;
  }
  l = block_sum(l, red);  // synchronizes: every sc[j] written
  const float inv = 1.f / l;
  for (int j = threadIdx.x; j < total; j += blockDim.x) sc[j] *= inv;
  __syncthreads();
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    const uint16_t* vs = r.cpu_values + int64_t(h) * r.k * hd + d;
    for (int j = 0; j < r.k; ++j) o += sc[j] * bf16_bits_to_f32(vs[int64_t(j) * hd]);
    for (int i = 0; i < r.nw; ++i) {
      const int slot = (r.first_slot + i) % r.cap;
      o += sc[r.k + i] * bf16_bits_to_f32(r.wv[(int64_t(h) * r.cap + slot) * hd + d]);
    }
    o += sc[total - 1] * r.v_new[int64_t(h) * hd + d];
    r.out[int64_t(qh) * hd + d] = o;
  }
}

// grid (n_heads, n_tokens): token t (sequence seq_index[t], position pos[t]) attends to
// [lo, pos]; offloaded positions from ok/ov, window positions from the ring.
__global__ void __launch_bounds__(kThreads)
    exact_kernel(const SeqDesc* __restrict__ seqs, const int32_t* __restrict__ seq_index,
                 const int32_t* __restrict__ pos, const float* __restrict__ q_all,
                 float* __restrict__ out_all, float* __restrict__ scores, int64_t score_stride,
                 int n_heads, int group, int hd, float scale, int sliding_window) {
  const int t = blockIdx.y, qh = blockIdx.x, h = qh / group;
  const SeqDesc s = seqs[seq_index[t]];
  const int p = pos[t];
  const int lo = sliding_window > 0 ? max(0, p - sliding_window + 1) : 0;
  const int n = p - lo + 1;
  __shared__ float q[kMaxHeadDim];
  __shared__ float red[33];
  const float* qv = q_all + (int64_t(t) * n_heads + qh) * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) q[i] = qv[i];
  __syncthreads();
  float* sc = scores + (int64_t(t) * n_heads + qh) * score_stride;
  const int warp = threadIdx.x / kWarp, n_warps = blockDim.x / kWarp;
  for (int j = lo + warp; j <= p; j += n_warps) {
    const uint16_t* kr =
        j < s.n_off ? s.ok + (int64_t(h) * s.n_off + j) * hd
                    : s.wk + (int64_t(h) * s.cap + (s.first_slot + j - s.n_off) % s.cap) * hd;
    const float v = warp_dot_bf16(q, kr, hd) * scale;
    if (threadIdx.x % kWarp == 0) sc[j - lo] = v;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, sc[j]);
  m = block_max(m, red);
  float l = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float e = __expf(sc[j] - m);
    sc[j] = e;
    l += e;
  }
  l = block_sum(l, red);
  const float inv = 1.f / l;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    sc[j] *= inv;
    if (s.heavy) atomicAdd(s.heavy + int64_t(h) * s.len + lo + j, sc[j]);
  }
  if (!out_all) return;  // scores and H2O mass only (the output comes from full's kernels)
  __syncthreads();
  float* o = out_all + (int64_t(t) * n_heads + qh) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int j = lo; j <= p; ++j) {
      const uint16_t* vr =
          j < s.n_off ? s.ov + (int64_t(h) * s.n_off + j) * hd
                      : s.wv + (int64_t(h) * s.cap + (s.first_slot + j - s.n_off) % s.cap) * hd;
      acc += sc[j - lo] * bf16_bits_to_f32(vr[d]);
    }
    o[d] = acc;
  }
}

// grid (n_heads, n_rows, chunks): chunk blockIdx.z of row blockIdx.y, query head blockIdx.x.
// Position j of the row's [CPU part k | window nw | new token]: its score (the CPU part's logit,
// the ring's key or the new key against q) goes to scores; the block's max, sum of exponentials
// and unnormalised output over its positions go to partials [n_rows, n_heads, chunks, hd + 2].
__global__ void __launch_bounds__(kThreads)
    merge_chunk_kernel(const RowDesc* __restrict__ rows, int group, int hd, float scale, int chunks,
                       float* __restrict__ partials) {
  const RowDesc r = rows[blockIdx.y];
  const int qh = blockIdx.x, h = qh / group, c = blockIdx.z;
  const int total = r.k + r.nw + 1;
  const int begin = c * kMergeChunk, end = min(total, begin + kMergeChunk);
  float* part = partials + ((int64_t(blockIdx.y) * gridDim.x + qh) * chunks + c) * (hd + 2);
  if (begin >= total) return;  // the combine reads only the row's own chunks
  __shared__ float q[kMaxHeadDim];
  __shared__ float e[kMergeChunk];
  __shared__ float red[33];
  for (int i = threadIdx.x; i < hd; i += blockDim.x) q[i] = r.q[int64_t(qh) * hd + i];
  __syncthreads();
  float* sc = r.scores + int64_t(qh) * r.score_stride;
  const int warp = threadIdx.x / kWarp, n_warps = blockDim.x / kWarp;
  for (int j = begin + warp; j < end; j += n_warps) {
    float s;
    if (j < r.k) {
      s = r.cpu_logits[int64_t(qh) * r.k + j];
    } else if (j < r.k + r.nw) {
      const int i = j - r.k, slot = (r.first_slot + i) % r.cap;
      s = warp_dot_bf16(q, r.wk + (int64_t(h) * r.cap + slot) * hd, hd) * scale;
      if (r.n_off + i < r.lo_pos) s = -INFINITY;
    } else {
      s = warp_dot_f32(q, r.k_new + int64_t(h) * hd, hd) * scale;
    }
    if (threadIdx.x % kWarp == 0) {
      sc[j] = s;
      e[j - begin] = s;
    }
  }
  __syncthreads();
  float m = -INFINITY;
  for (int j = threadIdx.x; j < end - begin; j += blockDim.x) m = fmaxf(m, e[j]);
  m = block_max(m, red);
  float l = 0.f;
  for (int j = threadIdx.x; j < end - begin; j += blockDim.x) {
    const float x = m == -INFINITY ? 0.f : __expf(e[j] - m);
    e[j] = x;
    l += x;
  }
  l = block_sum(l, red);  // synchronizes: every e[j] written
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    for (int j = begin; j < end; ++j) {
      float v;
      if (j < r.k)
        v = bf16_bits_to_f32(r.cpu_values[(int64_t(h) * r.k + j) * hd + d]);
      else if (j < r.k + r.nw)
        v = bf16_bits_to_f32(
            r.wv[(int64_t(h) * r.cap + (r.first_slot + j - r.k) % r.cap) * hd + d]);
      else
        v = r.v_new[int64_t(h) * hd + d];
      o += e[j - begin] * v;
    }
    part[d] = o;
  }
  if (threadIdx.x == 0) {
    part[hd] = m;
    part[hd + 1] = l;
  }
}

// grid (n_heads, n_rows): the log-sum-exp combine of the row's chunks; probabilities on request.
__global__ void __launch_bounds__(kThreads)
    merge_combine_kernel(const RowDesc* __restrict__ rows, int hd, int chunks,
                         const float* __restrict__ partials, bool write_probs) {
  const RowDesc r = rows[blockIdx.y];
  const int qh = blockIdx.x;
  const int total = r.k + r.nw + 1;
  const int n_chunks = (total + kMergeChunk - 1) / kMergeChunk;
  const float* part = partials + (int64_t(blockIdx.y) * gridDim.x + qh) * chunks * (hd + 2);
  float M = -INFINITY;
  for (int c = 0; c < n_chunks; ++c) M = fmaxf(M, part[c * (hd + 2) + hd]);
  float L = 0.f;
  for (int c = 0; c < n_chunks; ++c) {
    const float mc = part[c * (hd + 2) + hd];
    if (mc != -INFINITY) L += part[c * (hd + 2) + hd + 1] * __expf(mc - M);
  }
  const float inv = 1.f / L;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    for (int c = 0; c < n_chunks; ++c) {
      const float mc = part[c * (hd + 2) + hd];
      if (mc != -INFINITY) o += part[c * (hd + 2) + d] * __expf(mc - M);
    }
    r.out[int64_t(qh) * hd + d] = o * inv;
  }
  if (write_probs) {
    float* sc = r.scores + int64_t(qh) * r.score_stride;
    for (int j = threadIdx.x; j < total; j += blockDim.x) sc[j] = __expf(sc[j] - M) * inv;
  }
}

// grid (blocks, n_seqs): sequence blockIdx.y's positions [0, len) of every KV head.
__global__ void tiers_to_f32_kernel(const SeqDesc* __restrict__ seqs, int n_kv_heads, int hd,
                                    int capacity, int64_t seq_stride, float* __restrict__ k_dst,
                                    float* __restrict__ v_dst) {
  const SeqDesc sd = seqs[blockIdx.y];
  const int64_t total = int64_t(n_kv_heads) * sd.len * hd;
  float* kd = k_dst + int64_t(blockIdx.y) * seq_stride;
  float* vd = v_dst + int64_t(blockIdx.y) * seq_stride;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(e % hd);
    const int p = int((e / hd) % sd.len);
    const int h = int(e / (int64_t(hd) * sd.len));
    int64_t src;
    const uint16_t *ks, *vs;
    if (p < sd.n_off) {
      src = (int64_t(h) * sd.n_off + p) * hd + d;
      ks = sd.ok;
      vs = sd.ov;
    } else {
      const int slot = (sd.first_slot + p - sd.n_off) % sd.cap;
      src = (int64_t(h) * sd.cap + slot) * hd + d;
      ks = sd.wk;
      vs = sd.wv;
    }
    const int64_t dst = (int64_t(h) * capacity + p) * hd + d;
    kd[dst] = bf16_bits_to_f32(ks[src]);
    vd[dst] = bf16_bits_to_f32(vs[src]);
  }
}

}  // namespace

void tiers_to_f32(const SeqDesc* seqs, int n_seqs, int max_len, int n_kv_heads, int hd,
                  int capacity, int64_t seq_stride, float* k_dst, float* v_dst, Stream stream) {
  if (n_seqs <= 0 || max_len <= 0) return;
  const int64_t per_seq = int64_t(n_kv_heads) * max_len * hd;
  const int blocks = int(std::min<int64_t>((per_seq + 255) / 256, 4096));
  tiers_to_f32_kernel<<<dim3(blocks, n_seqs), 256, 0, stream>>>(seqs, n_kv_heads, hd, capacity,
                                                                seq_stride, k_dst, v_dst);
  CUDA_CHECK_LAUNCH();
}

void window_write(const float* k, const float* v, int n, int n_kv_heads, int hd, int cap, int slot,
                  uint16_t* wk, uint16_t* wv, Stream stream) {
  const int64_t total = int64_t(n) * n_kv_heads * hd;
  if (total == 0) return;
  const int blocks = int(std::min<int64_t>((total + 255) / 256, 4096));
  window_write_kernel<<<blocks, 256, 0, stream>>>(k, v, n, n_kv_heads, hd, cap, slot, wk, wv);
  CUDA_CHECK_LAUNCH();
}

void decode_merge(const RowDesc* rows, int n_rows, int n_heads, int group, int hd, float scale,
                  Stream stream) {
  if (n_rows == 0) return;
  decode_merge_kernel<<<dim3(n_heads, n_rows), kThreads, 0, stream>>>(rows, group, hd, scale);
  CUDA_CHECK_LAUNCH();
}

size_t merge_partials_floats(int n_rows, int n_heads, int hd, int max_total) {
  const int chunks = (std::max(max_total, 1) + kMergeChunk - 1) / kMergeChunk;
  return size_t(n_rows) * n_heads * chunks * (hd + 2);
}

void decode_merge_split(const RowDesc* rows, int n_rows, int n_heads, int group, int hd,
                        float scale, int max_total, float* partials, bool write_probs,
                        Stream stream) {
  if (n_rows == 0) return;
  const int chunks = (std::max(max_total, 1) + kMergeChunk - 1) / kMergeChunk;
  merge_chunk_kernel<<<dim3(n_heads, n_rows, chunks), kThreads, 0, stream>>>(rows, group, hd, scale,
                                                                             chunks, partials);
  CUDA_CHECK_LAUNCH();
  merge_combine_kernel<<<dim3(n_heads, n_rows), kThreads, 0, stream>>>(rows, hd, chunks, partials,
                                                                       write_probs);
  CUDA_CHECK_LAUNCH();
}

void exact_attention_tiers(const SeqDesc* seqs, const int32_t* seq_index, const int32_t* pos,
                           const float* q, float* out, float* scores, int64_t score_stride,
                           int n_tokens, int n_heads, int group, int hd, float scale,
                           int sliding_window, Stream stream) {
  if (n_tokens == 0) return;
  exact_kernel<<<dim3(n_heads, n_tokens), kThreads, 0, stream>>>(seqs, seq_index, pos, q, out,
                                                                 scores, score_stride, n_heads,
                                                                 group, hd, scale, sliding_window);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hybridgen::cuda
