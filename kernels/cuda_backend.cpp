// CudaBackend: the model's forward pass on one CUDA device, step by step as Transformer::forward
// (src/runtime/transformer.cpp), with every op on the GPU (kernels/ops.cu) and the GEMMs in
// cuBLAS (bf16 weights, float32 accumulation and output).
//
// Memory on the device:
//  - weights: projections bf16 [out, in] (float32 checkpoints are rounded to bf16 on upload),
//    biases, norms, the token embedding and OPT's position embedding float32;
//  - the KV cache (policy full), bf16, one buffer per sequence slot for K and one for V, each
//    [n_layers][n_kv_heads, n_ctx, head_dim] (kv::KvCacheManager's layout). The backend takes
//    positions from the KvCacheManager (cache.reserve(seq, 1) per token, exactly as the CPU
//    backend) but never calls cache.write(): K/V live only here, so the manager allocates no host
//    storage for them;
//  - activations for up to max(512, max_sequences) tokens per forward call (the engine's prefill
//    chunk), grown on demand; the residual stream and every activation are float32.
// One forward call queues all its work on the backend's stream and synchronises once, when the
// logits are copied back (or at its end if no token wants logits).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <utility>

#include "cuda_check.h"
#include "model/dequant.h"
#include "ops_api.h"
#include "runtime/backend.h"
#include "runtime/cuda_device_stage.h"
#include "runtime/hybrid_attention.h"
#include "runtime/transformer.h"
#include "util/check.h"
#include "util/log.h"

namespace hybridgen {

namespace {

constexpr int kMinTokenCapacity = 512;  // the engine's prefill chunk

// Owns one cudaMalloc'd buffer.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const char* what)
      : p_(cuda::device_alloc(bytes, what)), bytes_(bytes) {}
  ~DeviceBuffer() { cuda::device_free(p_); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      cuda::device_free(p_);
      p_ = std::exchange(o.p_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }
  bool empty() const { return p_ == nullptr; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

DeviceBuffer upload_f32(const std::vector<float>& v, const char* what) {
  if (v.empty()) return {};
  DeviceBuffer b(v.size() * sizeof(float), what);
  cuda::copy_to_device(b.as<void>(), v.data(), v.size() * sizeof(float));
  return b;
}

struct DeviceLinear {
  DeviceBuffer w;     // [out, in] bf16
  DeviceBuffer bias;  // [out] float32, or empty
  int in = 0, out = 0;
};

DeviceLinear upload_linear(const cpu::Linear& L, const char* what) {
  DeviceLinear d;
  d.in = L.in_features();
  d.out = L.out_features();
  const size_t count = size_t(d.out) * d.in;
  HG_CHECK(count > 0, std::string("CUDA backend: empty weight ") + what);
  d.w = DeviceBuffer(count * sizeof(uint16_t), what);
  if (!L.weight_bf16().empty()) {
    HG_CHECK(L.weight_bf16().size() == count, std::string("CUDA backend: bad size of ") + what);
    cuda::copy_to_device(d.w.as<void>(), L.weight_bf16().data(), count * sizeof(uint16_t));
  } else {
    const std::vector<float>& src = L.weight_f32();
    HG_CHECK(src.size() == count, std::string("CUDA backend: bad size of ") + what);
    // float32 -> bf16 (round to nearest even) on the host, in bounded chunks.
    constexpr size_t kChunk = size_t(1) << 24;
    std::vector<uint16_t> tmp(std::min(count, kChunk));
    for (size_t off = 0; off < count; off += kChunk) {
      const int64_t len = static_cast<int64_t>(std::min(kChunk, count - off));
#pragma omp parallel for schedule(static) if (len > 65536)
      for (int64_t i = 0; i < len; ++i) tmp[i] = f32_to_bf16(src[off + i]);
      cuda::copy_to_device(d.w.as<uint16_t>() + off, tmp.data(), len * sizeof(uint16_t));
    }
  }
  if (L.has_bias()) {
    HG_CHECK(L.bias().size() == size_t(d.out), std::string("CUDA backend: bad bias of ") + what);
    d.bias = upload_f32(L.bias(), what);
  }
  return d;
}

uint64_t linear_bytes(const cpu::Linear& L) {
  return uint64_t(L.out_features()) * L.in_features() * 2 + L.bias().size() * 4;
}

// The speculative query of the hybrid runtime's CPU stage, computed on the GPU: at the start of
// layer il the backend applies layer il+1's norm and the Q rows of its W_qkv (+bias, RoPE) to
// layer il's input — the paper's speculation — and copies q (n x q_w floats) to pinned memory,
// recording an event; the CPU stage's worker waits for that event and reads it. Why on the GPU:
// the Q rows of Llama-3.1-8B are 32 MiB of bf16 per layer, one GEMV of ~8 us at the H200's HBM
// bandwidth, against ~0.6 ms for the CPU stage's threads at ~50 GB/s of host bandwidth
// (a whole 8B decode step's GPU time is ~8 ms: the CPU query would be 2.5x longer than the
// device stage's layer, and the CPU stage would never hide behind it).
struct SpecQueries {
  float* host[2] = {nullptr, nullptr};  // pinned [max_sequences, q_w], by layer parity
  cudaEvent_t ready[2] = {nullptr, nullptr};
  int q_w = 0, rows = 0;
  ~SpecQueries() {
    for (int i = 0; i < 2; ++i) {
      if (host[i]) (void)cudaFreeHost(host[i]);
      if (ready[i]) (void)cudaEventDestroy(ready[i]);
    }
  }
};

class GpuSpeculativeQuery final : public runtime::QueryProvider {
 public:
  explicit GpuSpeculativeQuery(const SpecQueries& s) : s_(s) {}
  void query(int il, const float*, int n, const int32_t*, float* q) const override {
    HG_CHECK(n <= s_.rows, "speculative query: more rows than the backend's batch");
    CUDA_CHECK(cudaEventSynchronize(s_.ready[il % 2]));
    std::memcpy(q, s_.host[il % 2], sizeof(float) * size_t(n) * s_.q_w);
  }

 private:
  const SpecQueries& s_;
};

// Page-locked host memory for the hybrid runtime's host stores and staging.
class PinnedAllocator final : public memory::HostAllocator {
 public:
  void* allocate(size_t bytes, memory::Role role) override {
    void* p = nullptr;
    const cudaError_t e = cudaHostAlloc(&p, std::max<size_t>(bytes, 64), cudaHostAllocPortable);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      fail("pinned host memory: cudaHostAlloc of " + std::to_string(bytes >> 20) + " MiB for " +
           memory::role_name(role) + " failed (" + cudaGetErrorString(e) +
           "); lower -c or -b, or use --kv-memory dram (pageable memory)");
    }
    return p;
  }
  void deallocate(void* p, size_t) noexcept override {
    if (p) (void)cudaFreeHost(p);
  }
  std::string name() const override { return "cuda-pinned"; }
};

struct DeviceLayer {
  DeviceBuffer attn_norm, attn_norm_b, ffn_norm, ffn_norm_b;  // [d_model]
  DeviceLinear qkv, out, up, down;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelConfig& config, const ModelWeights& weights, int n_ctx, int max_sequences,
              const CudaBackendOptions& options);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  void forward(const Batch& batch, kv::KvCacheManager& cache, std::vector<float>& logits) override;
  const ModelConfig& config() const override { return config_; }
  std::string name() const override { return "cuda"; }
  void set_tensor_callback(TensorCallback cb) override { callback_ = std::move(cb); }
  runtime::HybridRuntime* hybrid_runtime() override { return hybrid_.get(); }

 private:
  // Layer il's speculative query (norm_il, Q rows of W_qkv,il, RoPE) from x into spec_.
  void speculate(int il, const float* x, int n, const int32_t* d_pos);
  // Activation buffers for `tokens` tokens per call (reallocated larger when needed).
  void ensure_tokens(int tokens);
  void ensure_logit_rows(int rows);
  void norm(const float* x, const DeviceBuffer& w, const DeviceBuffer& b, int n, float* out);
  void linear(const DeviceLinear& L, const float* x, float* y, int m);
  // The tensor callback's dump of a device buffer: rows of `width` floats `stride` apart.
  void dump(const char* name, int il, const float* x, int n, int width, int64_t stride);
  TensorCallback callback_;
  std::vector<float> dump_host_;
  uint64_t activation_bytes(int tokens) const;

  // Owned CUDA objects first, so that they are destroyed after every buffer.
  struct StreamOwner {
    cudaStream_t s = nullptr;
    ~StreamOwner() {
      if (s) (void)cudaStreamDestroy(s);
    }
  } stream_;
  struct BlasOwner {
    cuda::BlasHandle h = nullptr;
    ~BlasOwner() { cuda::blas_destroy(h); }
  } blas_;

  ModelConfig config_;
  int device_ = 0;
  int n_ctx_ = 0, max_sequences_ = 0;
  int q_w_ = 0, kv_w_ = 0, qkv_w_ = 0, ffn_w_ = 0;

  // Weights.
  DeviceBuffer token_embedding_;            // [vocab, d]
  DeviceBuffer position_embedding_;         // [max_positions + offset, d] (OPT) or empty
  DeviceBuffer final_norm_, final_norm_b_;  // [d]
  DeviceLinear lm_head_;                    // [vocab, d]
  std::vector<DeviceLayer> layers_;
  DeviceBuffer inv_freq_;  // [rope_dim / 2] (RoPE models)

  // KV cache: per slot [n_layers][n_kv_heads, n_ctx, head_dim] bf16 (uint16_t bits; the kernels
  // widen each element to float32 and accumulate in float32), and the device arrays of the
  // slots' base pointers that the kernels index by sequence.
  std::vector<DeviceBuffer> k_cache_, v_cache_;  // [max_sequences]
  DeviceBuffer k_slots_, v_slots_;               // uint16_t*[max_sequences]

  // Activations, for token_capacity_ tokens.
  int token_capacity_ = 0;
  DeviceBuffer x_;          // [cap, d] residual stream
  DeviceBuffer h_;          // [cap, d] normed input / projection output
  DeviceBuffer qkv_;        // [cap, q | k | v]
  DeviceBuffer att_;        // [cap, n_heads, head_dim]
  DeviceBuffer ffn_;        // [cap, 2 d_ff] (gate | up) or [cap, d_ff]
  DeviceBuffer act_;        // [cap, d_ff]
  DeviceBuffer last_;       // [cap, d] rows that want logits
  DeviceBuffer x_bf16_;     // [cap, max(d, q_w, d_ff)] bf16 GEMM input
  DeviceBuffer ints_;       // [4 cap] int32: tokens | seq | pos | logit rows
  DeviceBuffer attn_work_;  // split-KV attention partials (decode), grown on demand
  int logit_rows_ = 0;
  DeviceBuffer logits_;  // [logit_rows_, vocab]
  std::vector<int32_t> host_ints_;
  // Hybrid path: contiguous q, k, v of the step for the runtime ([cap, q_w], [cap, kv_w]).
  DeviceBuffer qc_, kc_, vc_;
  SpecQueries spec_;
  bool hybrid_path_ = false;
  // Last: destroyed first (its CPU-stage worker reads spec_; its device stage uses stream_).
  std::unique_ptr<runtime::HybridRuntime> hybrid_;
};

uint64_t weight_bytes_of(const ModelWeights& w) {
  // The device holds the token embedding as float32 whatever the host holds.
  uint64_t b = 4 * (uint64_t(w.token_embedding.rows()) * w.token_embedding.cols() +
                    w.position_embedding.size() + w.final_norm.size() + w.final_norm_b.size()) +
               linear_bytes(w.lm_head);
  for (const LayerWeights& L : w.layers)
    b += 4 * (L.attn_norm.size() + L.attn_norm_b.size() + L.ffn_norm.size() + L.ffn_norm_b.size()) +
         linear_bytes(L.qkv) + linear_bytes(L.out) + linear_bytes(L.up) + linear_bytes(L.down);
  return b;
}

// Device memory of the hybrid path beside the window: exact attention (prefill chunks, aog)
// lays out each sequence's K/V of one layer on the device (bf16 copy of the host stores and a
// float32 layout), and its scores scratch (<= 256 MiB).
// (bf16 K+V copy, float32 K+V layout, aog's second bf16 K+V buffer; the decode logits, V rows
// and scores; 256 MiB of scores scratch for H2O's exact kernel and slack.)
uint64_t hybrid_workspace_bytes(const ModelConfig& c, int n_ctx, int max_sequences) {
  const uint64_t kv_w = uint64_t(c.n_kv_heads) * c.head_dim;
  const uint64_t per_token = kv_w * (2 * 2 + 4 * 2 + 2 * 2 + 2) + uint64_t(c.n_heads) * 4 * 2;
  return uint64_t(n_ctx) * per_token * uint64_t(max_sequences) + (uint64_t(256) << 20);
}

std::string mib(uint64_t b) { return std::to_string((b + (1 << 20) - 1) >> 20) + " MiB"; }

CudaBackend::CudaBackend(const ModelConfig& c, const ModelWeights& w, int n_ctx, int max_sequences,
                         const CudaBackendOptions& options)
    : config_(c), n_ctx_(n_ctx), max_sequences_(max_sequences) {
  std::string why;
  if (!cuda_available(&why)) fail("--device cuda: " + why);
  HG_CHECK(n_ctx > 0 && max_sequences > 0, "CUDA backend: context size and batch must be positive");
  HG_CHECK(c.n_heads > 0 && c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0,
           "CUDA backend: n_heads must be a multiple of n_kv_heads");
  HG_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0 && c.head_dim <= cuda::kMaxHeadDim,
           "CUDA backend: head_dim " + std::to_string(c.head_dim) +
               " is not supported (even, at most " + std::to_string(cuda::kMaxHeadDim) +
               "); use --device cpu");
  HG_CHECK(w.layers.size() == size_t(c.n_layers), "CUDA backend: layer count mismatch");
  if (!c.learned_positions)
    HG_CHECK(c.rope_dim > 0 && c.rope_dim <= c.head_dim && c.rope_dim % 2 == 0,
             "CUDA backend: bad rope dimension " + std::to_string(c.rope_dim));
  const int d = c.d_model;
  q_w_ = c.n_heads * c.head_dim;
  kv_w_ = c.n_kv_heads * c.head_dim;
  qkv_w_ = q_w_ + 2 * kv_w_;
  ffn_w_ = c.relu_ffn ? c.d_ff : 2 * c.d_ff;

  CUDA_CHECK(cudaGetDevice(&device_));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));

  // What the device must hold, checked up front for a clear message. Full: bf16 K/V of the
  // whole context of every sequence slot. Hybrid: the bf16 window of every sequence and layer
  // (capped by --gpu-memory-mb) and the exact-attention workspace; nothing per context token.
  const bool hybrid = options.hybrid != nullptr;
  hybrid_path_ = hybrid;
  HG_CHECK(!hybrid || options.host_alloc,
           "CUDA backend: the hybrid runtime needs a host allocator");
  const uint64_t weight_bytes = weight_bytes_of(w);
  const uint64_t kv_slot_bytes =
      uint64_t(c.n_layers) * c.n_kv_heads * uint64_t(n_ctx) * c.head_dim * sizeof(uint16_t);
  const int window = hybrid ? (runtime::policy_row(options.hybrid->policy).window_zero
                                   ? 0
                                   : std::min(options.hybrid->window, n_ctx))
                            : 0;
  const uint64_t window_bytes = uint64_t(window) * c.n_kv_heads * c.head_dim * 2 * 2 *
                                uint64_t(c.n_layers) * uint64_t(max_sequences);
  const uint64_t kv_bytes = hybrid ? window_bytes : 2 * kv_slot_bytes * uint64_t(max_sequences);
  const int first_capacity = std::max(kMinTokenCapacity, max_sequences);
  const uint64_t act_bytes = activation_bytes(first_capacity) +
                             uint64_t(first_capacity) * c.vocab_size * sizeof(float) +
                             (hybrid ? hybrid_workspace_bytes(c, n_ctx, max_sequences) : 0);
  const uint64_t need = weight_bytes + kv_bytes + act_bytes;
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const uint64_t cap = hybrid ? options.hybrid->device_memory_bytes : 0;
  if (hybrid && cap > 0 && window_bytes > cap)
    fail("--device cuda: the KV window needs " + mib(window_bytes) + " of GPU memory (" +
         std::to_string(window) + " tokens x " + std::to_string(max_sequences) + " sequence(s) x " +
         std::to_string(c.n_layers) + " layers, bf16 K and V) but " + "--gpu-memory-mb allows " +
         mib(cap) + " (" + mib(free_b) + " free on " + prop.name +
         "): lower --window, -b or -c, or raise --gpu-memory-mb");
  if (need > free_b)
    fail("--device cuda: the model needs " + mib(need) + " of GPU memory (weights " +
         mib(weight_bytes) + " bf16, " +
         (hybrid ? "KV window " + mib(kv_bytes) + " for " + std::to_string(window) + " tokens x "
                 : "KV cache " + mib(kv_bytes) + " (bf16, policy full) for ") +
         std::to_string(max_sequences) + " sequence(s)" +
         (hybrid ? "" : " x " + std::to_string(n_ctx) + " tokens") +
         ", activations and workspaces " + mib(act_bytes) + ") but " + std::string(prop.name) +
         " has " + mib(free_b) + " free of " + mib(total_b) +
         ": lower -c (--ctx-size), -b (--batch)" +
         (hybrid ? ", --window or --gpu-memory-mb"
                 : ", or use --policy auto or hybrid (a window on the GPU, the rest on the host)"));

  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_.s, cudaStreamDefault));
  blas_.h = cuda::blas_create(stream_.s);

  // Weights.
  HG_CHECK(w.token_embedding.rows() == c.vocab_size && w.token_embedding.cols() == d,
           "CUDA backend: token embedding has the wrong size");
  token_embedding_ = upload_f32(w.token_embedding.to_f32(), "the token embedding");
  if (c.learned_positions) {
    HG_CHECK(w.position_embedding.size() >= size_t(c.max_positions + c.position_offset) * d,
             "CUDA backend: position embedding has the wrong size");
    position_embedding_ = upload_f32(w.position_embedding, "the position embedding");
  } else {
    const std::vector<float> inv = c.rope_inv_freq();
    HG_CHECK(inv.size() == size_t(c.rope_dim / 2), "CUDA backend: bad RoPE frequencies");
    inv_freq_ = upload_f32(inv, "the RoPE frequencies");
  }
  auto check_norm = [&](const std::vector<float>& g, const std::vector<float>& b) {
    HG_CHECK(g.size() == size_t(d), "CUDA backend: norm weight has the wrong size");
    if (c.layer_norm) HG_CHECK(b.size() == size_t(d), "CUDA backend: LayerNorm needs a bias");
  };
  check_norm(w.final_norm, w.final_norm_b);
  final_norm_ = upload_f32(w.final_norm, "the final norm");
  if (c.layer_norm) final_norm_b_ = upload_f32(w.final_norm_b, "the final norm");
  lm_head_ = upload_linear(w.lm_head, "the LM head");
  HG_CHECK(lm_head_.in == d && lm_head_.out == c.vocab_size, "CUDA backend: bad LM head shape");
  layers_.resize(c.n_layers);
  for (int il = 0; il < c.n_layers; ++il) {
    const LayerWeights& L = w.layers[il];
    DeviceLayer& D = layers_[il];
    check_norm(L.attn_norm, L.attn_norm_b);
    check_norm(L.ffn_norm, L.ffn_norm_b);
    D.attn_norm = upload_f32(L.attn_norm, "a layer norm");
    D.ffn_norm = upload_f32(L.ffn_norm, "a layer norm");
    if (c.layer_norm) {
      D.attn_norm_b = upload_f32(L.attn_norm_b, "a layer norm");
      D.ffn_norm_b = upload_f32(L.ffn_norm_b, "a layer norm");
    }
    D.qkv = upload_linear(L.qkv, "a QKV projection");
    D.out = upload_linear(L.out, "an output projection");
    D.up = upload_linear(L.up, "an FFN up projection");
    D.down = upload_linear(L.down, "an FFN down projection");
    HG_CHECK(D.qkv.in == d && D.qkv.out == qkv_w_ && D.out.in == q_w_ && D.out.out == d &&
                 D.up.in == d && D.up.out == ffn_w_ && D.down.in == c.d_ff && D.down.out == d,
             "CUDA backend: layer " + std::to_string(il) + " has unexpected projection shapes");
  }

  // KV cache (policy full): one K and one V buffer per sequence slot.
  std::vector<uint16_t*> k_ptrs(max_sequences), v_ptrs(max_sequences);
  for (int s = 0; s < max_sequences && !hybrid; ++s) {
    k_cache_.emplace_back(kv_slot_bytes, "the KV cache (keys)");
    v_cache_.emplace_back(kv_slot_bytes, "the KV cache (values)");
    k_ptrs[s] = k_cache_.back().as<uint16_t>();
    v_ptrs[s] = v_cache_.back().as<uint16_t>();
  }
  k_slots_ = DeviceBuffer(sizeof(uint16_t*) * max_sequences, "the KV cache slot table");
  v_slots_ = DeviceBuffer(sizeof(uint16_t*) * max_sequences, "the KV cache slot table");
  cuda::copy_to_device(k_slots_.as<void>(), k_ptrs.data(), sizeof(uint16_t*) * max_sequences);
  cuda::copy_to_device(v_slots_.as<void>(), v_ptrs.data(), sizeof(uint16_t*) * max_sequences);

  ensure_tokens(first_capacity);
  if (!hybrid) {  // the split-KV decode workspace, once (no allocation inside a decode step)
    size_t wb = 0;
    for (int t = 1; t <= std::min(64, first_capacity); ++t)
      wb = std::max(wb,
                    cuda::attention_workspace_bytes(t, c.n_heads, c.n_kv_heads, c.head_dim, n_ctx));
    if (wb) attn_work_ = DeviceBuffer(wb, "attention workspace");
  }
  // The uploads above went through the legacy default stream; finish them before any kernel.
  cuda::device_synchronize();
  if (hybrid) {
    spec_.q_w = q_w_;
    spec_.rows = max_sequences;
    for (int i = 0; i < 2; ++i) {
      CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&spec_.host[i]),
                               sizeof(float) * size_t(max_sequences) * q_w_,
                               cudaHostAllocPortable));
      CUDA_CHECK(cudaEventCreateWithFlags(&spec_.ready[i], cudaEventDisableTiming));
    }
    runtime::ModelDims dims;
    dims.n_layers = c.n_layers;
    dims.n_heads = c.n_heads;
    dims.n_kv_heads = c.n_kv_heads;
    dims.head_dim = c.head_dim;
    dims.d_model = c.d_model;
    dims.sliding_window = c.sliding_window;
    runtime::CudaStageOptions so;
    so.host_io = false;
    so.stream = stream_.s;
    so.reserve_ctx = n_ctx;  // no allocation inside a step
    so.reserve_sequences = max_sequences;
    so.aog = options.hybrid->policy == runtime::Policy::kAog;
    runtime::HybridConfig hc = *options.hybrid;
    hc.device_memory_bytes = 0;  // checked above against the bf16 window and the free memory
    hybrid_ = std::make_unique<runtime::HybridRuntime>(
        hc, dims, std::make_unique<GpuSpeculativeQuery>(spec_),
        runtime::make_cuda_device_stage(dims, *options.host_alloc, so), n_ctx, max_sequences,
        *options.host_alloc);
  }
  log().info(
      "CUDA backend on {} (sm_{}{}): weights {:.1f} MiB, {} {:.1f} MiB ({} x {} tokens), "
      "activations and workspaces {:.1f} MiB; {:.1f} MiB free before loading",
      prop.name, prop.major, prop.minor, weight_bytes / 1048576.0,
      hybrid ? "KV window (bf16)" : "KV cache (bf16)", kv_bytes / 1048576.0, max_sequences,
      hybrid ? window : n_ctx, act_bytes / 1048576.0, free_b / 1048576.0);
}

void CudaBackend::speculate(int il, const float* x, int n, const int32_t* d_pos) {
  const ModelConfig& c = config_;
  const DeviceLayer& L = layers_[il];
  float* h = h_.as<float>();
  float* q = att_.as<float>();  // free until this layer's attention
  norm(x, L.attn_norm, L.attn_norm_b, n, h);
  cuda::linear(blas_.h, L.qkv.w.as<uint16_t>(),
               L.qkv.bias.empty() ? nullptr : L.qkv.bias.as<float>(), h, x_bf16_.as<uint16_t>(), q,
               n, L.qkv.in, q_w_, stream_.s);
  if (!c.learned_positions)
    cuda::rope(q, q_w_, n, c.n_heads, c.head_dim, c.rope_dim, d_pos, inv_freq_.as<float>(),
               c.rope_style == RopeStyle::kNeox, stream_.s);
  CUDA_CHECK(cudaMemcpyAsync(spec_.host[il % 2], q, sizeof(float) * size_t(n) * q_w_,
                             cudaMemcpyDeviceToHost, stream_.s));
  CUDA_CHECK(cudaEventRecord(spec_.ready[il % 2], stream_.s));
}

CudaBackend::~CudaBackend() {
  // Let queued work finish before the buffers are freed (errors cannot be reported here).
  if (stream_.s) (void)cudaStreamSynchronize(stream_.s);
  (void)cudaGetLastError();
}

uint64_t CudaBackend::activation_bytes(int tokens) const {
  const ModelConfig& c = config_;
  const uint64_t t = uint64_t(tokens);
  const uint64_t widest_in = std::max({c.d_model, q_w_, c.d_ff});
  return 4 * t * (3 * uint64_t(c.d_model) + qkv_w_ + q_w_ + ffn_w_ + c.d_ff) + 2 * t * widest_in +
         4 * 4 * t;
}

void CudaBackend::ensure_tokens(int tokens) {
  if (tokens <= token_capacity_) return;
  const ModelConfig& c = config_;
  if (stream_.s) CUDA_CHECK(cudaStreamSynchronize(stream_.s));  // old buffers no longer in use
  const int cap = std::max(tokens, token_capacity_ * 2);
  const size_t t = size_t(cap);
  const size_t widest_in = std::max({c.d_model, q_w_, c.d_ff});
  // Free the old buffers first, so that old and new never need to fit together.
  for (DeviceBuffer* b : {&x_, &h_, &qkv_, &att_, &ffn_, &act_, &last_, &x_bf16_, &ints_})
    *b = DeviceBuffer();
  token_capacity_ = 0;
  x_ = DeviceBuffer(4 * t * c.d_model, "activations");
  h_ = DeviceBuffer(4 * t * c.d_model, "activations");
  qkv_ = DeviceBuffer(4 * t * qkv_w_, "activations");
  att_ = DeviceBuffer(4 * t * q_w_, "activations");
  ffn_ = DeviceBuffer(4 * t * ffn_w_, "activations");
  if (!c.relu_ffn) act_ = DeviceBuffer(4 * t * c.d_ff, "activations");
  last_ = DeviceBuffer(4 * t * c.d_model, "activations");
  x_bf16_ = DeviceBuffer(2 * t * widest_in, "activations");
  ints_ = DeviceBuffer(4 * 4 * t, "token indices");
  if (hybrid_path_) {  // the hybrid path's contiguous q, k, v
    qc_ = DeviceBuffer();
    kc_ = DeviceBuffer();
    vc_ = DeviceBuffer();
    qc_ = DeviceBuffer(4 * t * q_w_, "activations");
    kc_ = DeviceBuffer(4 * t * kv_w_, "activations");
    vc_ = DeviceBuffer(4 * t * kv_w_, "activations");
  }
  token_capacity_ = cap;
}

void CudaBackend::ensure_logit_rows(int rows) {
  if (rows <= logit_rows_) return;
  if (stream_.s) CUDA_CHECK(cudaStreamSynchronize(stream_.s));
  const int cap = std::max(rows, std::min(logit_rows_ * 2, token_capacity_));
  logits_ = DeviceBuffer();
  logit_rows_ = 0;
  logits_ = DeviceBuffer(sizeof(float) * size_t(cap) * config_.vocab_size, "the logits");
  logit_rows_ = cap;
}

void CudaBackend::norm(const float* x, const DeviceBuffer& w, const DeviceBuffer& b, int n,
                       float* out) {
  if (config_.layer_norm)
    cuda::layer_norm(x, w.as<float>(), b.as<float>(), n, config_.d_model, config_.norm_eps, out,
                     stream_.s);
  else
    cuda::rms_norm(x, w.as<float>(), n, config_.d_model, config_.norm_eps, out, stream_.s);
}

void CudaBackend::linear(const DeviceLinear& L, const float* x, float* y, int m) {
  cuda::linear(blas_.h, L.w.as<uint16_t>(), L.bias.empty() ? nullptr : L.bias.as<float>(), x,
               x_bf16_.as<uint16_t>(), y, m, L.in, L.out, stream_.s);
}

void CudaBackend::dump(const char* name, int il, const float* x, int n, int width, int64_t stride) {
  if (!callback_) return;
  dump_host_.resize(size_t(n) * width);
  CUDA_CHECK(cudaMemcpy2DAsync(dump_host_.data(), sizeof(float) * width, x, sizeof(float) * stride,
                               sizeof(float) * width, n, cudaMemcpyDeviceToHost, stream_.s));
  CUDA_CHECK(cudaStreamSynchronize(stream_.s));
  callback_(name, il, dump_host_.data(), n, width);
}

void CudaBackend::forward(const Batch& batch, kv::KvCacheManager& cache,
                          std::vector<float>& logits) {
  const ModelConfig& c = config_;
  const int n = batch.size();
  HG_CHECK(n > 0, "forward: empty batch");
  HG_CHECK(batch.seq.size() == size_t(n) && batch.want_logits.size() == size_t(n),
           "forward: malformed batch");
  HG_CHECK(cache.capacity() <= n_ctx_ && cache.max_sequences() <= max_sequences_ &&
               cache.shape().n_layers == c.n_layers && cache.shape().n_kv_heads == c.n_kv_heads &&
               cache.shape().head_dim == c.head_dim,
           "CUDA backend: the KV-cache manager's shape differs from the backend's device cache");
  const int d = c.d_model, hd = c.head_dim;
  for (int t = 0; t < n; ++t)
    HG_CHECK(batch.tokens[t] >= 0 && batch.tokens[t] < c.vocab_size,
             "token id " + std::to_string(batch.tokens[t]) + " is outside the vocabulary (" +
                 std::to_string(c.vocab_size) + " tokens)");
  // Positions: each token goes at the end of its sequence (the manager tracks lengths; the K/V
  // themselves are appended to this backend's device cache below, never to cache.write()).
  std::vector<int32_t> pos(n);
  for (int t = 0; t < n; ++t) pos[t] = cache.reserve(batch.seq[t], 1);
  if (c.learned_positions)
    for (int t = 0; t < n; ++t)
      HG_CHECK(pos[t] < c.max_positions,
               "position " + std::to_string(pos[t]) + " is past the model's " +
                   std::to_string(c.max_positions) + " learned positions");
  std::vector<int32_t> rows;
  for (int t = 0; t < n; ++t)
    if (batch.want_logits[t]) rows.push_back(t);
  const int n_out = static_cast<int>(rows.size());

  CUDA_CHECK(cudaSetDevice(device_));
  ensure_tokens(n);
  if (n_out > 0) ensure_logit_rows(n_out);
  const size_t attn_work_bytes =
      hybrid_ ? 0 : cuda::attention_workspace_bytes(n, c.n_heads, c.n_kv_heads, hd, n_ctx_);
  if (attn_work_bytes > attn_work_.bytes()) {
    CUDA_CHECK(cudaStreamSynchronize(stream_.s));  // the old buffer is no longer in use
    attn_work_ = DeviceBuffer();
    attn_work_ = DeviceBuffer(attn_work_bytes, "attention workspace");
  }

  // tokens | seq | pos | rows, in one copy.
  host_ints_.resize(size_t(3) * n + n_out);
  std::copy(batch.tokens.begin(), batch.tokens.end(), host_ints_.begin());
  std::copy(batch.seq.begin(), batch.seq.end(), host_ints_.begin() + n);
  std::copy(pos.begin(), pos.end(), host_ints_.begin() + 2 * n);
  std::copy(rows.begin(), rows.end(), host_ints_.begin() + 3 * n);
  int32_t* d_tokens = ints_.as<int32_t>();
  int32_t* d_seq = d_tokens + n;
  int32_t* d_pos = d_tokens + 2 * n;
  int32_t* d_rows = d_tokens + 3 * n;
  cudaStream_t s = stream_.s;
  CUDA_CHECK(cudaMemcpyAsync(d_tokens, host_ints_.data(), sizeof(int32_t) * host_ints_.size(),
                             cudaMemcpyHostToDevice, s));

  float* x = x_.as<float>();                            // [n, d]
  float* h = h_.as<float>();                            // [n, d]
  float* qkv = qkv_.as<float>();                        // [n, q | k | v]
  float* att = att_.as<float>();                        // [n, n_heads, head_dim]
  float* ffn = ffn_.as<float>();                        // [n, ffn_w]
  float* act = act_.as<float>();                        // [n, d_ff]
  uint16_t* const* k_slots = k_slots_.as<uint16_t*>();  // bf16 KV cache (policy full)
  uint16_t* const* v_slots = v_slots_.as<uint16_t*>();

  cuda::embedding(token_embedding_.as<float>(), d_tokens, n, d, x, s);
  if (c.learned_positions)
    cuda::add_positions(x, position_embedding_.as<float>(), d_pos, c.position_offset, n, d, s);
  dump("inp_embd", -1, x, n, d, d);

  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool neox = c.rope_style == RopeStyle::kNeox;
  // Hybrid: the runtime's step protocol around the layers, as the CPU Transformer drives it;
  // the CPU stage's speculative query of layer il+1 from layer il's input on the GPU.
  bool speculating = false;
  if (hybrid_) {
    hybrid_->begin_step(batch, pos.data());
    bool one_each = true;
    for (int i = 0; i < n && one_each; ++i)
      for (int j = 0; j < i; ++j) one_each = one_each && batch.seq[i] != batch.seq[j];
    speculating =
        one_each && hybrid_->policy_plan().pipelined &&
        runtime::policy_row(hybrid_->config().policy).decode == runtime::DecodePath::kSplit;
  }
  for (int il = 0; il < c.n_layers; ++il) {
    const DeviceLayer& L = layers_[il];
    if (hybrid_) {
      if (speculating) {
        if (il == 0) speculate(0, x, n, d_pos);  // layer 0's own input: exact
        if (il + 1 < c.n_layers) speculate(il + 1, x, n, d_pos);
      }
      hybrid_->layer_input(il, x);
    }
    // --- attention block ---
    norm(x, L.attn_norm, L.attn_norm_b, n, h);
    dump("attn_norm", il, h, n, d, d);
    linear(L.qkv, h, qkv, n);
    float* q = qkv;         // row stride qkv_w_
    float* k = qkv + q_w_;  // row stride qkv_w_
    float* v = qkv + q_w_ + kv_w_;
    if (!c.learned_positions) {
      cuda::rope(q, qkv_w_, n, c.n_heads, hd, c.rope_dim, d_pos, inv_freq_.as<float>(), neox, s);
      cuda::rope(k, qkv_w_, n, c.n_kv_heads, hd, c.rope_dim, d_pos, inv_freq_.as<float>(), neox, s);
    }
    dump("q", il, q, n, q_w_, qkv_w_);
    dump("k", il, k, n, kv_w_, qkv_w_);
    dump("v", il, v, n, kv_w_, qkv_w_);
    if (hybrid_) {
      // The runtime's rows are contiguous: [n, n_heads, hd] and [n, n_kv_heads, hd].
      float* qc = qc_.as<float>();
      float* kc = kc_.as<float>();
      float* vc = vc_.as<float>();
      CUDA_CHECK(cudaMemcpy2DAsync(qc, 4 * size_t(q_w_), q, 4 * size_t(qkv_w_), 4 * size_t(q_w_), n,
                                   cudaMemcpyDeviceToDevice, s));
      CUDA_CHECK(cudaMemcpy2DAsync(kc, 4 * size_t(kv_w_), k, 4 * size_t(qkv_w_), 4 * size_t(kv_w_),
                                   n, cudaMemcpyDeviceToDevice, s));
      CUDA_CHECK(cudaMemcpy2DAsync(vc, 4 * size_t(kv_w_), v, 4 * size_t(qkv_w_), 4 * size_t(kv_w_),
                                   n, cudaMemcpyDeviceToDevice, s));
      hybrid_->attend(il, qc, kc, vc, att);
    } else {
      cuda::kv_append(k, v, qkv_w_, n, c.n_kv_heads, hd, d_seq, d_pos, k_slots, v_slots, il, n_ctx_,
                      s);
      cuda::attention(q, qkv_w_, n, c.n_heads, c.n_kv_heads, hd, d_seq, d_pos, k_slots, v_slots, il,
                      n_ctx_, scale, c.sliding_window, attn_work_.as<void>(), attn_work_.bytes(),
                      att, s);
    }
    dump("attn_out", il, att, n, q_w_, q_w_);
    linear(L.out, att, h, n);
    cuda::add(x, h, int64_t(n) * d, s);

    // --- feed-forward block ---
    norm(x, L.ffn_norm, L.ffn_norm_b, n, h);
    dump("ffn_norm", il, h, n, d, d);
    linear(L.up, h, ffn, n);
    if (c.relu_ffn) {
      cuda::relu(ffn, int64_t(n) * c.d_ff, s);
      linear(L.down, ffn, h, n);
    } else {
      cuda::swiglu(ffn, n, c.d_ff, act, s);
      linear(L.down, act, h, n);
    }
    cuda::add(x, h, int64_t(n) * d, s);
    dump("l_out", il, x, n, d, d);
  }
  if (hybrid_) hybrid_->end_step();

  // --- head: only the rows that want logits ---
  logits.assign(size_t(n_out) * c.vocab_size, 0.f);
  if (n_out == 0) {
    CUDA_CHECK(cudaStreamSynchronize(s));
    return;
  }
  float* last = last_.as<float>();  // [n_out, d]
  cuda::gather_rows(x, d_rows, n_out, d, last, s);
  norm(last, final_norm_, final_norm_b_, n_out, last);
  dump("result_norm", -1, last, n_out, d, d);
  linear(lm_head_, last, logits_.as<float>(), n_out);
  CUDA_CHECK(cudaMemcpyAsync(logits.data(), logits_.as<float>(),
                             sizeof(float) * size_t(n_out) * c.vocab_size, cudaMemcpyDeviceToHost,
                             s));
  CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace

bool cuda_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (why)
      *why = std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(e) +
             ": " + cudaGetErrorString(e) + ")";
    return false;
  }
  if (n <= 0) {
    if (why) *why = "no CUDA device found";
    return false;
  }
  if (!cuda::kernels_runnable(why)) return false;
  if (why) why->clear();
  return true;
}

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& config, const ModelWeights& weights,
                                           int n_ctx, int max_sequences,
                                           const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(config, weights, n_ctx, max_sequences, options);
}

runtime::DeviceBudget cuda_device_budget(const ModelConfig& c, const ModelWeights& w, int n_ctx,
                                         int max_sequences, uint64_t cap_bytes) {
  std::string why;
  if (!cuda_available(&why)) fail("--device cuda: " + why);
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  runtime::DeviceBudget b;
  const uint64_t kv_w = uint64_t(c.n_kv_heads) * c.head_dim;
  // The hybrid path's workspace is kept out of the room for the KV (it would be needed by the
  // window's choice; full needs less, so full is chosen slightly conservatively).
  const uint64_t work = hybrid_workspace_bytes(c, n_ctx, max_sequences);
  b.free_bytes = free_b > work ? free_b - work : 0;
  b.weight_bytes = weight_bytes_of(w);
  const int cap = std::max(kMinTokenCapacity, max_sequences);
  const uint64_t q_w = uint64_t(c.n_heads) * c.head_dim, qkv_w = q_w + 2 * kv_w;
  const uint64_t ffn_w = c.relu_ffn ? c.d_ff : 2 * uint64_t(c.d_ff);
  const uint64_t widest = std::max<uint64_t>({uint64_t(c.d_model), q_w, uint64_t(c.d_ff)});
  b.activation_bytes =
      4 * uint64_t(cap) * (3 * uint64_t(c.d_model) + qkv_w + q_w + ffn_w + c.d_ff) +
      2 * uint64_t(cap) * widest + 16 * uint64_t(cap) + uint64_t(cap) * c.vocab_size * 4 +
      4 * uint64_t(cap) * (q_w + 2 * kv_w);
  b.full_kv_bytes_per_token = uint64_t(c.n_layers) * kv_w * 2 * 2;  // bf16 K and V
  b.window_bytes_per_token = uint64_t(c.n_layers) * kv_w * 2 * 2;
  b.cap_bytes = cap_bytes;
  b.n_ctx = n_ctx;
  b.max_sequences = max_sequences;
  return b;
}

std::unique_ptr<memory::HostAllocator> make_cuda_pinned_allocator() {
  std::string why;
  if (!cuda_available(&why)) fail("--device cuda: " + why);
  return std::make_unique<PinnedAllocator>();
}

}  // namespace hybridgen
