// The CUDA backend's ops as plain C++ host functions: no CUDA header is needed to call them, so
// the unit tests (which do not have kernels/ or the CUDA headers on their include path) use them
// directly. Implemented in kernels/ops.cu when the library is built with CUDA; in a build
// without CUDA, src/runtime/cuda_ops_stub.cpp defines them all to throw hybridgen::Error (callers
// check hybridgen::cuda_available() first).
//
// Conventions
//  - Every pointer argument is DEVICE memory unless it says "host". Shapes are row-major and
//    given in the comment of each argument: `// [n, n_heads, head_dim]`.
//  - Activations are float32 everywhere (the residual stream, norms, RoPE, attention, FFN).
//    GEMM inputs are rounded to bf16 inside linear() (as cpu::Linear does for bf16 weights);
//    weights are bf16, accumulation and outputs float32.
//  - The KV cache is float32 or bf16 (uint16_t bits; the CUDA backend's full path) in device
//    memory, one buffer per sequence slot laid out
//    [n_layers][n_kv_heads, capacity, head_dim] (the same layout as kv::KvCacheManager's host
//    store), addressed through a device array of slot base pointers.
//  - Launchers are asynchronous on `stream` (nullptr: the legacy default stream) and throw
//    hybridgen::Error if the launch fails; faults inside kernels surface at the next
//    synchronizing call (device_synchronize(), a copy to the host, cudaStreamSynchronize).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

struct CUstream_st;    // cudaStream_t is CUstream_st*
struct cublasContext;  // cublasHandle_t is cublasContext*

namespace hybridgen::cuda {

using Stream = CUstream_st*;
using BlasHandle = cublasContext*;

// True when the current device can run this build's kernels (its architecture is among the
// ones compiled, CMAKE_CUDA_ARCHITECTURES); else false with the reason in *why.
bool kernels_runnable(std::string* why);

// ---- device memory and synchronisation ------------------------------------------------------
// cudaMalloc of `bytes`; on failure throws naming `what`, the bytes asked for, the device's
// free/total memory and the flags that lower the need (-c, -b).
void* device_alloc(size_t bytes, const char* what);
void device_free(void* p) noexcept;  // nullptr is fine
// Synchronous copies (the whole device is synchronised first for copies to the host).
void copy_to_device(void* dst, const void* host_src, size_t bytes);
void copy_to_host(void* host_dst, const void* src, size_t bytes);
void device_synchronize();  // cudaDeviceSynchronize, checked

// cuBLAS handle whose work goes on `stream`. One per backend object (no globals).
BlasHandle blas_create(Stream stream);
void blas_destroy(BlasHandle handle) noexcept;

// ---- element-wise and row ops ---------------------------------------------------------------
// x[i] = value for i < n.
void fill(float* x, int64_t n, float value, Stream stream);  // x: [n]
// dst[i] = bf16(src[i]), round to nearest even (bit-identical to hybridgen::f32_to_bf16).
void to_bf16(const float* src,  // [n]
             uint16_t* dst,     // [n] bf16 bits
             int64_t n, Stream stream);

// out[t, :] = table[ids[t], :]. PRECOND: 0 <= ids[t] < vocab (checked on the host by callers).
void embedding(const float* table,  // [vocab, d]
               const int32_t* ids,  // [n]
               int n, int d,
               float* out,  // [n, d]
               Stream stream);
// Learned positions (OPT): x[t, :] += table[pos[t] + offset, :].
void add_positions(float* x,            // [n, d]
                   const float* table,  // [max_positions + offset, d]
                   const int32_t* pos,  // [n]
                   int offset, int n, int d, Stream stream);
// out[r, :] = x[rows[r], :] (the rows that want logits).
void gather_rows(const float* x,       // [n, d]
                 const int32_t* rows,  // [n_rows]
                 int n_rows, int d,
                 float* out,  // [n_rows, d]
                 Stream stream);

// RMSNorm: out = x / sqrt(mean(x^2) + eps) * w; float32 math. out may alias x.
void rms_norm(const float* x,  // [n, d]
              const float* w,  // [d]
              int n, int d, float eps,
              float* out,  // [n, d]
              Stream stream);
// LayerNorm: out = (x - mean) / sqrt(var + eps) * w + b (two-pass mean/variance, as the CPU).
void layer_norm(const float* x,  // [n, d]
                const float* w,  // [d]
                const float* b,  // [d]
                int n, int d, float eps,
                float* out,  // [n, d]
                Stream stream);

// Rotary embedding in place. Token t's head h starts at x + t * row_stride + h * head_dim, so
// x may be the Q or K part of the fused QKV buffer (row_stride = its row width) or a plain
// [n, n_heads, head_dim] array (row_stride = n_heads * head_dim).
// neox: rotate (i, i + rope_dim/2); else (2i, 2i + 1). Dimensions past rope_dim are unchanged.
void rope(float* x,  // [n, row_stride], heads at [h * head_dim, (h+1) * head_dim)
          int64_t row_stride, int n, int n_heads, int head_dim, int rope_dim,
          const int32_t* pos,     // [n]
          const float* inv_freq,  // [rope_dim / 2]
          bool neox, Stream stream);

// y[r, c] += bias[c].
void add_bias(float* y,           // [n, width]
              const float* bias,  // [width]
              int n, int width, Stream stream);
// SwiGLU on the fused gate|up GEMM output: out = silu(gate) * up.
void swiglu(const float* gu,  // [n, 2 * d_ff], gate in the first half of each row
            int n, int d_ff,
            float* out,  // [n, d_ff]
            Stream stream);
// x = x < 0 ? 0 : x (NaN stays NaN, as std::max(x, 0.f) on the CPU).
void relu(float* x, int64_t n, Stream stream);  // x: [n]
// x += y.
void add(float* x, const float* y, int64_t n, Stream stream);  // x, y: [n]

// ---- GEMM (cuBLAS) ---------------------------------------------------------------------------
// y = x W^T (+ bias), as cpu::Linear::forward: x is rounded to bf16 into x_bf16 (a workspace),
// then cublasGemmEx with bf16 inputs, float32 accumulation and float32 output.
void linear(BlasHandle handle,
            const uint16_t* w,  // [out, in] bf16, row-major (the checkpoint's layout)
            const float* bias,  // [out] or nullptr
            const float* x,     // [m, in]
            uint16_t* x_bf16,   // [m, in] workspace
            float* y,           // [m, out]
            int m, int in, int out, Stream stream);

// ---- KV cache and attention ------------------------------------------------------------------
// Appends token t's K and V heads at position pos[t] of sequence seq[t], layer `layer`:
//   k_slots[s] + layer * n_kv_heads * capacity * head_dim + (h * capacity + pos) * head_dim.
// k and v may be the K and V parts of the fused QKV buffer (row_stride = its row width).
void kv_append(
    const float* k,  // [n, row_stride], head h at [h * head_dim, ...)
    const float* v,  // [n, row_stride]
    int64_t row_stride, int n, int n_kv_heads, int head_dim,
    const int32_t* seq,     // [n]
    const int32_t* pos,     // [n]
    float* const* k_slots,  // [max_sequences] -> [n_layers][n_kv_heads, capacity, head_dim]
    float* const* v_slots,  // [max_sequences] -> same layout
    int layer, int capacity, Stream stream);
// The same into a bf16 cache (uint16_t bits, round to nearest even as f32_to_bf16): half the
// bytes of the float32 cache (the CUDA backend's full path keeps its KV cache in bf16).
void kv_append(const float* k, const float* v, int64_t row_stride, int n, int n_kv_heads,
               int head_dim, const int32_t* seq, const int32_t* pos,
               uint16_t* const* k_slots,  // [max_sequences] -> bf16, the float32 layout above
               uint16_t* const* v_slots, int layer, int capacity, Stream stream);

// Causal GQA attention over the device KV cache, float32 with an online (tiled) softmax: token t
// (sequence seq[t], position pos[t]) attends to positions [max(0, pos[t] - window + 1), pos[t]]
// of its sequence (window 0: all), query head h to KV head h / (n_heads / n_kv_heads).
// PRECOND: those positions were appended at `layer`; head_dim even and <= kMaxHeadDim.
// Paths (same results up to float32 summation order; any seq/pos mix is correct in each):
//  - n <= 64 (decode): split-KV. Each (token, KV head) is split into chunks of positions over
//    many blocks, one pass over K/V serving the KV head's query heads; a second kernel merges
//    the chunks' (max, sum, output). Needs a workspace (stream-ordered cudaMallocAsync here).
//  - more tokens, head_dim 64 or 128 (prefill): query tiles of 64 tokens per head; runs of
//    consecutive tokens of one sequence at consecutive positions share each K/V tile read.
//  - otherwise: one block per (token, head).
constexpr int kMaxHeadDim = 256;
void attention(
    const float* q,  // [n, q_stride], head h at [h * head_dim, ...)
    int64_t q_stride, int n, int n_heads, int n_kv_heads, int head_dim,
    const int32_t* seq,           // [n]
    const int32_t* pos,           // [n]
    const float* const* k_slots,  // [max_sequences] -> [n_layers][n_kv_heads, capacity, head_dim]
    const float* const* v_slots,  // [max_sequences] -> same layout
    int layer, int capacity, float scale, int window,
    float* out,  // [n, n_heads, head_dim]
    Stream stream);
// The same over a bf16 cache: each K/V element is widened exactly to float32 on load; the
// scores, the softmax and the accumulation are float32 as above.
void attention(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* seq, const int32_t* pos,
               const uint16_t* const* k_slots,  // [max_sequences] -> bf16, layout as above
               const uint16_t* const* v_slots, int layer, int capacity, float scale, int window,
               float* out, Stream stream);

// The same with a caller-owned workspace of at least attention_workspace_bytes(n, ...) bytes
// (0 is fine when that is 0). CUDA builds only (the CUDA backend): no no-CUDA stub.
size_t attention_workspace_bytes(int n, int n_heads, int n_kv_heads, int head_dim, int capacity);
void attention(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* seq, const int32_t* pos, const float* const* k_slots,
               const float* const* v_slots, int layer, int capacity, float scale, int window,
               void* workspace, size_t workspace_bytes, float* out, Stream stream);
void attention(const float* q, int64_t q_stride, int n, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* seq, const int32_t* pos, const uint16_t* const* k_slots,
               const uint16_t* const* v_slots, int layer, int capacity, float scale, int window,
               void* workspace, size_t workspace_bytes, float* out, Stream stream);

// out[r] = index of the largest x[r, :] (the first one on ties).
void argmax(const float* x,  // [n_rows, width]
            int n_rows, int width,
            int32_t* out,  // [n_rows]
            Stream stream);

}  // namespace hybridgen::cuda
