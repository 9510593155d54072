// The KV-cache manager: owns every cached key and value, per sequence and layer, and records
// where each cached token lives. Attention reads K and V only through it, so that later work
// can split a sequence's tokens between the device-resident window and host stores without
// touching the attention code's callers.
#pragma once
#include <cstdint>
#include <vector>

namespace hybridgen::kv {

// Where a cached token's K/V lives. With one tier (policy `full`) everything is in kDevice:
// the memory of the backend that runs the layer (the CPU backend's memory on a CPU machine).
enum class Tier : uint8_t { kDevice = 0, kHost = 1 };

struct KvShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
};

// Read access to one sequence's cached K/V at one layer.
// keys/values are stored head-major then token-major: [n_kv_heads, capacity, head_dim], so one
// KV head's keys stream from memory in one pass for all of its query heads.
class LayerView {
 public:
  const float* key(int kv_head, int pos) const {
    return k_ + (static_cast<int64_t>(kv_head) * capacity_ + pos) * head_dim_;
  }
  const float* value(int kv_head, int pos) const {
    return v_ + (static_cast<int64_t>(kv_head) * capacity_ + pos) * head_dim_;
  }
  int n_tokens() const { return n_tokens_; }  // positions [0, n_tokens) are readable

 private:
  friend class KvCacheManager;
  const float* k_ = nullptr;
  const float* v_ = nullptr;
  int64_t capacity_ = 0;
  int head_dim_ = 0;
  int n_tokens_ = 0;
};

class KvCacheManager {
 public:
  // capacity: tokens per sequence (the context size); max_sequences: sequences at once.
  KvCacheManager(KvShape shape, int capacity, int max_sequences);

  // A free sequence slot, emptied. Throws if all max_sequences are in use.
  int open_sequence();
  void close_sequence(int seq);

  // Makes room for n more tokens at the end of `seq` and returns the first new position.
  // Throws (naming the context size and the -c flag) if the sequence would exceed capacity.
  int reserve(int seq, int n);
  // Writes one token's K and V for one layer. k, v: [n_kv_heads, head_dim].
  // PRECOND: pos was reserved.
  void write(int seq, int layer, int pos, const float* k, const float* v);
  // Readable view of positions [0, length(seq)).
  LayerView view(int seq, int layer) const;

  int length(int seq) const;
  bool is_open(int seq) const { return seq >= 0 && seq < max_sequences() && seqs_[seq].open; }
  int capacity() const { return capacity_; }
  int max_sequences() const { return static_cast<int>(seqs_.size()); }
  const KvShape& shape() const { return shape_; }

  // Token mapper: which tier holds `pos` of `seq`.
  Tier tier_of(int seq, int pos) const;
  // Bytes of K+V held in a tier across all open sequences (used tokens, not capacity).
  uint64_t bytes_in(Tier tier) const;
  uint64_t bytes_per_token() const;  // K+V over all layers

 private:
  struct Sequence {
    bool open = false;
    int length = 0;
    std::vector<float> k;  // [n_layers][n_kv_heads, capacity, head_dim]
    std::vector<float> v;  // same layout
  };
  void check_seq(int seq) const;
  int64_t layer_stride() const {
    return static_cast<int64_t>(shape_.n_kv_heads) * capacity_ * shape_.head_dim;
  }

  KvShape shape_;
  int capacity_;
  std::vector<Sequence> seqs_;
};

}  // namespace hybridgen::kv
