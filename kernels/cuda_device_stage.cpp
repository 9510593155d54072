// The CUDA device stage of the split runtime (src/runtime/cuda_device_stage.h): bf16 window ring
// in device memory, the decode merge, exact attention over both tiers (kernels in hybrid_ops.cu),
// copies of the CPU stage's part on a copy stream ordered by an event, T_gpu from events.
//
// STATUS: compiled in CI; written in a session without a GPU, so it has not run.
// tests/unit/cuda_device_stage_test.cpp compares it with the CPU device stage layer by layer on
// a GPU (scripts/gpu-check.sh runs every ctest test named Cuda*).
#include "runtime/cuda_device_stage.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include "cuda_check.h"
#include "hybrid_ops.h"
#include "ops_api.h"
#include "runtime/backend.h"  // cuda_available
#include "util/check.h"

namespace hybridgen::runtime {

namespace {

using cuda::RowDesc;
using cuda::SeqDesc;
constexpr int kMaxHeadDim = cuda::kHybridMaxHeadDim;

// A growable device buffer.
struct DeviceBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  ~DeviceBuffer() { cuda::device_free(p); }
  // Grows by at least half (buffers sized by the context grow a token per decode step).
  void* need(size_t b, const char* what) {
    if (b > bytes) {
      b = std::max(b, bytes + bytes / 2);
      cuda::device_free(p);
      p = nullptr;
      bytes = 0;
      p = cuda::device_alloc(b, what);
      bytes = b;
    }
    return p;
  }
  template <class T>
  T* as() {
    return static_cast<T*>(p);
  }
};

// A decode step's evictions, batched (issue 14): every (sequence, layer) whose window ring
// evicts during the step's decode appends gets its oldest slot(s) copied device-to-device into
// `dev` (on the compute stream, so before the new token's window_write overwrites the slot);
// at the step's end ONE cudaMemcpyAsync on the copy stream (after the `ready` event on the
// compute stream) brings the whole batch into pinned memory, and the next step's begin (or any
// entry point that reads the host stores: exact attention, the runtime's sync_host_stores)
// waits on `done` and scatters the rows into the host stores, before the CPU stage reads them.
// The host stores' row counts are committed at append time (the token mapper must say the row
// is offloaded at once); the rows' bytes arrive with the publish. Nothing reads those rows in
// between: within a step the CPU stage of layer l runs before layer l's decode.
struct EvictBatch {
  struct Entry {
    uint16_t* k_dst;  // host store rows: KV head h at k_dst + h * stride
    uint16_t* v_dst;
    int64_t stride;  // elements between KV heads of the host stores
    int n;           // tokens
    size_t off;      // elements into dev / pinned: K [n_kv_heads, n, hd], then V likewise
  };
  DeviceBuffer dev;            // [queued entries] bf16, packed
  uint16_t* pinned = nullptr;  // the same bytes, host side (cudaHostAlloc)
  size_t pinned_bytes = 0;
  std::vector<Entry> entries;
  size_t used = 0;         // elements queued in dev
  bool in_flight = false;  // the D2H is queued; `done` marks its end
  cudaEvent_t ready = nullptr, done = nullptr;
  uint64_t steps_shipped = 0, copies = 0, rows_published = 0;  // counters for the tests
};

struct Streams {
  cudaStream_t compute = nullptr, copy = nullptr;
  bool own_compute = true;  // false: the CUDA backend's stream
  cudaEvent_t copied = nullptr, merged = nullptr, step_begin = nullptr, step_end = nullptr;
  bool host_io = true;
  // Set by the stage around TieredLayerKv::append: the K/V rows it passes are in host memory
  // (host_io, or host copies made for tokens that skip the window), else in device memory.
  bool src_on_host = true;
  // Set around decode appends: evictions go into this step's batch (EvictBatch); else (exact
  // attention's bulk appends) straight into the host stores, waited for.
  EvictBatch* batch = nullptr;
  DeviceBuffer staging_k, staging_v;  // window writes from host memory: float32 K/V rows
};

// The window of one (sequence, layer): bf16 K and V rings in device memory.
class CudaWindowStore final : public kv::WindowStore {
 public:
  CudaWindowStore(Streams& st, int n_kv_heads, int head_dim, int capacity)
      : st_(st), n_kv_heads_(n_kv_heads), head_dim_(head_dim), capacity_(capacity) {
    const size_t b = size_t(n_kv_heads) * capacity * head_dim * sizeof(uint16_t);
    k_ = static_cast<uint16_t*>(cuda::device_alloc(b, "the window's keys (--window)"));
    try {
      v_ = static_cast<uint16_t*>(cuda::device_alloc(b, "the window's values (--window)"));
    } catch (...) {
      cuda::device_free(k_);
      throw;
    }
    bytes_ = 2 * b;
  }
  ~CudaWindowStore() override {
    cuda::device_free(k_);
    cuda::device_free(v_);
  }
  int capacity() const override { return capacity_; }
  void write(int slot, int n, const float* k, const float* v) override {
    HG_CHECK(slot >= 0 && n >= 0 && slot + n <= capacity_, "CUDA window: write out of range");
    if (n == 0) return;
    const size_t row = size_t(n) * n_kv_heads_ * head_dim_ * sizeof(float);
    if (st_.host_io || st_.src_on_host) {
      float* dk = static_cast<float*>(st_.staging_k.need(row, "window write staging"));
      float* dv = static_cast<float*>(st_.staging_v.need(row, "window write staging"));
      CUDA_CHECK(cudaMemcpyAsync(dk, k, row, cudaMemcpyHostToDevice, st_.compute));
      CUDA_CHECK(cudaMemcpyAsync(dv, v, row, cudaMemcpyHostToDevice, st_.compute));
      k = dk;
      v = dv;
    }
    cuda::window_write(k, v, n, n_kv_heads_, head_dim_, capacity_, slot, k_, v_, st_.compute);
    // host_io: the caller may reuse k/v at once; the copies above are from pageable memory
    // (synchronous with respect to the host), so nothing more is needed.
  }
  void export_bf16(int slot, int n, uint16_t* k_dst, uint16_t* v_dst,
                   int64_t dst_head_stride) const override {
    HG_CHECK(slot >= 0 && n >= 0 && slot + n <= capacity_, "CUDA window: export out of range");
    if (n == 0) return;
    const size_t width = size_t(n) * head_dim_ * sizeof(uint16_t);
    const size_t src_pitch = size_t(capacity_) * head_dim_ * sizeof(uint16_t);
    const size_t dst_pitch = size_t(dst_head_stride) * sizeof(uint16_t);
    const size_t off = size_t(slot) * head_dim_;
    if (EvictBatch* eb = st_.batch) {  // decode: into the step's batch, device-to-device
      const size_t part = size_t(n) * n_kv_heads_ * head_dim_;  // elements of K (or V)
      HG_CHECK(eb->used + 2 * part <= eb->dev.bytes / sizeof(uint16_t),
               "CUDA window: the eviction batch is full (the stage sizes it before appends)");
      uint16_t* dk = eb->dev.as<uint16_t>() + eb->used;
      CUDA_CHECK(cudaMemcpy2DAsync(dk, width, k_ + off, src_pitch, width, n_kv_heads_,
                                   cudaMemcpyDeviceToDevice, st_.compute));
      CUDA_CHECK(cudaMemcpy2DAsync(dk + part, width, v_ + off, src_pitch, width, n_kv_heads_,
                                   cudaMemcpyDeviceToDevice, st_.compute));
      eb->entries.push_back({k_dst, v_dst, dst_head_stride, n, eb->used});
      eb->used += 2 * part;
      return;
    }
    CUDA_CHECK(cudaMemcpy2DAsync(k_dst, dst_pitch, k_ + off, src_pitch, width, n_kv_heads_,
                                 cudaMemcpyDeviceToHost, st_.compute));
    CUDA_CHECK(cudaMemcpy2DAsync(v_dst, dst_pitch, v_ + off, src_pitch, width, n_kv_heads_,
                                 cudaMemcpyDeviceToHost, st_.compute));
    // Outside decode the host stores are read by the CPU as soon as append() returns.
    CUDA_CHECK(cudaStreamSynchronize(st_.compute));
  }
  uint64_t capacity_bytes() const override { return bytes_; }
  const float* host_keys(int) const override { return nullptr; }
  const float* host_values(int) const override { return nullptr; }
  const uint16_t* device_keys() const { return k_; }
  const uint16_t* device_values() const { return v_; }

 private:
  Streams& st_;
  int n_kv_heads_, head_dim_, capacity_;
  uint64_t bytes_ = 0;
  uint16_t* k_ = nullptr;
  uint16_t* v_ = nullptr;
};

const CudaWindowStore* cuda_window(const kv::TieredLayerKv& kv) {
  if (!kv.window()) return nullptr;
  const auto* w = dynamic_cast<const CudaWindowStore*>(kv.window());
  HG_CHECK(w, "CUDA device stage: a window that is not in device memory");
  return w;
}

class CudaDeviceStage final : public DeviceStage {
 public:
  CudaDeviceStage(const ModelDims& dims, memory::HostAllocator& alloc, const CudaStageOptions& o)
      : d_(dims), alloc_(alloc) {
    HG_CHECK(d_.head_dim <= kMaxHeadDim, "CUDA device stage: head_dim " +
                                             std::to_string(d_.head_dim) + " above " +
                                             std::to_string(kMaxHeadDim));
    st_.host_io = o.host_io;
    st_.src_on_host = o.host_io;
    if (o.stream) {
      st_.compute = static_cast<cudaStream_t>(o.stream);
      st_.own_compute = false;
    } else {
      CUDA_CHECK(cudaStreamCreateWithFlags(&st_.compute, cudaStreamNonBlocking));
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&st_.copy, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&st_.copied, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&st_.merged, cudaEventDisableTiming));
    for (int i = 0; i < 2; ++i) {
      CUDA_CHECK(cudaEventCreateWithFlags(&used_[i], cudaEventDisableTiming));
      CUDA_CHECK(cudaEventCreateWithFlags(&pf_[i].done, cudaEventDisableTiming));
    }
    CUDA_CHECK(cudaEventCreateWithFlags(&evict_.ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&evict_.done, cudaEventDisableTiming));
    if (o.reserve_ctx > 0 && o.reserve_sequences > 0) reserve(o);
    CUDA_CHECK(cudaEventCreate(&st_.step_begin));
    CUDA_CHECK(cudaEventCreate(&st_.step_end));
  }
  ~CudaDeviceStage() override {
    (void)cudaStreamSynchronize(st_.compute);
    (void)cudaStreamSynchronize(st_.copy);
    (void)cudaEventDestroy(st_.copied);
    (void)cudaEventDestroy(st_.merged);
    for (int i = 0; i < 2; ++i) {
      (void)cudaEventDestroy(used_[i]);
      (void)cudaEventDestroy(pf_[i].done);
    }
    for (const std::vector<TxEvents>* v : {&tx_pending_, &tx_free_})
      for (const TxEvents& t : *v) {
        (void)cudaEventDestroy(t.begin);
        (void)cudaEventDestroy(t.end);
      }
    (void)cudaEventDestroy(st_.step_begin);
    (void)cudaEventDestroy(st_.step_end);
    // A batch still pending is dropped: the host stores may be gone (the runtime owns them).
    (void)cudaEventDestroy(evict_.ready);
    (void)cudaEventDestroy(evict_.done);
    if (evict_.pinned) (void)cudaFreeHost(evict_.pinned);
    if (st_.own_compute) (void)cudaStreamDestroy(st_.compute);
    (void)cudaStreamDestroy(st_.copy);
  }
  const char* name() const override { return "cuda"; }

  // The shared prefill's restore: host rows, so the window writes stage them host-to-device
  // (CudaWindowStore::write) and the rows that skip the window go to the host stores as bf16 on
  // the host; waited for before returning. Written without a GPU: compiles, has NOT run.
  void restore(int il, kv::TieredLayerKv& kv, int n, const float* host_k,
               const float* host_v) override {
    (void)il;
    publish_evictions();  // nothing of an earlier step may land in the stores after this
    struct Reset {
      Streams& s;
      ~Reset() { s.src_on_host = s.host_io; }
    } reset{st_};
    st_.src_on_host = true;
    kv.append(n, host_k, host_v);
    CUDA_CHECK(cudaStreamSynchronize(st_.compute));
  }

  kv::WindowFactory window_factory() override {
    return [this](int n_kv_heads, int head_dim, int capacity) -> std::unique_ptr<kv::WindowStore> {
      return std::make_unique<CudaWindowStore>(st_, n_kv_heads, head_dim, capacity);
    };
  }

  const float* to_host(const float* src, size_t n, std::vector<float>& scratch) override {
    if (st_.host_io) return src;
    scratch.resize(n);
    CUDA_CHECK(cudaMemcpyAsync(scratch.data(), src, n * sizeof(float), cudaMemcpyDeviceToHost,
                               st_.compute));
    CUDA_CHECK(cudaStreamSynchronize(st_.compute));
    return scratch.data();
  }

  void from_host(float* dst, const float* src, size_t n) override {
    if (st_.host_io) {
      if (dst != src) std::copy_n(src, n, dst);
      return;
    }
    // Pageable source: the call returns once the rows are staged, so src may be reused.
    CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, st_.compute));
  }

  void decode(int il, const DecodeRow* rows, int n) override;
  ExactResult exact(int il, const ExactBatch& b, bool stream_offloaded) override;
  void sync_host_stores() override { publish_evictions(); }
  EvictionCounters eviction_counters() const {
    return {evict_.steps_shipped, evict_.copies, evict_.rows_published};
  }

 private:
  struct TxEvents {
    cudaEvent_t begin = nullptr, end = nullptr;
  };
  // aog's prefetch of one layer's offloaded rows (buffers pk_/pv_ of the layer's parity).
  struct Prefetch {
    int layer = -1;  // -1: none queued
    std::vector<kv::TieredLayerKv*> kv;
    const uint16_t* k = nullptr;  // the buffer it went into
    std::vector<int> rows, pitch_rows;
    cudaEvent_t done = nullptr;
  };
  void copy_rows(const kv::TieredLayerKv& kv, int first, int last, int pitch, uint16_t* k_dst,
                 uint16_t* v_dst, cudaStream_t stream);
  void remember_and_prefetch(int il, const std::vector<kv::TieredLayerKv*>& distinct,
                             const int32_t* seq, int n);
  TxEvents tx_events();
  double collect_tx();
  void reserve(const CudaStageOptions& o);
  void evict_room(size_t elements);
  void ship_evictions();
  void publish_evictions();

 public:
  void begin_step() override {
    publish_evictions();  // the previous step's, before this step's CPU stage reads the stores
    CUDA_CHECK(cudaEventRecord(st_.step_begin, st_.compute));
    timed_ = true;
  }
  std::optional<double> step_seconds() override {
    ship_evictions();  // the step's one D2H, on the copy stream (not in the step's events)
    if (!timed_) return std::nullopt;
    timed_ = false;
    CUDA_CHECK(cudaEventRecord(st_.step_end, st_.compute));
    CUDA_CHECK(cudaEventSynchronize(st_.step_end));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, st_.step_begin, st_.step_end));
    // host_io: the layers' GEMMs run on the host, so the events time the attention only; the
    // caller's wall clock is the device time then.
    if (st_.host_io) return std::nullopt;
    return double(ms) * 1e-3;
  }

 private:
  ModelDims d_;
  memory::HostAllocator& alloc_;
  Streams st_;
  EvictBatch evict_;
  bool timed_ = false;
  // Decode buffers (device), grown as needed.
  DeviceBuffer rows_dev_, q_dev_, k_dev_, v_dev_, out_dev_, logits_dev_, values_dev_, scores_dev_;
  DeviceBuffer keys_dev_;  // exact-selected: the CPU part's K rows [n_kv_heads, k, hd] bf16
  std::vector<RowDesc> rows_host_;
  std::vector<float> probs_host_;
  // Exact-attention buffers.
  DeviceBuffer seqs_dev_, idx_dev_, pos_dev_, off_k_dev_, off_v_dev_, heavy_dev_;
  std::vector<SeqDesc> seqs_host_;
  std::vector<float> heavy_host_;
  std::vector<float> host_k_, host_v_;  // device mode: host copies of K/V that skip the window
  // Full's attention over both tiers: float32 layouts, their slot table, the split-KV workspace.
  DeviceBuffer lay_k_, lay_v_, slot_ptrs_dev_, work_dev_;
  DeviceBuffer partials_dev_;  // decode_merge_split's per-chunk (output, max, sum)
  std::vector<float*> slot_ptrs_host_;
  // aog: prefetch buffers and state by layer parity; the last reader of each buffer.
  DeviceBuffer pk_[2], pv_[2];
  Prefetch pf_[2];
  cudaEvent_t used_[2] = {nullptr, nullptr};
  std::vector<std::vector<kv::TieredLayerKv*>> seen_;  // [layer] last aog step's sequences
  std::vector<std::vector<int32_t>> seen_seq_;         // [layer] their slots, batch order
  std::vector<TxEvents> tx_pending_, tx_free_;
};

void CudaDeviceStage::decode(int il, const DecodeRow* rows, int n) {
  (void)il;
  if (n == 0) return;
  const int hd = d_.head_dim, nkv = d_.n_kv_heads, nh = d_.n_heads;
  const size_t q_w = size_t(nh) * hd, kv_w = size_t(nkv) * hd;
  // The CPU parts: logits and staged V rows, host-to-device on the copy stream.
  size_t n_logits = 0, n_values = 0;
  int max_total = 1;
  for (int b = 0; b < n; ++b) {
    n_logits += size_t(nh) * rows[b].cpu.k;
    n_values += size_t(nkv) * rows[b].cpu.k * hd;
    max_total = std::max(max_total, rows[b].cpu.k + rows[b].kv->n_window() + 1);
  }
  bool any_keys = false;  // exact-selected: K rows travel with the V rows (the same layout)
  for (int b = 0; b < n; ++b) any_keys = any_keys || (rows[b].cpu.k > 0 && rows[b].cpu.keys);
  float* logits = static_cast<float*>(
      logits_dev_.need(std::max<size_t>(n_logits, 1) * 4, "the CPU stage's logits"));
  uint16_t* values = static_cast<uint16_t*>(
      values_dev_.need(std::max<size_t>(n_values, 1) * 2, "the CPU stage's V rows"));
  uint16_t* keys = any_keys ? static_cast<uint16_t*>(keys_dev_.need(
                                  std::max<size_t>(n_values, 1) * 2, "the CPU stage's K rows"))
                            : nullptr;
  std::vector<size_t> lo_off(n), va_off(n);
  size_t lo = 0, va = 0;
  // logits_dev_ / values_dev_ are reused by every layer: the previous layer's merge must have
  // read them before this layer's copies overwrite them.
  CUDA_CHECK(cudaStreamWaitEvent(st_.copy, st_.merged, 0));
  for (int b = 0; b < n; ++b) {
    const CpuPart& c = rows[b].cpu;
    lo_off[b] = lo;
    va_off[b] = va;
    if (c.k > 0) {
      HG_CHECK((c.logits != nullptr) != (c.keys != nullptr),
               "CUDA device stage: a CPU part carries either logits or K rows");
      if (c.logits)
        CUDA_CHECK(cudaMemcpyAsync(logits + lo, c.logits, size_t(nh) * c.k * 4,
                                   cudaMemcpyHostToDevice, st_.copy));
      else
        CUDA_CHECK(cudaMemcpyAsync(keys + va, c.keys, size_t(nkv) * c.k * hd * 2,
                                   cudaMemcpyHostToDevice, st_.copy));
      CUDA_CHECK(cudaMemcpyAsync(values + va, c.values, size_t(nkv) * c.k * hd * 2,
                                 cudaMemcpyHostToDevice, st_.copy));
    }
    lo += size_t(nh) * c.k;
    va += size_t(nkv) * c.k * hd;
  }
  CUDA_CHECK(cudaEventRecord(st_.copied, st_.copy));

  // q, k, v of the new tokens (host_io: copy in; else they are device rows already).
  const float *q = rows[0].q, *kn = rows[0].k_new, *vn = rows[0].v_new;
  float* out = rows[0].out;
  if (st_.host_io) {
    float* qd = static_cast<float*>(q_dev_.need(n * q_w * 4, "decode q"));
    float* kd = static_cast<float*>(k_dev_.need(n * kv_w * 4, "decode k"));
    float* vd = static_cast<float*>(v_dev_.need(n * kv_w * 4, "decode v"));
    out = static_cast<float*>(out_dev_.need(n * q_w * 4, "decode out"));
    for (int b = 0; b < n; ++b) {
      CUDA_CHECK(
          cudaMemcpyAsync(qd + b * q_w, rows[b].q, q_w * 4, cudaMemcpyHostToDevice, st_.compute));
      CUDA_CHECK(cudaMemcpyAsync(kd + b * kv_w, rows[b].k_new, kv_w * 4, cudaMemcpyHostToDevice,
                                 st_.compute));
      CUDA_CHECK(cudaMemcpyAsync(vd + b * kv_w, rows[b].v_new, kv_w * 4, cudaMemcpyHostToDevice,
                                 st_.compute));
    }
    q = qd, kn = kd, vn = vd;
  }
  float* scores = static_cast<float*>(
      scores_dev_.need(size_t(n) * nh * max_total * 4, "decode attention scores"));
  rows_host_.resize(n);
  for (int b = 0; b < n; ++b) {
    const DecodeRow& r = rows[b];
    const CudaWindowStore* w = cuda_window(*r.kv);
    RowDesc& x = rows_host_[b];
    x.q = st_.host_io ? q + b * q_w : r.q;
    x.k_new = st_.host_io ? kn + b * kv_w : r.k_new;
    x.v_new = st_.host_io ? vn + b * kv_w : r.v_new;
    x.wk = w ? w->device_keys() : nullptr;
    x.wv = w ? w->device_values() : nullptr;
    x.cap = w ? w->capacity() : 1;
    x.first_slot = r.kv->window_first_slot();
    x.nw = r.kv->n_window();
    x.n_off = r.kv->n_offloaded();
    x.lo_pos = d_.sliding_window > 0 ? r.pos - d_.sliding_window + 1 : 0;
    x.k = r.cpu.k;
    const bool exact_sel = r.cpu.k > 0 && r.cpu.keys;
    x.cpu_logits = exact_sel ? nullptr : logits + lo_off[b];
    x.cpu_keys = exact_sel ? keys + va_off[b] : nullptr;
    x.cpu_values = values + va_off[b];
    x.out = st_.host_io ? out + b * q_w : r.out;
    x.scores = scores + size_t(b) * nh * max_total;
    x.score_stride = max_total;
  }
  RowDesc* rd = static_cast<RowDesc*>(rows_dev_.need(sizeof(RowDesc) * n, "decode rows"));
  CUDA_CHECK(cudaMemcpyAsync(rd, rows_host_.data(), sizeof(RowDesc) * n, cudaMemcpyHostToDevice,
                             st_.compute));
  CUDA_CHECK(cudaStreamWaitEvent(st_.compute, st_.copied, 0));
  bool any_heavy = false, logits_given = true;
  for (int b = 0; b < n; ++b) {
    any_heavy = any_heavy || rows[b].heavy;
    logits_given = logits_given && (rows[b].cpu.k == 0 || rows[b].cpu.logits);
  }
  if (logits_given) {  // split over chunks of positions, log-sum-exp combine: fills the GPU
    float* part = static_cast<float*>(partials_dev_.need(
        cuda::merge_partials_floats(n, nh, hd, max_total) * 4, "decode merge partials"));
    cuda::decode_merge_split(rd, n, nh, d_.group(), hd, d_.scale(), max_total, part, any_heavy,
                             st_.compute);
  } else {
    cuda::decode_merge(rd, n, nh, d_.group(), hd, d_.scale(), st_.compute);
  }
  CUDA_CHECK(cudaEventRecord(st_.merged, st_.compute));
  if (any_heavy) {
    probs_host_.resize(size_t(n) * nh * max_total);
    CUDA_CHECK(cudaMemcpyAsync(probs_host_.data(), scores, probs_host_.size() * 4,
                               cudaMemcpyDeviceToHost, st_.compute));
  }
  if (st_.host_io)
    for (int b = 0; b < n; ++b)
      CUDA_CHECK(cudaMemcpyAsync(rows[b].out, out + b * q_w, q_w * 4, cudaMemcpyDeviceToHost,
                                 st_.compute));
  // Device mode without H2O scores: nothing to wait for (the outputs stay on the device).
  if (st_.host_io || any_heavy) CUDA_CHECK(cudaStreamSynchronize(st_.compute));
  // Each row's append evicts at most one token: room for n more in the step's batch.
  evict_room(size_t(n) * 2 * kv_w);
  for (int b = 0; b < n; ++b) {
    const DecodeRow& r = rows[b];
    if (r.heavy) {  // H2O's score: attention mass per position, summed over the group
      const int k = r.cpu.k, nw = r.kv->n_window(), n_off = r.kv->n_offloaded(), p = r.pos;
      r.heavy->scores_for_update(0, p + 1);
      std::vector<int32_t> at(k + nw + 1);  // the attended positions, in the scores' order
      for (int qh = 0; qh < nh; ++qh) {
        const int h = qh / d_.group();
        float* pr = probs_host_.data() + (size_t(b) * nh + qh) * max_total;
        if (r.heavy->keyformer()) {  // Keyformer: the Gumbel-softmax instead of the mass
          for (int j = 0; j < k; ++j) at[j] = r.cpu.sel[int64_t(h) * k + j];
          for (int i = 0; i < nw; ++i) at[k + i] = n_off + i;
          at[k + nw] = p;
          r.heavy->keyformer_transform(pr, at.data(), k + nw + 1, qh);
        }
        float* sc = r.heavy->scores_for_update(h, p + 1);
        for (int j = 0; j < k; ++j) sc[r.cpu.sel[int64_t(h) * k + j]] += pr[j];
        for (int i = 0; i < nw; ++i) sc[n_off + i] += pr[k + i];
        sc[p] += pr[k + nw];
      }
      r.heavy->end_update();
    }
    // The new token enters the window; the oldest leaves it for the host stores (into the
    // step's eviction batch, shipped at the step's end). host_io: from the host row.
    // Device mode: from the device row, except with window 0, where the token goes straight
    // to the host stores (TieredLayerKv converts it there), so it comes to the host first.
    if (!st_.host_io && r.kv->window_budget() == 0) {
      host_k_.resize(kv_w);
      host_v_.resize(kv_w);
      CUDA_CHECK(
          cudaMemcpyAsync(host_k_.data(), r.k_new, kv_w * 4, cudaMemcpyDeviceToHost, st_.compute));
      CUDA_CHECK(
          cudaMemcpyAsync(host_v_.data(), r.v_new, kv_w * 4, cudaMemcpyDeviceToHost, st_.compute));
      CUDA_CHECK(cudaStreamSynchronize(st_.compute));
      st_.src_on_host = true;
      r.kv->append(1, host_k_.data(), host_v_.data());
    } else {
      st_.src_on_host = st_.host_io;
      st_.batch = &evict_;
      struct Reset {  // an append that throws must not leave later appends batched
        Streams& s;
        ~Reset() { s.batch = nullptr; }
      } reset{st_};
      r.kv->append(1, r.k_new, r.v_new);
    }
  }
  st_.src_on_host = st_.host_io;
}

// Room for `elements` more bf16 values in the step's eviction batch. Growing frees the device
// buffer, so whatever is queued is published first (only when the batch was sized too small:
// reserve() sizes it for every layer of the largest batch).
void CudaDeviceStage::evict_room(size_t elements) {
  EvictBatch& eb = evict_;
  if (eb.in_flight) publish_evictions();  // a previous step's batch: out of the buffer first
  if (eb.used + elements <= eb.dev.bytes / sizeof(uint16_t)) return;
  publish_evictions();
  // A whole step's worth: every layer evicting `elements`.
  eb.dev.need(std::max<size_t>(elements, 1) * size_t(std::max(d_.n_layers, 1)) * 2,
              "the decode step's eviction batch");
  if (eb.pinned_bytes < eb.dev.bytes) {
    if (eb.pinned) CUDA_CHECK(cudaFreeHost(eb.pinned));
    eb.pinned = nullptr;
    eb.pinned_bytes = 0;
    void* p = nullptr;
    CUDA_CHECK(cudaHostAlloc(&p, eb.dev.bytes, cudaHostAllocPortable));
    eb.pinned = static_cast<uint16_t*>(p);
    eb.pinned_bytes = eb.dev.bytes;
  }
}

// The step's evictions device-to-host in one copy on the copy stream, after the compute
// stream's device-to-device gathers (event `ready`); `done` marks its end. Not waited for here.
void CudaDeviceStage::ship_evictions() {
  EvictBatch& eb = evict_;
  if (eb.entries.empty() || eb.in_flight) return;
  CUDA_CHECK(cudaEventRecord(eb.ready, st_.compute));
  CUDA_CHECK(cudaStreamWaitEvent(st_.copy, eb.ready, 0));
  CUDA_CHECK(cudaMemcpyAsync(eb.pinned, eb.dev.p, eb.used * sizeof(uint16_t),
                             cudaMemcpyDeviceToHost, st_.copy));
  CUDA_CHECK(cudaEventRecord(eb.done, st_.copy));
  eb.in_flight = true;
  ++eb.steps_shipped;
  ++eb.copies;
}

// Waits for the shipped batch (shipping it first if the step's end was not reached) and
// scatters its rows into the host stores: KV head h of an entry's n tokens is one run of
// n * head_dim values in the store ([n_kv_heads, capacity, head_dim], token-major per head).
void CudaDeviceStage::publish_evictions() {
  EvictBatch& eb = evict_;
  if (eb.entries.empty()) return;
  ship_evictions();
  CUDA_CHECK(cudaEventSynchronize(eb.done));
  const int hd = d_.head_dim, nkv = d_.n_kv_heads;
  for (const EvictBatch::Entry& e : eb.entries) {
    const size_t run = size_t(e.n) * hd, part = run * nkv;
    const uint16_t* src = eb.pinned + e.off;
    for (int h = 0; h < nkv; ++h) {
      std::memcpy(e.k_dst + h * e.stride, src + h * run, run * sizeof(uint16_t));
      std::memcpy(e.v_dst + h * e.stride, src + part + h * run, run * sizeof(uint16_t));
    }
    eb.rows_published += uint64_t(e.n);
  }
  eb.entries.clear();
  eb.used = 0;
  eb.in_flight = false;
}

// Exact attention over both tiers: the tokens are appended first (in bulk), then each
// sequence's offloaded K/V go host-to-device (bf16, one 2-D copy per K/V: the stores are
// [n_kv_heads, capacity, head_dim]) and one kernel attends over them and the window.
ExactResult CudaDeviceStage::exact(int il, const ExactBatch& b, bool stream_offloaded) {
  (void)il;
  publish_evictions();  // the host stores are read (aog, prefill) and appended to below
  ExactResult res;
  const int n = b.n, hd = d_.head_dim, nkv = d_.n_kv_heads, nh = d_.n_heads;
  const int64_t q_w = int64_t(nh) * hd, kv_w = int64_t(nkv) * hd;
  // Device mode: the step's K/V come to the host once (tokens that skip the window are
  // converted to bf16 into the host stores there; the window's are copied back up).
  const float* src_k = b.k;
  const float* src_v = b.v;
  if (!st_.host_io) {
    host_k_.resize(size_t(n) * kv_w);
    host_v_.resize(size_t(n) * kv_w);
    CUDA_CHECK(cudaMemcpyAsync(host_k_.data(), b.k, size_t(n) * kv_w * 4, cudaMemcpyDeviceToHost,
                               st_.compute));
    CUDA_CHECK(cudaMemcpyAsync(host_v_.data(), b.v, size_t(n) * kv_w * 4, cudaMemcpyDeviceToHost,
                               st_.compute));
    CUDA_CHECK(cudaStreamSynchronize(st_.compute));
    src_k = host_k_.data();
    src_v = host_v_.data();
    st_.src_on_host = true;
  }
  for (int t = 0; t < n;) {
    int e = t + 1;
    while (e < n && b.kv[e] == b.kv[t] && b.pos[e] == b.pos[e - 1] + 1) ++e;
    kv::TieredLayerKv& kv = *b.kv[t];
    HG_CHECK(kv.length() == b.pos[t],
             "hybrid attention (cuda): sequence " + std::to_string(b.seq[t]) + " holds " +
                 std::to_string(kv.length()) + " tokens, the step appends at " +
                 std::to_string(b.pos[t]));
    kv.append(e - t, src_k + t * kv_w, src_v + t * kv_w);
    t = e;
  }
  st_.src_on_host = st_.host_io;
  std::vector<kv::TieredLayerKv*> distinct;
  std::vector<int32_t> idx(n);
  for (int t = 0; t < n; ++t) {
    auto it = std::find(distinct.begin(), distinct.end(), b.kv[t]);
    idx[t] = int32_t(it - distinct.begin());
    if (it == distinct.end()) distinct.push_back(b.kv[t]);
  }
  // Offloaded K/V of every distinct sequence on the device, bf16 [n_kv_heads, n_off, hd] each.
  size_t off_rows = 0, heavy_n = 0;
  int max_len = 1;
  for (kv::TieredLayerKv* kv : distinct) {
    off_rows += size_t(kv->n_offloaded());
    max_len = std::max(max_len, kv->length());
  }
  bool any_heavy = false;
  std::vector<kv::HeavyHitterAccumulator*> heavy_of(distinct.size(), nullptr);
  for (int t = 0; t < n; ++t)
    if (b.heavy && b.heavy[t]) heavy_of[idx[t]] = b.heavy[t], any_heavy = true;
  std::vector<size_t> heavy_off(distinct.size(), 0);
  for (size_t s = 0; s < distinct.size(); ++s) {
    heavy_off[s] = heavy_n;
    if (heavy_of[s]) heavy_n += size_t(nkv) * distinct[s]->length();
  }
  // aog decode: layer il's rows were prefetched on the copy stream while layer il-1 ran, into
  // the buffer of il's parity (pf_); only the rows appended since (this step's tokens) remain.
  const bool aog = stream_offloaded && n == int(distinct.size());
  const int par = il % 2;
  DeviceBuffer& kbuf = aog ? pk_[par] : off_k_dev_;
  DeviceBuffer& vbuf = aog ? pv_[par] : off_v_dev_;
  uint16_t* ok = static_cast<uint16_t*>(
      kbuf.need(std::max<size_t>(off_rows, 1) * kv_w * 2, "offloaded keys on the device"));
  uint16_t* ov = static_cast<uint16_t*>(
      vbuf.need(std::max<size_t>(off_rows, 1) * kv_w * 2, "offloaded values on the device"));
  Prefetch& pf = pf_[par];
  bool prefetched = aog && pf.layer == il && pf.kv == distinct && pf.k == ok;
  if (prefetched)
    for (size_t s = 0; s < distinct.size() && prefetched; ++s)
      prefetched = distinct[s]->n_offloaded() == pf.pitch_rows[s];
  // A prefetch queued into this buffer is waited for even when it cannot be used (the copies
  // below would race with it).
  if (aog && pf.layer == il) CUDA_CHECK(cudaStreamWaitEvent(st_.compute, pf.done, 0));
  pf.layer = -1;
  float* heavy =
      any_heavy ? static_cast<float*>(heavy_dev_.need(heavy_n * 4, "H2O scores")) : nullptr;
  if (heavy) CUDA_CHECK(cudaMemsetAsync(heavy, 0, heavy_n * 4, st_.compute));
  TxEvents tx = tx_events();
  CUDA_CHECK(cudaEventRecord(tx.begin, st_.compute));
  seqs_host_.resize(distinct.size());
  size_t row = 0;
  for (size_t s = 0; s < distinct.size(); ++s) {
    const kv::TieredLayerKv& kv = *distinct[s];
    const int n_off = kv.n_offloaded();
    SeqDesc& x = seqs_host_[s];
    x.ok = ok + row * kv_w;
    x.ov = ov + row * kv_w;
    const int first = prefetched ? pf.rows[s] : 0;  // rows already on the device
    if (n_off > first) {
      copy_rows(kv, first, n_off, n_off, const_cast<uint16_t*>(x.ok), const_cast<uint16_t*>(x.ov),
                st_.compute);
    }
    // Counted as the CPU device stage counts them (n_off x n_kv_heads x head_dim x 2 bytes).
    if (stream_offloaded) res.bytes_moved += uint64_t(n_off) * kv_w * 2;
    row += size_t(n_off);
    const CudaWindowStore* w = cuda_window(kv);
    x.wk = w ? w->device_keys() : nullptr;
    x.wv = w ? w->device_values() : nullptr;
    x.cap = w ? w->capacity() : 1;
    x.first_slot = kv.window_first_slot();
    x.n_off = n_off;
    x.len = kv.length();
    x.heavy = heavy_of[s] ? heavy + heavy_off[s] : nullptr;
  }
  CUDA_CHECK(cudaEventRecord(tx.end, st_.compute));
  if (stream_offloaded)
    tx_pending_.push_back(tx);
  else
    tx_free_.push_back(tx);
  SeqDesc* sd =
      static_cast<SeqDesc*>(seqs_dev_.need(sizeof(SeqDesc) * distinct.size(), "exact seqs"));
  CUDA_CHECK(cudaMemcpyAsync(sd, seqs_host_.data(), sizeof(SeqDesc) * distinct.size(),
                             cudaMemcpyHostToDevice, st_.compute));
  int32_t* id = static_cast<int32_t*>(idx_dev_.need(sizeof(int32_t) * n, "exact index"));
  int32_t* pd = static_cast<int32_t*>(pos_dev_.need(sizeof(int32_t) * n, "exact positions"));
  CUDA_CHECK(
      cudaMemcpyAsync(id, idx.data(), sizeof(int32_t) * n, cudaMemcpyHostToDevice, st_.compute));
  CUDA_CHECK(cudaMemcpyAsync(pd, b.pos, sizeof(int32_t) * n, cudaMemcpyHostToDevice, st_.compute));
  const float* q = b.q;
  float* out = b.out;
  if (st_.host_io) {
    float* qd = static_cast<float*>(q_dev_.need(size_t(n) * q_w * 4, "exact q"));
    CUDA_CHECK(cudaMemcpyAsync(qd, b.q, size_t(n) * q_w * 4, cudaMemcpyHostToDevice, st_.compute));
    q = qd;
    out = static_cast<float*>(out_dev_.need(size_t(n) * q_w * 4, "exact out"));
  }
  {
    // Full's attention (cuda::attention: tiled prefill, split-KV decode) over both tiers laid
    // out as float32 in position order, the layout full attention keeps: prefill and aog run at
    // full's speed. [n_seqs][n_kv_heads, max_len, hd] float32 for K and for V.
    const int64_t seq_stride = int64_t(nkv) * max_len * hd;
    const size_t lay = size_t(distinct.size()) * seq_stride * 4;
    float* lk = static_cast<float*>(lay_k_.need(lay, "exact attention's float32 K layout"));
    float* lv = static_cast<float*>(lay_v_.need(lay, "exact attention's float32 V layout"));
    cuda::tiers_to_f32(sd, int(distinct.size()), max_len, nkv, hd, max_len, seq_stride, lk, lv,
                       st_.compute);
    slot_ptrs_host_.resize(2 * distinct.size());
    for (size_t s = 0; s < distinct.size(); ++s) {
      slot_ptrs_host_[s] = lk + s * seq_stride;
      slot_ptrs_host_[distinct.size() + s] = lv + s * seq_stride;
    }
    float** slots = static_cast<float**>(
        slot_ptrs_dev_.need(sizeof(float*) * slot_ptrs_host_.size(), "exact attention slots"));
    CUDA_CHECK(cudaMemcpyAsync(slots, slot_ptrs_host_.data(),
                               sizeof(float*) * slot_ptrs_host_.size(), cudaMemcpyHostToDevice,
                               st_.compute));
    const size_t wb = cuda::attention_workspace_bytes(n, nh, nkv, hd, max_len);
    void* work = wb ? work_dev_.need(wb, "attention workspace") : nullptr;
    cuda::attention(q, q_w, n, nh, nkv, hd, id, pd, slots, slots + distinct.size(), 0, max_len,
                    d_.scale(), d_.sliding_window, work, wb, out, st_.compute);
  }
  if (any_heavy) {
    // H2O needs each position's attention mass: the scoring kernel, without its value pass
    // (the output came from full's kernels above). Scores scratch [tokens, n_heads, max_len]:
    // tokens in groups that keep it under 256 MiB.
    const size_t per_token = size_t(nh) * max_len * 4;
    const int group_tokens = int(std::max<size_t>(1, (size_t(256) << 20) / per_token));
    float* scores = static_cast<float*>(
        scores_dev_.need(per_token * size_t(std::min(n, group_tokens)), "exact attention scores"));
    for (int t0i = 0; t0i < n; t0i += group_tokens) {
      const int nt = std::min(group_tokens, n - t0i);
      cuda::exact_attention_tiers(sd, id + t0i, pd + t0i, q + int64_t(t0i) * q_w, nullptr, scores,
                                  max_len, nt, nh, d_.group(), hd, d_.scale(), d_.sliding_window,
                                  st_.compute);
    }
  }
  if (aog) {
    CUDA_CHECK(cudaEventRecord(used_[par], st_.compute));
    remember_and_prefetch(il, distinct, b.seq, n);
  }
  if (st_.host_io)
    CUDA_CHECK(
        cudaMemcpyAsync(b.out, out, size_t(n) * q_w * 4, cudaMemcpyDeviceToHost, st_.compute));
  if (heavy) {
    heavy_host_.resize(heavy_n);
    CUDA_CHECK(cudaMemcpyAsync(heavy_host_.data(), heavy, heavy_n * 4, cudaMemcpyDeviceToHost,
                               st_.compute));
  }
  // Device mode without H2O scores: the outputs stay on the device, nothing to wait for.
  if (st_.host_io || heavy) CUDA_CHECK(cudaStreamSynchronize(st_.compute));
  res.t_tx = collect_tx();
  for (size_t s = 0; s < distinct.size(); ++s) {
    if (!heavy_of[s]) continue;
    const int len = distinct[s]->length();
    heavy_of[s]->scores_for_update(0, len);
    for (int h = 0; h < nkv; ++h) {
      float* dst = heavy_of[s]->scores_for_update(h, len);
      const float* src = heavy_host_.data() + heavy_off[s] + size_t(h) * len;
      for (int j = 0; j < len; ++j) dst[j] += src[j];
    }
    // (Keyformer: the kernel adds the plain attention mass of the prompt, not its Gumbel-softmax;
    // decode steps use the Gumbel-softmax. docs/accuracy.md notes the difference.)
    heavy_of[s]->end_update();
  }
  return res;
}

// Rows [first, last) of a sequence's host stores into a device copy laid out [n_kv_heads, pitch
// rows, hd] (one 2-D copy each for K and V: the stores are [n_kv_heads, capacity, hd]).
void CudaDeviceStage::copy_rows(const kv::TieredLayerKv& kv, int first, int last, int pitch,
                                uint16_t* k_dst, uint16_t* v_dst, cudaStream_t stream) {
  const int hd = d_.head_dim, nkv = d_.n_kv_heads;
  const size_t width = size_t(last - first) * hd * 2, dpitch = size_t(pitch) * hd * 2;
  const size_t off = size_t(first) * hd;
  CUDA_CHECK(cudaMemcpy2DAsync(k_dst + off, dpitch, kv.key_store().data() + off,
                               size_t(kv.key_store().head_stride()) * 2, width, nkv,
                               cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaMemcpy2DAsync(v_dst + off, dpitch, kv.value_store().data() + off,
                               size_t(kv.value_store().head_stride()) * 2, width, nkv,
                               cudaMemcpyHostToDevice, stream));
}

// aog: remembers layer il's sequences, then queues layer il+1's offloaded rows (those stored now;
// its append of this step's tokens comes later) on the copy stream into il+1's parity buffer,
// laid out for the row counts it will have after the append (one token per sequence). Layer
// il+1's tiers are the ones seen at il+1 in the previous step when the sequences are the same.
void CudaDeviceStage::remember_and_prefetch(int il, const std::vector<kv::TieredLayerKv*>& distinct,
                                            const int32_t* seq, int n) {
  if (int(seen_.size()) < d_.n_layers) {
    seen_.resize(d_.n_layers);
    seen_seq_.resize(d_.n_layers);
  }
  seen_[il] = distinct;
  seen_seq_[il].assign(seq, seq + n);
  const int next = il + 1;
  if (next >= d_.n_layers || seen_seq_[next] != seen_seq_[il]) return;
  const std::vector<kv::TieredLayerKv*>& kvs = seen_[next];
  const int par = next % 2;
  const int64_t kv_w = int64_t(d_.n_kv_heads) * d_.head_dim;
  size_t rows = 0;
  for (kv::TieredLayerKv* kv : kvs) rows += size_t(kv->n_offloaded()) + 1;
  uint16_t* ok = static_cast<uint16_t*>(pk_[par].need(rows * kv_w * 2, "aog prefetch (keys)"));
  uint16_t* ov = static_cast<uint16_t*>(pv_[par].need(rows * kv_w * 2, "aog prefetch (values)"));
  Prefetch& pf = pf_[par];
  pf.kv = kvs;
  pf.k = ok;
  pf.rows.resize(kvs.size());
  pf.pitch_rows.resize(kvs.size());
  // The buffer's last reader was layer next-2's attention.
  CUDA_CHECK(cudaStreamWaitEvent(st_.copy, used_[par], 0));
  TxEvents tx = tx_events();
  CUDA_CHECK(cudaEventRecord(tx.begin, st_.copy));
  size_t row = 0;
  for (size_t s = 0; s < kvs.size(); ++s) {
    const int now = kvs[s]->n_offloaded(), pitch = now + 1;
    pf.rows[s] = now;
    pf.pitch_rows[s] = pitch;
    if (now > 0) copy_rows(*kvs[s], 0, now, pitch, ok + row * kv_w, ov + row * kv_w, st_.copy);
    row += size_t(pitch);
  }
  CUDA_CHECK(cudaEventRecord(tx.end, st_.copy));
  CUDA_CHECK(cudaEventRecord(pf.done, st_.copy));
  tx_pending_.push_back(tx);
  pf.layer = next;
}

// Every buffer a step can need at the largest context and batch, once (CudaStageOptions).
void CudaDeviceStage::reserve(const CudaStageOptions& o) {
  const size_t ctx = size_t(o.reserve_ctx), seqs = size_t(o.reserve_sequences);
  const size_t kv_w = size_t(d_.n_kv_heads) * d_.head_dim, nh = size_t(d_.n_heads);
  // decode: the CPU parts' logits [rows, n_heads, k] and V rows [rows, n_kv_heads, k, hd],
  // k < ctx; the scores [rows, n_heads, k + window + 1].
  logits_dev_.need(seqs * nh * ctx * 4, "the CPU stage's logits");
  values_dev_.need(seqs * kv_w * ctx * 2, "the CPU stage's V rows");
  scores_dev_.need(seqs * nh * (ctx + 1) * 4, "decode attention scores");
  rows_dev_.need(sizeof(RowDesc) * seqs, "decode rows");
  partials_dev_.need(
      cuda::merge_partials_floats(o.reserve_sequences, d_.n_heads, d_.head_dim, o.reserve_ctx + 1) *
          4,
      "decode merge partials");
  // exact attention: the offloaded rows (bf16), the float32 layout, the split-KV workspace.
  off_k_dev_.need(seqs * ctx * kv_w * 2, "offloaded keys on the device");
  off_v_dev_.need(seqs * ctx * kv_w * 2, "offloaded values on the device");
  lay_k_.need(seqs * ctx * kv_w * 4, "exact attention's float32 K layout");
  lay_v_.need(seqs * ctx * kv_w * 4, "exact attention's float32 V layout");
  slot_ptrs_dev_.need(sizeof(float*) * 2 * seqs, "exact attention slots");
  seqs_dev_.need(sizeof(SeqDesc) * seqs, "exact seqs");
  size_t wb = 0;
  for (int n = 1; n <= std::min(64, o.reserve_sequences); ++n)
    wb = std::max(wb, cuda::attention_workspace_bytes(n, d_.n_heads, d_.n_kv_heads, d_.head_dim,
                                                      o.reserve_ctx));
  if (wb) work_dev_.need(wb, "attention workspace");
  // the step's eviction batch: one token per sequence and layer, K and V, bf16 (+ its pinned
  // twin).
  evict_room(seqs * 2 * kv_w);
  if (o.aog)
    for (int i = 0; i < 2; ++i) {
      pk_[i].need(seqs * ctx * kv_w * 2, "aog prefetch (keys)");
      pv_[i].need(seqs * ctx * kv_w * 2, "aog prefetch (values)");
    }
}

CudaDeviceStage::TxEvents CudaDeviceStage::tx_events() {
  if (!tx_free_.empty()) {
    TxEvents t = tx_free_.back();
    tx_free_.pop_back();
    return t;
  }
  TxEvents t;
  CUDA_CHECK(cudaEventCreate(&t.begin));
  CUDA_CHECK(cudaEventCreate(&t.end));
  return t;
}

// T_tx of aog: the copies' device time (events on the stream that ran them), counted once they
// have completed (a copy still in flight is counted by a later call).
double CudaDeviceStage::collect_tx() {
  double sec = 0;
  for (size_t i = 0; i < tx_pending_.size();) {
    if (cudaEventQuery(tx_pending_[i].end) != cudaSuccess) {
      (void)cudaGetLastError();  // cudaErrorNotReady is not an error here
      ++i;
      continue;
    }
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, tx_pending_[i].begin, tx_pending_[i].end));
    sec += double(ms) * 1e-3;
    tx_free_.push_back(tx_pending_[i]);
    tx_pending_.erase(tx_pending_.begin() + long(i));
  }
  return sec;
}

}  // namespace

bool cuda_device_stage_available(std::string* why) { return cuda_available(why); }

EvictionCounters cuda_eviction_counters(const DeviceStage& stage) {
  const auto* c = dynamic_cast<const CudaDeviceStage*>(&stage);
  return c ? c->eviction_counters() : EvictionCounters{};
}

std::unique_ptr<DeviceStage> make_cuda_device_stage(const ModelDims& dims,
                                                    memory::HostAllocator& alloc,
                                                    const CudaStageOptions& options) {
  std::string why;
  if (!cuda_device_stage_available(&why)) fail("the CUDA device stage: " + why);
  return std::make_unique<CudaDeviceStage>(dims, alloc, options);
}

}  // namespace hybridgen::runtime
