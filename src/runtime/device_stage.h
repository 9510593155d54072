// The line between the backend-independent hybrid runtime (runtime/hybrid_attention.h) and the
// backend running the layers (../shared/DESIGN.md, "The split runtime"; paper §4.2.2 CPU side,
// §4.2.3 device side).
//
// The runtime owns the token mapper, the eviction decisions, the host key/value stores, the V
// staging, the CPU-stage worker and its queues, the selectors, the feedback scheduler and the
// stats. It reads HOST data only: a host copy of the layer input (or of the query), and the
// host stores. Everything that lives in the backend's memory goes through two interfaces:
//
//   QueryProvider - layer il's query from a host copy of a layer input (the speculative query:
//                   norm_il, W_q,il (+bias), RoPE at the current positions). The CPU backend
//                   computes it from its weights (CpuQueryProvider, runtime/cpu_device_stage.h).
//   DeviceStage   - the window store (a ring per sequence and layer, in the backend's memory),
//                   the decode merge (window logits, the exact merge with the CPU stage's part,
//                   softmax, values, then the append that evicts the oldest window token to the
//                   host stores), exact attention over both tiers (prefill, aog), the hand-off of
//                   backend buffers to the host (layer input, query), and the device's clock.
//
// Pointers named "device" are in the backend's memory (host memory on the CPU backend); pointers
// named "host" are ordinary host memory (pinned on a GPU).
#pragma once
#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "kv/tiered_kv.h"
#include "kv/token_selector.h"

namespace hybridgen::runtime {

// The shapes the runtime needs from the model.
struct ModelDims {
  int n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, d_model = 0;
  int sliding_window = 0;  // > 0: a token attends to its last sliding_window positions only
  int group() const { return n_heads / n_kv_heads; }
  float scale() const;  // 1 / sqrt(head_dim)
};

// Layer il's query for n rows at positions pos from a HOST copy of a layer input.
class QueryProvider {
 public:
  virtual ~QueryProvider() = default;
  // x: [n, d_model] host; q: [n, n_heads, head_dim] host. Called from the CPU stage's worker
  // (its own OpenMP team), concurrently with the device stage: must not touch the backend's
  // mutable state.
  virtual void query(int il, const float* x, int n, const int32_t* pos, float* q) const = 0;
};

// One decode row's CPU-stage part, as the CPU stage left it in host memory (pinned staging on
// a GPU): the offloaded tokens it kept, with either their logits (speculative: computed by the
// CPU stage with its query) or their K rows (exact-selected: the device stage scores them with
// the true query), and their V rows.
struct CpuPart {
  int k = 0;                         // offloaded tokens kept per KV head (0: none)
  const int32_t* sel = nullptr;      // [n_kv_heads, k] host-local indices, ascending
  const float* logits = nullptr;     // [n_heads, k] scaled logits (q . k / sqrt(d)); null: keys
  const uint16_t* keys = nullptr;    // [n_kv_heads, k, head_dim] bf16 (exact-selected), or null
  const uint16_t* values = nullptr;  // [n_kv_heads, k, head_dim] bf16 (kv::VStaging)
};

// One sequence's token of a decode step at one layer.
struct DecodeRow {
  kv::TieredLayerKv* kv = nullptr;  // the sequence's tiers at this layer (length() == pos)
  int pos = 0;                      // the new token's position
  const float* q = nullptr;         // device: [n_heads, head_dim]
  const float* k_new = nullptr;     // device: [n_kv_heads, head_dim] (RoPE applied)
  const float* v_new = nullptr;     // device: [n_kv_heads, head_dim]
  CpuPart cpu;
  kv::HeavyHitterAccumulator* heavy = nullptr;  // non-null: add this step's attention mass
  float* out = nullptr;                         // device: [n_heads, head_dim]
};

// A step's tokens for exact attention over both tiers (prefill chunks; aog decode).
struct ExactBatch {
  int n = 0;                     // tokens
  const int32_t* seq = nullptr;  // [n] runtime sequence slot (tokens of one slot: one kv)
  const int32_t* pos = nullptr;  // [n] positions (a sequence's tokens consecutive, ascending)
  const float* q = nullptr;      // device: [n, n_heads, head_dim]
  const float* k = nullptr;      // device: [n, n_kv_heads, head_dim]
  const float* v = nullptr;      // device: [n, n_kv_heads, head_dim]
  float* out = nullptr;          // device: [n, n_heads, head_dim]
  kv::TieredLayerKv* const* kv = nullptr;  // [n] token t's sequence's tiers at this layer
  kv::HeavyHitterAccumulator* const* heavy = nullptr;  // [n] its H2O scores, or null (none)
};

// What exact_attention did, for the stats and the scheduler.
struct ExactResult {
  double t_tx = 0;           // seconds spent shipping offloaded K/V to the device (aog)
  uint64_t bytes_moved = 0;  // bf16 K+V bytes shipped to the device (aog)
};

class DeviceStage {
 public:
  virtual ~DeviceStage() = default;
  virtual const char* name() const = 0;

  // Makes the window store of one (sequence, layer) in the backend's memory.
  virtual kv::WindowFactory window_factory() = 0;

  // A host view of n floats of device memory (the layer input for the CPU stage's speculation,
  // the true query for its synchronous mode). The CPU backend returns src itself; a GPU copies
  // into `scratch` (pinned) and returns it. Valid until the next call with the same scratch.
  virtual const float* to_host(const float* src, size_t n, std::vector<float>& scratch) = 0;
  // The reverse: n floats of host memory into device memory at dst (aoc's result, computed on
  // the CPU). The CPU backend copies unless dst is src.
  virtual void from_host(float* dst, const float* src, size_t n) {
    if (dst != src) std::copy_n(src, n, dst);
  }

  // Decode attention of one layer for every row (one token per sequence): the window's logits
  // and the new token's, concatenated with the CPU part's logits (or, when the part carries K
  // rows, the logits of those rows with the row's own query q) in position order (the token
  // mapper's ranges), one softmax, values from the CPU part's staged rows, the window and the
  // new token — exactly monolithic attention over the kept tokens. Positions older than the
  // sliding window (dims.sliding_window) are masked. Then each new token enters its window and
  // the least recently generated token leaves it for the host stores (TieredLayerKv::append).
  virtual void decode(int il, const DecodeRow* rows, int n) = 0;

  // Exact attention over both tiers for a step's tokens: the tokens are appended first (in bulk:
  // what leaves the window goes to the host stores as bf16), then each attends to positions
  // [lo, pos] of its sequence as full attention does (offloaded K/V as stored: bf16).
  // stream_offloaded (aog): the offloaded K/V are shipped to the device first, timed as T_tx.
  virtual ExactResult exact(int il, const ExactBatch& b, bool stream_offloaded) = 0;

  // The shared prefill's restore (hybridgen/prefill_snapshot.h): n tokens' K/V of one layer,
  // HOST float32 rows [n, n_kv_heads, head_dim] (RoPE applied), into an EMPTY (sequence, layer),
  // appended in bulk as exact() appends a prefill chunk: the newest window-many rows into the
  // window in the backend's memory, the older ones straight to the host stores as bf16; no
  // attention. The CPU backend's window is host memory: a plain append.
  virtual void restore(int il, kv::TieredLayerKv& kv, int n, const float* host_k,
                       const float* host_v) {
    (void)il;
    kv.append(n, host_k, host_v);
  }

  // Makes every eviction of earlier steps visible in the host stores. A GPU batches a decode
  // step's evictions into one device-to-host copy that lands after the step (the CUDA stage
  // publishes them at the next step's begin, before its CPU stage runs); the runtime calls this
  // before it touches the stores outside a step, and so must anyone reading them directly
  // (HybridRuntime::sync_host_stores). The CPU backend writes the stores at once: nothing to do.
  virtual void sync_host_stores() {}

  // The device's clock. begin_step before a step's first layer; step_seconds after its last:
  // the device time of the step when the backend measures it (CUDA events), nullopt when the
  // caller's wall clock is the device time (the CPU backend; the runtime subtracts its waits).
  virtual void begin_step() {}
  virtual std::optional<double> step_seconds() { return std::nullopt; }
};

}  // namespace hybridgen::runtime
