#include "kv/kv_cache.h"

#include <cstring>
#include <string>

#include "util/check.h"

namespace hybridgen::kv {

KvCacheManager::KvCacheManager(KvShape shape, int capacity, int max_sequences)
    : shape_(shape), capacity_(capacity), seqs_(max_sequences) {
  HG_CHECK(shape.n_layers > 0 && shape.n_kv_heads > 0 && shape.head_dim > 0,
           "KV cache: invalid shape");
  HG_CHECK(capacity > 0, "KV cache: context size must be positive");
  HG_CHECK(max_sequences > 0, "KV cache: need at least one sequence");
}

void KvCacheManager::check_seq(int seq) const {
  HG_CHECK(seq >= 0 && seq < max_sequences() && seqs_[seq].open,
           "KV cache: sequence " + std::to_string(seq) + " is not open");
}

int KvCacheManager::open_sequence() {
  for (size_t i = 0; i < seqs_.size(); ++i) {
    Sequence& s = seqs_[i];
    if (s.open) continue;
    s.open = true;
    s.length = 0;
    return static_cast<int>(i);
  }
  fail("KV cache: all " + std::to_string(seqs_.size()) +
       " sequence slots are in use (raise the batch size)");
}

void KvCacheManager::close_sequence(int seq) {
  check_seq(seq);
  seqs_[seq].open = false;
  seqs_[seq].length = 0;
}

int KvCacheManager::reserve(int seq, int n) {
  check_seq(seq);
  Sequence& s = seqs_[seq];
  HG_CHECK(n >= 0 && static_cast<int64_t>(s.length) + n <= capacity_,
           "context full: sequence " + std::to_string(seq) + " has " + std::to_string(s.length) +
               " tokens and needs " + std::to_string(n) + " more, but the context size is " +
               std::to_string(capacity_) + " (raise it with -c / --ctx-size)");
  int first = s.length;
  s.length += n;
  return first;
}

void KvCacheManager::write(int seq, int layer, int pos, const float* k, const float* v) {
  Sequence& s = seqs_[seq];
  if (s.k.empty()) {
    // Host storage is allocated on the first write (a backend that keeps K/V in its own
    // memory uses the manager for positions and placement only) and kept for reuse.
    const size_t n = static_cast<size_t>(shape_.n_layers) * layer_stride();
    s.k.assign(n, 0.f);
    s.v.assign(n, 0.f);
  }
  const int64_t base = layer * layer_stride();
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    const int64_t off = base + (static_cast<int64_t>(h) * capacity_ + pos) * shape_.head_dim;
    std::memcpy(&s.k[off], k + static_cast<int64_t>(h) * shape_.head_dim,
                sizeof(float) * shape_.head_dim);
    std::memcpy(&s.v[off], v + static_cast<int64_t>(h) * shape_.head_dim,
                sizeof(float) * shape_.head_dim);
  }
}

LayerView KvCacheManager::view(int seq, int layer) const {
  check_seq(seq);
  const Sequence& s = seqs_[seq];
  LayerView view;
  view.k_ = s.k.data() + layer * layer_stride();
  view.v_ = s.v.data() + layer * layer_stride();
  view.capacity_ = capacity_;
  view.head_dim_ = shape_.head_dim;
  view.n_tokens_ = s.length;
  return view;
}

int KvCacheManager::length(int seq) const {
  check_seq(seq);
  return seqs_[seq].length;
}

Tier KvCacheManager::tier_of(int seq, int pos) const {
  check_seq(seq);
  HG_CHECK(pos >= 0 && pos < seqs_[seq].length,
           "KV cache: position " + std::to_string(pos) + " is not cached");
  return Tier::kDevice;  // one tier until the hybrid runtime splits sequences
}

uint64_t KvCacheManager::bytes_per_token() const {
  return 2ull * shape_.n_layers * shape_.n_kv_heads * shape_.head_dim * sizeof(float);
}

uint64_t KvCacheManager::bytes_in(Tier tier) const {
  if (tier != Tier::kDevice) return 0;
  uint64_t tokens = 0;
  for (const Sequence& s : seqs_)
    if (s.open) tokens += s.length;
  return tokens * bytes_per_token();
}

}  // namespace hybridgen::kv
