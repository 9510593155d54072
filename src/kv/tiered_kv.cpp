#include "kv/tiered_kv.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "util/check.h"

namespace hybridgen::kv {

namespace {

// Same rounding as hybridgen::f32_to_bf16 (model/dequant.h): nearest even, NaN kept quiet.
// Inlined here because eviction converts whole rows on the decode path.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 64u);
  return static_cast<uint16_t>((u + (0x7FFFu + ((u >> 16) & 1u))) >> 16);
}

inline void row_to_bf16(const float* src, uint16_t* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
}

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

// ---- TokenMap -------------------------------------------------------------------------------

void TokenMap::push(std::vector<PosRange>& rs, PosRange r) {
  if (r.size() <= 0) return;
  if (!rs.empty() && rs.back().end == r.begin) {
    rs.back().end = r.end;
  } else {
    rs.push_back(r);
  }
}

void TokenMap::append(Tier t, int n) {
  HG_CHECK(n >= 0, "token map: negative append");
  const int len = length();
  if (t == Tier::kHost) {
    push(host_, {len, len + n});
    n_host_ += n;
  } else {
    push(window_, {len, len + n});
    n_window_ += n;
  }
}

void TokenMap::move_oldest_to_host(int n) {
  HG_CHECK(n >= 0 && n <= n_window_,
           "token map: moving " + str(n) + " of " + str(n_window_) + " window tokens");
  int left = n;
  size_t consumed = 0;
  while (left > 0) {
    PosRange& r = window_[consumed];
    // Host-local indices are store rows: moved positions must come after every host position.
    HG_CHECK(host_.empty() || host_.back().end <= r.begin,
             "token map: eviction would put an older position after a newer one in the store");
    const int take = std::min(left, r.size());
    push(host_, {r.begin, r.begin + take});
    r.begin += take;
    left -= take;
    if (r.size() == 0) ++consumed;
  }
  window_.erase(window_.begin(), window_.begin() + static_cast<int64_t>(consumed));
  n_host_ += n;
  n_window_ -= n;
}

void TokenMap::clear() {
  host_.clear();
  window_.clear();
  n_host_ = n_window_ = 0;
}

namespace {
// Index of the range holding pos, or -1.
int find_range(const std::vector<PosRange>& rs, int pos) {
  auto it = std::upper_bound(rs.begin(), rs.end(), pos,
                             [](int p, const PosRange& r) { return p < r.begin; });
  if (it == rs.begin()) return -1;
  --it;
  return pos < it->end ? static_cast<int>(it - rs.begin()) : -1;
}
}  // namespace

Tier TokenMap::tier_of(int pos) const {
  HG_CHECK(pos >= 0 && pos < length(),
           "token map: position " + str(pos) + " outside [0, " + str(length()) + ")");
  return find_range(host_, pos) >= 0 ? Tier::kHost : Tier::kDevice;
}

int TokenMap::local_index(int pos) const {
  const Tier t = tier_of(pos);
  const auto& rs = ranges(t);
  const int ri = find_range(rs, pos);
  int base = 0;
  for (int i = 0; i < ri; ++i) base += rs[i].size();
  return base + (pos - rs[ri].begin);
}

int TokenMap::position(Tier t, int i) const {
  HG_CHECK(i >= 0 && i < count(t), "token map: local index " + str(i) + " outside the tier");
  for (const PosRange& r : ranges(t)) {
    if (i < r.size()) return r.begin + i;
    i -= r.size();
  }
  fail("token map: inconsistent ranges");
}

// ---- HostWindowStore ------------------------------------------------------------------------

HostWindowStore::HostWindowStore(memory::HostAllocator& alloc, int n_kv_heads, int head_dim,
                                 int capacity)
    : alloc_(alloc), n_kv_heads_(n_kv_heads), head_dim_(head_dim), capacity_(capacity) {
  HG_CHECK(n_kv_heads > 0 && head_dim > 0 && capacity > 0, "window store: invalid shape");
  const uint64_t one = static_cast<uint64_t>(n_kv_heads) * capacity * head_dim * sizeof(float);
  bytes_ = 2 * one;
  k_ = static_cast<float*>(alloc_.allocate(one, memory::Role::kOther));
  try {
    v_ = static_cast<float*>(alloc_.allocate(one, memory::Role::kOther));
  } catch (...) {
    alloc_.deallocate(k_, one);
    throw;
  }
}

HostWindowStore::~HostWindowStore() {
  alloc_.deallocate(k_, bytes_ / 2);
  alloc_.deallocate(v_, bytes_ / 2);
}

void HostWindowStore::write(int slot, int n, const float* k, const float* v) {
  HG_CHECK(slot >= 0 && n >= 0 && slot + n <= capacity_, "window store: write past the ring");
  const size_t row = static_cast<size_t>(head_dim_) * sizeof(float);
  for (int h = 0; h < n_kv_heads_; ++h) {
    float* kd = k_ + head_offset(h) + static_cast<int64_t>(slot) * head_dim_;
    float* vd = v_ + head_offset(h) + static_cast<int64_t>(slot) * head_dim_;
    for (int i = 0; i < n; ++i) {
      const int64_t src = (static_cast<int64_t>(i) * n_kv_heads_ + h) * head_dim_;
      std::memcpy(kd + static_cast<int64_t>(i) * head_dim_, k + src, row);
      std::memcpy(vd + static_cast<int64_t>(i) * head_dim_, v + src, row);
    }
  }
}

void HostWindowStore::export_bf16(int slot, int n, uint16_t* k_dst, uint16_t* v_dst,
                                  int64_t dst_head_stride) const {
  HG_CHECK(slot >= 0 && n >= 0 && slot + n <= capacity_, "window store: export past the ring");
  for (int h = 0; h < n_kv_heads_; ++h) {
    const float* ks = k_ + head_offset(h) + static_cast<int64_t>(slot) * head_dim_;
    const float* vs = v_ + head_offset(h) + static_cast<int64_t>(slot) * head_dim_;
    // Rows are consecutive on both sides: one flat conversion per head.
    const int64_t m = static_cast<int64_t>(n) * head_dim_;
    uint16_t* kd = k_dst + h * dst_head_stride;
    uint16_t* vd = v_dst + h * dst_head_stride;
    for (int64_t i = 0; i < m; ++i) kd[i] = to_bf16(ks[i]);
    for (int64_t i = 0; i < m; ++i) vd[i] = to_bf16(vs[i]);
  }
}

// ---- OffloadStore ---------------------------------------------------------------------------

OffloadStore::OffloadStore(memory::HostAllocator& alloc, memory::Role role, int n_kv_heads,
                           int head_dim, int max_tokens, StoreGrowth growth, int grow_chunk_tokens)
    : alloc_(alloc),
      role_(role),
      n_kv_heads_(n_kv_heads),
      head_dim_(head_dim),
      max_tokens_(max_tokens),
      growth_(growth),
      chunk_(std::max(1, grow_chunk_tokens)) {}

OffloadStore::~OffloadStore() {
  if (data_) alloc_.deallocate(data_, reserved_bytes());
}

void OffloadStore::reserve(int total) {
  if (total <= capacity_) return;
  HG_CHECK(total <= max_tokens_, std::string(memory::role_name(role_)) + " store: " + str(total) +
                                     " tokens exceed its maximum of " + str(max_tokens_));
  int64_t cap;
  if (growth_ == StoreGrowth::kPreallocate) {
    cap = max_tokens_;
  } else {
    cap = std::max<int64_t>(total, capacity_ + capacity_ / 2);
    cap = (cap + chunk_ - 1) / chunk_ * chunk_;
    cap = std::min<int64_t>(cap, max_tokens_);
  }
  const int new_cap = static_cast<int>(cap);
  const uint64_t bytes = row_bytes() * static_cast<uint64_t>(new_cap);
  auto* nd = static_cast<uint16_t*>(alloc_.allocate(bytes, role_));
  if (data_) {
    const size_t used = static_cast<size_t>(n_tokens_) * head_dim_ * sizeof(uint16_t);
    const int64_t new_stride = static_cast<int64_t>(new_cap) * head_dim_;
    for (int h = 0; h < n_kv_heads_; ++h)
      if (used) std::memcpy(nd + h * new_stride, data_ + h * head_stride(), used);
    alloc_.deallocate(data_, reserved_bytes());
  }
  data_ = nd;
  capacity_ = new_cap;
  ++generation_;
}

cpu::KeysView OffloadStore::keys_view() const {
  cpu::KeysView v;
  v.data = data_;
  v.dtype = cpu::KeyDType::kBF16;
  v.head_stride = head_stride();
  v.token_stride = head_dim_;
  return v;
}

// ---- TieredLayerKv --------------------------------------------------------------------------

TierBytes& TierBytes::operator+=(const TierBytes& o) {
  window_used += o.window_used;
  window_reserved += o.window_reserved;
  key_used += o.key_used;
  key_reserved += o.key_reserved;
  value_used += o.value_used;
  value_reserved += o.value_reserved;
  return *this;
}

TieredLayerKv::TieredLayerKv(const TieredConfig& cfg, memory::HostAllocator& alloc,
                             const WindowFactory& make_window)
    : n_kv_heads_(cfg.n_kv_heads),
      head_dim_(cfg.head_dim),
      context_(cfg.context),
      window_budget_(cfg.window),
      alloc_(alloc),
      make_window_(make_window),
      keys_(alloc, memory::Role::kKeys, cfg.n_kv_heads, cfg.head_dim, cfg.context - cfg.window,
            cfg.growth, cfg.grow_chunk_tokens),
      values_(alloc, memory::Role::kValues, cfg.n_kv_heads, cfg.head_dim, cfg.context - cfg.window,
              cfg.growth, cfg.grow_chunk_tokens) {}

void TieredLayerKv::clear() {
  map_.clear();
  keys_.clear();
  values_.clear();
  first_slot_ = 0;
}

void TieredLayerKv::offload_from_window(int n) {
  const int o = keys_.n_tokens();
  int done = 0;
  while (done < n) {
    const int seg = std::min(n - done, window_budget_ - first_slot_);
    window_->export_bf16(first_slot_, seg, keys_.row(0, o + done), values_.row(0, o + done),
                         keys_.head_stride());
    first_slot_ = (first_slot_ + seg) % window_budget_;
    done += seg;
  }
  keys_.commit(n);
  values_.commit(n);
  map_.move_oldest_to_host(n);
}

void TieredLayerKv::append(int n, const float* k, const float* v) {
  const int len = length();
  HG_CHECK(n >= 0 && static_cast<int64_t>(len) + n <= context_,
           "context full: the tiered KV store has " + str(len) + " tokens and needs " + str(n) +
               " more, but the context size is " + str(context_) +
               " (raise it with -c / --ctx-size)");
  if (n == 0) return;
  HG_CHECK(k && v, "tiered KV: null K/V");
  const int total = len + n;
  const int target_off = std::max(0, total - window_budget_);
  const int need = target_off - n_offloaded();
  const int evict_old = std::min(n_window(), need);
  const int direct = need - evict_old;  // > 0 only when the whole old window left
  if (need > 0) {
    keys_.reserve(target_off);
    values_.reserve(target_off);
  }
  if (evict_old > 0) offload_from_window(evict_old);
  if (direct > 0) {
    // New tokens that would leave the window at once go straight to the host stores.
    const int o = keys_.n_tokens();
    const int64_t tok_stride = static_cast<int64_t>(n_kv_heads_) * head_dim_;
#pragma omp parallel for schedule(static) if (static_cast <int64_t>(direct) * tok_stride > 65536)
    for (int h = 0; h < n_kv_heads_; ++h) {
      for (int t = 0; t < direct; ++t) {
        const int64_t src = t * tok_stride + static_cast<int64_t>(h) * head_dim_;
        row_to_bf16(k + src, keys_.row(h, o + t), head_dim_);
        row_to_bf16(v + src, values_.row(h, o + t), head_dim_);
      }
    }
    keys_.commit(direct);
    values_.commit(direct);
    map_.append(Tier::kHost, direct);
    first_slot_ = 0;  // the window is empty here
  }
  const int rest = n - direct;
  if (rest > 0) {
    if (!window_) {
      window_ = make_window_(n_kv_heads_, head_dim_, window_budget_);
      HG_CHECK(window_ && window_->capacity() == window_budget_,
               "tiered KV: the window factory returned a wrong-sized window");
    }
    const int64_t tok_stride = static_cast<int64_t>(n_kv_heads_) * head_dim_;
    int done = 0;
    int slot = (first_slot_ + n_window()) % window_budget_;
    while (done < rest) {
      const int seg = std::min(rest - done, window_budget_ - slot);
      const int64_t src = (static_cast<int64_t>(direct) + done) * tok_stride;
      window_->write(slot, seg, k + src, v + src);
      slot = (slot + seg) % window_budget_;
      done += seg;
    }
    map_.append(Tier::kDevice, rest);
  }
}

TierBytes TieredLayerKv::bytes() const {
  TierBytes b;
  // The window's bytes per token from its store (float32 on the CPU backend, bf16 on CUDA).
  b.window_reserved = window_ ? window_->capacity_bytes() : 0;
  b.window_used =
      window_ ? window_->capacity_bytes() / uint64_t(window_->capacity()) * uint64_t(n_window())
              : 0;
  b.key_used = keys_.used_bytes();
  b.key_reserved = keys_.reserved_bytes();
  b.value_used = values_.used_bytes();
  b.value_reserved = values_.reserved_bytes();
  return b;
}

// ---- Token concatenator ---------------------------------------------------------------------

namespace {
// Walks a tier's ascending ranges, turning ascending tier-local indices into positions.
struct RangeCursor {
  const std::vector<PosRange>& rs;
  size_t ri = 0;
  int base = 0;  // tier-local index of rs[ri].begin
  int position(int local) {
    while (local >= base + rs[ri].size()) {
      base += rs[ri].size();
      ++ri;
    }
    return rs[ri].begin + (local - base);
  }
};
}  // namespace

void concat_tiers(const TieredLayerKv& kv, const int32_t* host_sel, int n_sel,
                  const float* host_rows, const float* window_rows, int width, float* out,
                  int32_t* out_positions) {
  const TokenMap& map = kv.map();
  const int n_host = map.count(Tier::kHost), n_win = map.count(Tier::kDevice);
  HG_CHECK(width > 0 && n_sel >= 0, "token concatenator: bad width or count");
  HG_CHECK(host_sel || n_sel == n_host,
           "token concatenator: without a selection, every host token (" + str(n_host) +
               ") must be given, not " + str(n_sel));
  HG_CHECK(n_sel == 0 || host_rows, "token concatenator: null host rows");
  HG_CHECK(n_win == 0 || window_rows, "token concatenator: null window rows");
  RangeCursor hc{map.ranges(Tier::kHost)}, wc{map.ranges(Tier::kDevice)};
  const size_t row = static_cast<size_t>(width) * sizeof(float);
  int j = 0, i = 0, r = 0;
  int prev = -1;
  int hpos = 0, wpos = 0;
  auto next_host = [&]() {
    if (j >= n_sel) return;
    const int s = host_sel ? host_sel[j] : j;
    HG_CHECK(s > prev && s < n_host,
             "token concatenator: host selection must be ascending "
             "indices below the offloaded count " +
                 str(n_host));
    prev = s;
    hpos = hc.position(s);
  };
  auto next_win = [&]() {
    if (i < n_win) wpos = wc.position(i);
  };
  next_host();
  next_win();
  while (j < n_sel || i < n_win) {
    const bool take_host = i >= n_win || (j < n_sel && hpos < wpos);
    if (take_host) {
      std::memcpy(out + static_cast<int64_t>(r) * width,
                  host_rows + static_cast<int64_t>(j) * width, row);
      if (out_positions) out_positions[r] = hpos;
      ++j;
      next_host();
    } else {
      std::memcpy(out + static_cast<int64_t>(r) * width,
                  window_rows + static_cast<int64_t>(kv.window_slot(i)) * width, row);
      if (out_positions) out_positions[r] = wpos;
      ++i;
      next_win();
    }
    ++r;
  }
}

// ---- VStaging -------------------------------------------------------------------------------

VStaging::VStaging(memory::HostAllocator& alloc, int n_kv_heads, int head_dim, int max_k)
    : alloc_(alloc), n_kv_heads_(n_kv_heads), head_dim_(head_dim), max_k_(max_k) {
  HG_CHECK(n_kv_heads > 0 && head_dim > 0, "V staging: invalid shape");
  HG_CHECK(max_k >= 0, "V staging: negative maximum K " + str(max_k));
  bytes_ = static_cast<uint64_t>(max_k) * n_kv_heads * head_dim * sizeof(uint16_t);
  if (bytes_) data_ = static_cast<uint16_t*>(alloc_.allocate(bytes_, memory::Role::kStaging));
}

VStaging::~VStaging() {
  if (data_) alloc_.deallocate(data_, bytes_);
}

void VStaging::gather(const OffloadStore& values, const TokenSelection& sel) {
  HG_CHECK(sel.n_kv_heads == n_kv_heads_, "V staging: selection has " + str(sel.n_kv_heads) +
                                              " KV heads, the store " + str(n_kv_heads_));
  HG_CHECK(sel.k >= 0 && sel.k <= max_k_,
           "V staging: K = " + str(sel.k) + " exceeds the staging size of " + str(max_k_));
  HG_CHECK(static_cast<int64_t>(sel.idx.size()) >= static_cast<int64_t>(sel.k) * n_kv_heads_,
           "V staging: selection too short");
  const int n = values.n_tokens();
  for (int64_t e = 0; e < static_cast<int64_t>(sel.k) * n_kv_heads_; ++e)
    HG_CHECK(sel.idx[e] >= 0 && sel.idx[e] < n, "V staging: selected token " + str(sel.idx[e]) +
                                                    " is not offloaded (" + str(n) + " are)");
  const size_t row = static_cast<size_t>(head_dim_) * sizeof(uint16_t);
  const int k = sel.k;
#pragma omp parallel for schedule(static) if (static_cast <int64_t>(k) * n_kv_heads_ > 4096)
  for (int h = 0; h < n_kv_heads_; ++h) {
    const int32_t* idx = sel.head(h);
    uint16_t* dst = data_ + static_cast<int64_t>(h) * k * head_dim_;
    for (int t = 0; t < k; ++t)
      std::memcpy(dst + static_cast<int64_t>(t) * head_dim_, values.row(h, idx[t]), row);
  }
}

// ---- TieredKvCache --------------------------------------------------------------------------

TieredConfig validate_config(TieredConfig cfg) {
  HG_CHECK(cfg.n_kv_heads > 0,
           "tiered KV: n_kv_heads must be positive, got " + str(cfg.n_kv_heads));
  HG_CHECK(cfg.head_dim > 0, "tiered KV: head_dim must be positive, got " + str(cfg.head_dim));
  HG_CHECK(cfg.context > 0, "tiered KV: the context size must be positive, got " +
                                str(cfg.context) + " (-c / --ctx-size)");
  HG_CHECK(cfg.window >= 0, "tiered KV: the device window budget must be >= 0 tokens, got " +
                                str(cfg.window) + " (0 offloads everything)");
  HG_CHECK(cfg.growth != StoreGrowth::kGrow || cfg.grow_chunk_tokens > 0,
           "tiered KV: grow_chunk_tokens must be positive, got " + str(cfg.grow_chunk_tokens));
  cfg.window = std::min(cfg.window, cfg.context);  // documented clamp: nothing offloaded
  return cfg;
}

TieredKvCache::TieredKvCache(int n_layers, const TieredConfig& cfg, int max_sequences,
                             memory::HostAllocator& alloc, WindowFactory make_window)
    : n_layers_(n_layers),
      cfg_(validate_config(cfg)),
      requested_window_(cfg.window),
      alloc_(alloc),
      make_window_(std::move(make_window)),
      seqs_(std::max(0, max_sequences)) {
  HG_CHECK(n_layers > 0, "tiered KV: n_layers must be positive, got " + str(n_layers));
  HG_CHECK(max_sequences > 0, "tiered KV: need at least one sequence, got " + str(max_sequences));
  if (!make_window_) {
    memory::HostAllocator* a = &alloc_;
    make_window_ = [a](int h, int d, int cap) {
      return std::make_unique<HostWindowStore>(*a, h, d, cap);
    };
  }
}

void TieredKvCache::check_seq(int seq) const {
  HG_CHECK(seq >= 0 && seq < static_cast<int>(seqs_.size()) && seqs_[seq].open,
           "tiered KV: sequence " + str(seq) + " is not open");
}

int TieredKvCache::open_sequence() {
  for (size_t s = 0; s < seqs_.size(); ++s) {
    Sequence& q = seqs_[s];
    if (q.open) continue;
    if (q.layers.empty()) {
      for (int l = 0; l < n_layers_; ++l)
        q.layers.push_back(std::make_unique<TieredLayerKv>(cfg_, alloc_, make_window_));
    }
    q.open = true;
    return static_cast<int>(s);
  }
  fail("tiered KV: all " + str(static_cast<int64_t>(seqs_.size())) +
       " sequence slots are in use (raise the batch size)");
}

void TieredKvCache::close_sequence(int seq) {
  check_seq(seq);
  for (auto& l : seqs_[seq].layers) l->clear();  // allocations kept for the next sequence
  seqs_[seq].open = false;
}

TieredLayerKv& TieredKvCache::layer(int seq, int l) {
  check_seq(seq);
  HG_CHECK(l >= 0 && l < n_layers_, "tiered KV: layer " + str(l) + " out of range");
  return *seqs_[seq].layers[l];
}

const TieredLayerKv& TieredKvCache::layer(int seq, int l) const {
  check_seq(seq);
  HG_CHECK(l >= 0 && l < n_layers_, "tiered KV: layer " + str(l) + " out of range");
  return *seqs_[seq].layers[l];
}

TierBytes TieredKvCache::bytes() const {
  TierBytes b;
  for (const Sequence& s : seqs_)
    for (const auto& l : s.layers) b += l->bytes();  // closed slots: used 0, reserved kept
  return b;
}

}  // namespace hybridgen::kv
