// Tiered KV store of hybrid attention (paper §4.2-4.6; ../shared/DESIGN.md): per sequence and
// layer, a device-resident WINDOW of recent tokens (budget W tokens) and HOST STORES for the
// tokens that left it — keys and values kept apart (role kKeys: fast tier, read by the CPU logits
// calculator; role kValues: slow tier is fine, only gathered for DMA).
//
// Pieces:
//   - WindowStore: the window's K/V, float32, [n_kv_heads, W slots, head_dim] as a ring buffer.
//     Abstract so that the CUDA backend can keep it in GPU memory; HostWindowStore is the CPU
//     backend's (the "device" is host memory there).
//   - OffloadStore: one host store (keys or values), bf16, per KV head token-major:
//     [n_kv_heads, capacity, head_dim]; stored token i of KV head h is at
//     data() + h * head_stride() + i * head_dim. The key store is consumed as is by
//     cpu::attention_logits (keys_view()).
//   - TokenMap (the token mapper): which positions live in which tier, as ascending lists of
//     position ranges per tier; tier-local index = rank of the position inside its tier.
//   - Eviction engine (TieredLayerKv::append): least-recently-generated first — when the window is
//     full, its oldest token's K goes to the key store and V to the value store (rounded to bf16)
//     before the new token enters. A bulk append (prefill) moves whole runs: old window tokens
//     out in at most two ring segments, new tokens that would be evicted at once straight to the
//     host stores (they never touch the window).
//   - concat_tiers (the token concatenator): per-tier logits (or rows) back in original position
//     order by a linear merge of the two tiers' ascending ranges, no sorting.
//   - VStaging: gather of the selected offloaded V rows into one reused staging buffer
//     (role kStaging; pinned memory once the CUDA backend registers it).
//
// STORAGE GROWTH POLICY. A host store's capacity is reserved, never shrunk, and by default
// PREALLOCATED on the first offload to its maximum, max_offloaded = context - W tokens
// (StoreGrowth::kPreallocate). Why: (1) its data pointer never changes, so the CPU stage can
// keep reading keys of layer i+1 while the device stage's eviction appends to them (append only
// writes rows past n_tokens, which readers of the first n_tokens rows never touch); (2) no copy
// ever runs on the decode critical path. The slack is bounded by the context: reserved bytes =
// (context - W) * n_kv_heads * head_dim * 2 per store, and with a lazily committing allocator
// (the plain allocator's large blocks are mmap'd; the NUMA allocator mbinds before first touch)
// untouched rows cost address space only — resident slack < one page per KV head.
// StoreGrowth::kGrow is for memory-tight runs whose sequences stay far below the context:
// capacity = round_up(max(needed, 1.5 * old), grow_chunk_tokens), capped at max_offloaded, so
// slack < max(grow_chunk_tokens, needed / 2) tokens + the chunk rounding; growth relocates the
// store (amortised O(1) copies per token) and bumps generation(): pointers and KeysViews taken
// before an append are invalid after it under kGrow.
//
// BAD CONFIGURATION. A negative window budget, a non-positive context, head count or head dim
// throw hybridgen::Error naming the value. A window LARGER than the context is CLAMPED to the
// context (documented clamp: "everything stays on the device", which is what the user asked for;
// window() reports the effective budget, requested_window() the one given). K_min above the
// offloaded count is the feedback scheduler's business (src/runtime/scheduler.h), not checked
// here.
//
// Thread safety: one writer (append) per TieredLayerKv at a time; concurrent readers of rows
// below the n_tokens they observed are fine under kPreallocate.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cpu/logits.h"
#include "kv/kv_cache.h"  // Tier
#include "kv/token_selector.h"
#include "memory/allocator.h"

namespace hybridgen::kv {

// ---- Token mapper ---------------------------------------------------------------------------

struct PosRange {
  int32_t begin = 0;  // first position
  int32_t end = 0;    // one past the last
  int32_t size() const { return end - begin; }
  bool operator==(const PosRange&) const = default;
};

// Positions [0, length()) split between the tiers. Each tier's ranges are ascending, disjoint,
// non-empty and coalesced (no two adjacent); together the tiers cover [0, length()) exactly.
// Tier-local index of a position = its rank among the tier's positions; the host stores hold
// offloaded tokens in that order (the key store's token i is host-local index i) and the
// window's tier-local index i lives in window slot WindowStore::slot_of(i).
// With FIFO (least-recently-generated) eviction: kHost = {[0, n_off)}, kDevice = {[n_off, len)}.
// The representation already allows any interleaving (a future non-contiguous placement).
class TokenMap {
 public:
  const std::vector<PosRange>& ranges(Tier t) const { return t == Tier::kHost ? host_ : window_; }
  int count(Tier t) const { return t == Tier::kHost ? n_host_ : n_window_; }
  int length() const { return n_host_ + n_window_; }
  // Tier of a position (binary search over the ranges). Throws for pos outside [0, length()).
  Tier tier_of(int pos) const;
  // Tier-local index of pos within tier_of(pos).
  int local_index(int pos) const;
  // Position of tier-local index i of tier t (binary search over range prefix counts).
  int position(Tier t, int i) const;

  // Mutations used by the eviction engine.
  void append(Tier t, int n);       // n new positions at the end go to tier t
  void move_oldest_to_host(int n);  // the window's n lowest positions move to the host tier
  void clear();

 private:
  static void push(std::vector<PosRange>& rs, PosRange r);
  std::vector<PosRange> host_, window_;
  int n_host_ = 0, n_window_ = 0;
};

// ---- Window (device tier) -------------------------------------------------------------------

// The window's K/V for one sequence and layer: `capacity()` slots in a ring, K and V float32,
// layout per KV head [capacity, head_dim] (slot-major). The owner (TieredLayerKv) decides which
// slot holds which token; with FIFO, window-local index i is in slot (first_slot + i) % capacity.
class WindowStore {
 public:
  virtual ~WindowStore() = default;
  virtual int capacity() const = 0;
  // Writes n consecutive slots [slot, slot + n) (no wrap: slot + n <= capacity) from
  // k, v: [n, n_kv_heads, head_dim] (token-major, as the model produces them).
  virtual void write(int slot, int n, const float* k, const float* v) = 0;
  // Exports n consecutive slots [slot, slot + n) (no wrap), rounded to bf16, to host stores:
  // KV head h, slot slot+i goes to k_dst + h * dst_head_stride + i * head_dim (same for v_dst).
  // The CUDA implementation converts on the device and copies device-to-host.
  virtual void export_bf16(int slot, int n, uint16_t* k_dst, uint16_t* v_dst,
                           int64_t dst_head_stride) const = 0;
  // Bytes of device memory the window holds (K and V, all slots).
  virtual uint64_t capacity_bytes() const = 0;
  // Host-readable float32 K/V (KV head h: [capacity, head_dim]); nullptr when the window lives
  // in device memory. The CPU backend's attention and the tests read through these.
  virtual const float* host_keys(int kv_head) const = 0;
  virtual const float* host_values(int kv_head) const = 0;
};

// The CPU backend's window: ordinary host memory from the allocator (role kOther).
class HostWindowStore final : public WindowStore {
 public:
  HostWindowStore(memory::HostAllocator& alloc, int n_kv_heads, int head_dim, int capacity);
  ~HostWindowStore() override;
  HostWindowStore(const HostWindowStore&) = delete;
  HostWindowStore& operator=(const HostWindowStore&) = delete;

  int capacity() const override { return capacity_; }
  void write(int slot, int n, const float* k, const float* v) override;
  void export_bf16(int slot, int n, uint16_t* k_dst, uint16_t* v_dst,
                   int64_t dst_head_stride) const override;
  uint64_t capacity_bytes() const override { return bytes_; }
  const float* host_keys(int h) const override { return k_ + head_offset(h); }
  const float* host_values(int h) const override { return v_ + head_offset(h); }

 private:
  int64_t head_offset(int h) const { return static_cast<int64_t>(h) * capacity_ * head_dim_; }
  memory::HostAllocator& alloc_;
  int n_kv_heads_, head_dim_, capacity_;
  uint64_t bytes_ = 0;  // of both K and V
  float* k_ = nullptr;
  float* v_ = nullptr;
};

// Makes the window store of one (sequence, layer); the CUDA backend will pass its own.
using WindowFactory =
    std::function<std::unique_ptr<WindowStore>(int n_kv_heads, int head_dim, int capacity)>;

// ---- Host stores ----------------------------------------------------------------------------

enum class StoreGrowth : uint8_t { kPreallocate = 0, kGrow = 1 };

// One host store of offloaded tokens (keys or values), bf16, [n_kv_heads, capacity, head_dim].
class OffloadStore {
 public:
  OffloadStore(memory::HostAllocator& alloc, memory::Role role, int n_kv_heads, int head_dim,
               int max_tokens, StoreGrowth growth, int grow_chunk_tokens);
  ~OffloadStore();
  OffloadStore(const OffloadStore&) = delete;
  OffloadStore& operator=(const OffloadStore&) = delete;

  // Makes room for `total` tokens (no-op if there is). PRECOND: total <= max_tokens.
  void reserve(int total);
  // Rows [n_tokens, n_tokens + n) become valid (the caller has written them via row()).
  void commit(int n) { n_tokens_ += n; }
  void clear() { n_tokens_ = 0; }

  int n_tokens() const { return n_tokens_; }
  int capacity() const { return capacity_; }
  int max_tokens() const { return max_tokens_; }
  int64_t head_stride() const { return static_cast<int64_t>(capacity_) * head_dim_; }
  const uint16_t* data() const { return data_; }
  uint16_t* data() { return data_; }
  const uint16_t* row(int h, int i) const {
    return data_ + h * head_stride() + int64_t{i} * head_dim_;
  }
  uint16_t* row(int h, int i) { return data_ + h * head_stride() + int64_t{i} * head_dim_; }
  // Bumped whenever the data pointer changes (kGrow relocation).
  uint64_t generation() const { return generation_; }

  // The stored tokens as the logits calculator reads them (bf16, token-major per KV head).
  cpu::KeysView keys_view() const;

  uint64_t row_bytes() const { return static_cast<uint64_t>(n_kv_heads_) * head_dim_ * 2; }
  uint64_t used_bytes() const { return row_bytes() * n_tokens_; }      // exact offloaded bytes
  uint64_t reserved_bytes() const { return row_bytes() * capacity_; }  // allocated

 private:
  memory::HostAllocator& alloc_;
  memory::Role role_;
  int n_kv_heads_, head_dim_, max_tokens_;
  StoreGrowth growth_;
  int chunk_;
  int n_tokens_ = 0, capacity_ = 0;
  uint16_t* data_ = nullptr;
  uint64_t generation_ = 0;
};

// ---- One sequence, one layer ----------------------------------------------------------------

struct TieredConfig {
  int n_kv_heads = 0;
  int head_dim = 0;
  int context = 0;  // tokens per sequence (the -c context size)
  int window = 0;   // device window budget in tokens: 0 = everything offloaded; >= context = none
  StoreGrowth growth = StoreGrowth::kPreallocate;
  int grow_chunk_tokens = 256;  // kGrow only: capacity granularity
};

// Byte accounting of one or many (sequence, layer) stores. "used": bytes of tokens held;
// "reserved": bytes allocated. Formulas (E = n_kv_heads * head_dim):
//   window_used     = n_window * E * 4 * 2          (K and V, float32; bf16 on CUDA: * 2 * 2)
//   window_reserved = W * E * 4 * 2                 (allocated on first use of the window)
//   key_used        = n_offloaded * E * 2           (bf16) ; value_used likewise
//   key_reserved    = capacity * E * 2              (capacity = context - W under kPreallocate)
//   staging         = VStaging::bytes() = max_k * E * 2
struct TierBytes {
  uint64_t window_used = 0, window_reserved = 0;
  uint64_t key_used = 0, key_reserved = 0;
  uint64_t value_used = 0, value_reserved = 0;
  TierBytes& operator+=(const TierBytes& o);
};

class TieredLayerKv {
 public:
  // cfg must be validated (TieredKvCache does it; validate_config below).
  TieredLayerKv(const TieredConfig& cfg, memory::HostAllocator& alloc,
                const WindowFactory& make_window);

  // Appends n tokens at positions [length(), length() + n). k, v: [n, n_kv_heads, head_dim]
  // float32. Evicts least-recently-generated tokens to the host stores as needed. Throws if
  // the context would overflow.
  void append(int n, const float* k, const float* v);
  void clear();  // empties everything, keeps allocations

  int length() const { return map_.length(); }
  int n_offloaded() const { return map_.count(Tier::kHost); }
  int n_window() const { return map_.count(Tier::kDevice); }
  int window_budget() const { return window_budget_; }
  const TokenMap& map() const { return map_; }

  // Window: null until the first token enters it (and always for W = 0).
  const WindowStore* window() const { return window_.get(); }
  // Slot of window-local index i (i in [0, n_window())).
  int window_slot(int i) const { return (first_slot_ + i) % window_budget_; }
  int window_first_slot() const { return first_slot_; }

  const OffloadStore& key_store() const { return keys_; }
  const OffloadStore& value_store() const { return values_; }
  cpu::KeysView keys_view() const { return keys_.keys_view(); }

  TierBytes bytes() const;

 private:
  void offload_from_window(int n);  // the n oldest window tokens to the host stores

  int n_kv_heads_, head_dim_, context_, window_budget_;
  memory::HostAllocator& alloc_;
  WindowFactory make_window_;
  std::unique_ptr<WindowStore> window_;
  int first_slot_ = 0;  // slot of the oldest window token
  OffloadStore keys_, values_;
  TokenMap map_;
};

// ---- Token concatenator ---------------------------------------------------------------------

// Merges per-tier rows (width floats each; width 1 for logits) into original position order,
// by a linear merge of the tiers' ascending ranges (no sorting):
//   host rows:   host_rows[j * width ...] belongs to host-local index host_sel[j] (host_sel
//                ascending, n_sel entries); host_sel == nullptr means every host token
//                (n_sel must equal the host count, row j = host-local index j).
//   window rows: indexed by window SLOT (the device computes logits over its ring in slot
//                order, one contiguous pass): window-local index i's row is
//                window_rows[kv.window_slot(i) * width ...]. Every window token is included.
//   out:         (n_sel + n_window) * width floats, ascending positions.
// positions (optional): out_positions[r] = position of output row r.
void concat_tiers(const TieredLayerKv& kv, const int32_t* host_sel, int n_sel,
                  const float* host_rows, const float* window_rows, int width, float* out,
                  int32_t* out_positions = nullptr);

// ---- V staging ------------------------------------------------------------------------------

// Gathers the selected offloaded V rows into one staging buffer, reused across calls:
// KV head h's rows at data() + h * sel.k * head_dim, [sel.k, head_dim] bf16, in selection
// (ascending position) order. Size fixed at construction: max_k * n_kv_heads * head_dim * 2
// bytes (max_k: the largest K the scheduler may pick, at most the largest offloaded count).
class VStaging {
 public:
  VStaging(memory::HostAllocator& alloc, int n_kv_heads, int head_dim, int max_k);
  ~VStaging();
  VStaging(const VStaging&) = delete;
  VStaging& operator=(const VStaging&) = delete;

  // PRECOND-checked: sel.n_kv_heads == n_kv_heads, sel.k <= max_k, every index < the store's
  // n_tokens (throws hybridgen::Error otherwise). OpenMP over KV heads.
  void gather(const OffloadStore& values, const TokenSelection& sel);
  const uint16_t* data() const { return data_; }
  const uint16_t* head(int h, int k) const {
    return data_ + static_cast<int64_t>(h) * k * head_dim_;
  }
  int max_k() const { return max_k_; }
  uint64_t bytes() const { return bytes_; }

 private:
  memory::HostAllocator& alloc_;
  int n_kv_heads_, head_dim_, max_k_;
  uint64_t bytes_ = 0;
  uint16_t* data_ = nullptr;
};

// ---- All sequences and layers ---------------------------------------------------------------

// Throws hybridgen::Error for a bad configuration; returns cfg with the window clamped to the
// context (see the header comment).
TieredConfig validate_config(TieredConfig cfg);

class TieredKvCache {
 public:
  // make_window: null = HostWindowStore on `alloc`.
  TieredKvCache(int n_layers, const TieredConfig& cfg, int max_sequences,
                memory::HostAllocator& alloc, WindowFactory make_window = nullptr);

  int open_sequence();
  void close_sequence(int seq);
  TieredLayerKv& layer(int seq, int layer);
  const TieredLayerKv& layer(int seq, int layer) const;

  const TieredConfig& config() const { return cfg_; }  // effective (clamped) configuration
  int requested_window() const { return requested_window_; }
  int n_layers() const { return n_layers_; }
  TierBytes bytes() const;  // over all open sequences and layers

 private:
  struct Sequence {
    bool open = false;
    std::vector<std::unique_ptr<TieredLayerKv>> layers;
  };
  void check_seq(int seq) const;
  int n_layers_;
  TieredConfig cfg_;
  int requested_window_;
  memory::HostAllocator& alloc_;
  WindowFactory make_window_;
  std::vector<Sequence> seqs_;
};

}  // namespace hybridgen::kv
