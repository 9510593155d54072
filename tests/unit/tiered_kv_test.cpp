#include "kv/tiered_kv.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "cpu/logits.h"
#include "hybridgen/error.h"
#include "model/dequant.h"

namespace hybridgen::kv {
namespace {

using memory::Role;

// Plain memory, with live bytes counted per role (to check that every store goes through the
// allocator with the right role, and that the accounting matches what was allocated).
class CountingAllocator : public memory::HostAllocator {
 public:
  void* allocate(size_t bytes, Role role) override {
    void* p = plain_->allocate(bytes, role);
    live_[role] += bytes;
    owner_[p] = role;
    return p;
  }
  void deallocate(void* ptr, size_t bytes) noexcept override {
    if (!ptr) return;
    live_[owner_[ptr]] -= bytes;
    owner_.erase(ptr);
    plain_->deallocate(ptr, bytes);
  }
  std::string name() const override { return "counting"; }
  uint64_t live(Role r) const {
    auto it = live_.find(r);
    return it == live_.end() ? 0 : it->second;
  }

 private:
  std::unique_ptr<memory::HostAllocator> plain_ = memory::make_plain_allocator();
  std::map<Role, uint64_t> live_;
  std::map<void*, Role> owner_;
};

float bf16_round(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Everything appended to one (sequence, layer): k, v [len, n_kv_heads, head_dim].
struct Appended {
  std::vector<float> k, v;
};

void append_random(TieredLayerKv& kv, Appended& rec, int n, int e, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> k(static_cast<size_t>(n) * e), v(k.size());
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  kv.append(n, k.data(), v.data());
  rec.k.insert(rec.k.end(), k.begin(), k.end());
  rec.v.insert(rec.v.end(), v.begin(), v.end());
}

// Checks every structural invariant and that nothing was lost.
void check_invariants(const TieredLayerKv& kv, const Appended& rec, int n_kv_heads, int head_dim,
                      int window) {
  const int len = kv.length();
  const int e = n_kv_heads * head_dim;
  ASSERT_EQ(static_cast<int>(rec.k.size()), len * e);
  const int n_off = std::max(0, len - window);
  ASSERT_EQ(kv.n_offloaded(), n_off);
  ASSERT_EQ(kv.n_window(), len - n_off);
  const TokenMap& map = kv.map();
  // FIFO: one range per non-empty tier; together exactly [0, len).
  if (n_off > 0) {
    ASSERT_EQ(map.ranges(Tier::kHost), (std::vector<PosRange>{{0, n_off}}));
  } else {
    ASSERT_TRUE(map.ranges(Tier::kHost).empty());
  }
  if (len > n_off) {
    ASSERT_EQ(map.ranges(Tier::kDevice), (std::vector<PosRange>{{n_off, len}}));
  } else {
    ASSERT_TRUE(map.ranges(Tier::kDevice).empty());
  }
  std::vector<int> seen(len, 0);
  for (Tier t : {Tier::kHost, Tier::kDevice})
    for (const PosRange& r : map.ranges(t))
      for (int p = r.begin; p < r.end; ++p) ++seen[p];
  for (int p = 0; p < len; ++p) ASSERT_EQ(seen[p], 1) << "position " << p;
  ASSERT_EQ(kv.key_store().n_tokens(), n_off);
  ASSERT_EQ(kv.value_store().n_tokens(), n_off);
  // Occupied window slots are exactly [0, n_window) (the device scans them in one pass).
  std::vector<int> slot_used(std::max(window, 1), 0);
  for (int i = 0; i < kv.n_window(); ++i) ++slot_used[kv.window_slot(i)];
  for (int s = 0; s < kv.n_window(); ++s) ASSERT_EQ(slot_used[s], 1);
  // Every row equals what was appended (bf16-rounded when offloaded).
  for (int p = 0; p < len; ++p) {
    const Tier t = map.tier_of(p);
    const int li = map.local_index(p);
    ASSERT_EQ(map.position(t, li), p);
    for (int h = 0; h < n_kv_heads; ++h) {
      const float* k0 = rec.k.data() + static_cast<int64_t>(p) * e + h * head_dim;
      const float* v0 = rec.v.data() + static_cast<int64_t>(p) * e + h * head_dim;
      if (t == Tier::kHost) {
        ASSERT_EQ(li, p);
        const uint16_t* ks = kv.key_store().row(h, li);
        const uint16_t* vs = kv.value_store().row(h, li);
        for (int i = 0; i < head_dim; ++i) {
          ASSERT_EQ(ks[i], f32_to_bf16(k0[i])) << "pos " << p << " head " << h;
          ASSERT_EQ(vs[i], f32_to_bf16(v0[i])) << "pos " << p << " head " << h;
        }
      } else {
        const int slot = kv.window_slot(li);
        const float* kw = kv.window()->host_keys(h) + static_cast<int64_t>(slot) * head_dim;
        const float* vw = kv.window()->host_values(h) + static_cast<int64_t>(slot) * head_dim;
        for (int i = 0; i < head_dim; ++i) {
          ASSERT_EQ(kw[i], k0[i]) << "pos " << p << " head " << h;
          ASSERT_EQ(vw[i], v0[i]) << "pos " << p << " head " << h;
        }
      }
    }
  }
  // Order restored: the concatenator yields positions 0..len-1 (positions as the payload).
  std::vector<float> host_rows(n_off), win_rows(std::max(window, 1), -1.f);
  for (int j = 0; j < n_off; ++j) host_rows[j] = static_cast<float>(j);
  for (int i = 0; i < kv.n_window(); ++i)
    win_rows[kv.window_slot(i)] = static_cast<float>(n_off + i);
  std::vector<float> out(len);
  std::vector<int32_t> pos(len);
  concat_tiers(kv, nullptr, n_off, host_rows.data(), win_rows.data(), 1, out.data(), pos.data());
  for (int p = 0; p < len; ++p) {
    ASSERT_EQ(pos[p], p);
    ASSERT_EQ(out[p], static_cast<float>(p));
  }
  // Bytes: exact arithmetic.
  const TierBytes b = kv.bytes();
  const uint64_t ue = static_cast<uint64_t>(e);
  EXPECT_EQ(b.window_used, static_cast<uint64_t>(kv.n_window()) * ue * 4 * 2);
  EXPECT_EQ(b.key_used, static_cast<uint64_t>(n_off) * ue * 2);
  EXPECT_EQ(b.value_used, static_cast<uint64_t>(n_off) * ue * 2);
  EXPECT_EQ(b.key_reserved, static_cast<uint64_t>(kv.key_store().capacity()) * ue * 2);
  EXPECT_EQ(b.window_reserved, kv.window() ? static_cast<uint64_t>(window) * ue * 4 * 2 : 0u);
}

// ---- exactness ------------------------------------------------------------------------------

struct Shape {
  int n_heads, n_kv_heads, head_dim;
};

// Attention of every query head through the tiers vs monolithic attention over all tokens
// (offloaded K/V rounded to bf16 the same way).
void check_attention(const TieredLayerKv& kv, const Appended& rec, const Shape& s, int window,
                     std::mt19937& rng) {
  const int len = kv.length(), n_off = kv.n_offloaded(), n_win = kv.n_window();
  const int d = s.head_dim, group = s.n_heads / s.n_kv_heads, e = s.n_kv_heads * d;
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> q(static_cast<size_t>(s.n_heads) * d);
  for (auto& x : q) x = nd(rng);

  // CPU stage: logits over the offloaded keys, straight from the key store.
  std::vector<float> host_logits(static_cast<size_t>(s.n_heads) * std::max(n_off, 1));
  if (n_off > 0) {
    cpu::LogitsProblem p;
    p.n_kv_heads = s.n_kv_heads;
    p.group = group;
    p.head_dim = d;
    p.n_tokens = n_off;
    p.q = q.data();
    p.q_head_stride = d;
    p.keys = kv.keys_view();
    p.out = host_logits.data();
    p.out_head_stride = n_off;
    p.scale = scale;
    cpu::attention_logits(p, cpu::LogitsPath::kPortable);
  }
  // Selection off: every offloaded V row, staged.
  static const auto plain = memory::make_plain_allocator();
  VStaging staging_buf(*plain, s.n_kv_heads, d, n_off);
  if (n_off > 0) staging_buf.gather(kv.value_store(), select_all(s.n_kv_heads, n_off));

  for (int qh = 0; qh < s.n_heads; ++qh) {
    const int h = qh / group;
    const float* qv = q.data() + static_cast<int64_t>(qh) * d;
    // Device stage: window logits in slot order over slots [0, n_window).
    std::vector<float> win_logits(std::max(window, 1));
    for (int slot = 0; slot < n_win; ++slot) {
      const float* kr = kv.window()->host_keys(h) + static_cast<int64_t>(slot) * d;
      float acc = 0.f;
      for (int i = 0; i < d; ++i) acc += qv[i] * kr[i];
      win_logits[slot] = acc * scale;
    }
    std::vector<float> logits(len);
    std::vector<int32_t> pos(len);
    concat_tiers(kv, nullptr, n_off,
                 host_logits.data() + static_cast<int64_t>(qh) * std::max(n_off, 1),
                 win_logits.data(), 1, logits.data(), pos.data());
    // V rows in the same order.
    std::vector<float> host_v(static_cast<size_t>(std::max(n_off, 1)) * d);
    for (int64_t i = 0; i < static_cast<int64_t>(n_off) * d; ++i)
      host_v[i] = bf16_to_f32(staging_buf.head(h, n_off)[i]);
    std::vector<float> vrows(static_cast<size_t>(len) * d);
    concat_tiers(kv, nullptr, n_off, host_v.data(), n_win ? kv.window()->host_values(h) : nullptr,
                 d, vrows.data());
    // Softmax and aggregation over the concatenation.
    float mx = -INFINITY;
    for (float x : logits) mx = std::max(mx, x);
    std::vector<double> out(d, 0.0);
    double sum = 0;
    for (int r = 0; r < len; ++r) {
      const double w = std::exp(static_cast<double>(logits[r]) - mx);
      sum += w;
      for (int i = 0; i < d; ++i) out[i] += w * vrows[static_cast<int64_t>(r) * d + i];
    }
    // Monolithic reference.
    std::vector<float> ref_logits(len);
    for (int p = 0; p < len; ++p) {
      ASSERT_EQ(pos[p], p);
      const float* kr = rec.k.data() + static_cast<int64_t>(p) * e + h * d;
      float acc = 0.f;
      for (int i = 0; i < d; ++i) acc += qv[i] * (p < n_off ? bf16_round(kr[i]) : kr[i]);
      ref_logits[p] = acc * scale;
      EXPECT_NEAR(logits[p], ref_logits[p], 1e-5f * (1.f + std::fabs(ref_logits[p])))
          << "W=" << window << " qh=" << qh << " pos=" << p;
    }
    float rmx = -INFINITY;
    for (float x : ref_logits) rmx = std::max(rmx, x);
    std::vector<double> ref(d, 0.0);
    double rsum = 0;
    for (int p = 0; p < len; ++p) {
      const double w = std::exp(static_cast<double>(ref_logits[p]) - rmx);
      rsum += w;
      const float* vr = rec.v.data() + static_cast<int64_t>(p) * e + h * d;
      for (int i = 0; i < d; ++i) ref[i] += w * (p < n_off ? bf16_round(vr[i]) : vr[i]);
    }
    for (int i = 0; i < d; ++i)
      EXPECT_NEAR(out[i] / sum, ref[i] / rsum, 1e-5) << "W=" << window << " qh=" << qh;
  }
}

class TieredExactness : public ::testing::TestWithParam<Shape> {};

TEST_P(TieredExactness, TieredAttentionEqualsMonolithicForEveryWindow) {
  const Shape s = GetParam();
  const int context = 48, n_layers = 2;
  const std::vector<int> lengths = {48, 31, 6};  // a few sequences, one at the full context
  for (int window : {0, 1, 2, 5, 17, 30, 47, 48, 200}) {
    CountingAllocator alloc;
    TieredConfig cfg;
    cfg.n_kv_heads = s.n_kv_heads;
    cfg.head_dim = s.head_dim;
    cfg.context = context;
    cfg.window = window;
    TieredKvCache cache(n_layers, cfg, 3, alloc);
    const int w_eff = std::min(window, context);
    EXPECT_EQ(cache.config().window, w_eff);
    EXPECT_EQ(cache.requested_window(), window);
    std::mt19937 rng(1234 + window);
    std::vector<std::vector<Appended>> rec(lengths.size(), std::vector<Appended>(n_layers));
    std::vector<int> seqs;
    for (size_t i = 0; i < lengths.size(); ++i) seqs.push_back(cache.open_sequence());
    // Prefill a chunk, then tokens one at a time (and a second bulk chunk), crossing evictions.
    for (size_t i = 0; i < lengths.size(); ++i) {
      const int prefill = std::min(lengths[i], 13);
      int done = 0;
      auto step = [&](int n) {
        for (int l = 0; l < n_layers; ++l)
          append_random(cache.layer(seqs[i], l), rec[i][l], n, s.n_kv_heads * s.head_dim, rng);
        done += n;
      };
      step(prefill);
      while (done < lengths[i]) step(std::min(lengths[i] - done, done % 3 == 0 ? 7 : 1));
    }
    for (size_t i = 0; i < lengths.size(); ++i)
      for (int l = 0; l < n_layers; ++l) {
        const TieredLayerKv& kv = cache.layer(seqs[i], l);
        ASSERT_EQ(kv.length(), lengths[i]);
        check_invariants(kv, rec[i][l], s.n_kv_heads, s.head_dim, w_eff);
        check_attention(kv, rec[i][l], s, w_eff, rng);
      }
    // Allocations went through the allocator with their roles, and match the accounting.
    const TierBytes b = cache.bytes();
    EXPECT_EQ(alloc.live(Role::kKeys), b.key_reserved);
    EXPECT_EQ(alloc.live(Role::kValues), b.value_reserved);
    EXPECT_EQ(alloc.live(Role::kOther), b.window_reserved);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, TieredExactness,
                         ::testing::Values(Shape{4, 4, 16},   // MHA
                                           Shape{8, 2, 32},   // GQA 4:1
                                           Shape{6, 3, 8}));  // GQA 2:1, small head

// ---- invariants over many steps -------------------------------------------------------------

class TieredLongRun : public ::testing::TestWithParam<StoreGrowth> {};

TEST_P(TieredLongRun, TenThousandAppendsWithTinyWindowLoseNothing) {
  const int n_kv_heads = 2, head_dim = 8, window = 4, steps = 10000;
  CountingAllocator alloc;
  TieredConfig cfg{n_kv_heads, head_dim, steps + 100, window, GetParam(), 64};
  cfg = validate_config(cfg);
  TieredLayerKv kv(cfg, alloc, [&](int h, int d, int cap) {
    return std::make_unique<HostWindowStore>(alloc, h, d, cap);
  });
  Appended rec;
  std::mt19937 rng(7);
  for (int t = 0; t < steps; ++t) {
    append_random(kv, rec, 1, n_kv_heads * head_dim, rng);
    if (t < 20 || t % 997 == 0) check_invariants(kv, rec, n_kv_heads, head_dim, window);
  }
  check_invariants(kv, rec, n_kv_heads, head_dim, window);
  EXPECT_EQ(kv.n_offloaded(), steps - window);
  const uint64_t row = n_kv_heads * head_dim * 2;
  const TierBytes b = kv.bytes();
  EXPECT_EQ(b.key_used, (steps - window) * row);
  EXPECT_EQ(b.value_used, (steps - window) * row);
  EXPECT_EQ(b.window_used, static_cast<uint64_t>(window) * n_kv_heads * head_dim * 4 * 2);
  if (GetParam() == StoreGrowth::kPreallocate) {
    // Reserved: exactly context - W tokens per store.
    EXPECT_EQ(b.key_reserved, static_cast<uint64_t>(cfg.context - window) * row);
  } else {
    // Slack < max(chunk, half the offloaded count) + chunk rounding.
    const uint64_t slack = (kv.key_store().capacity() - kv.n_offloaded());
    EXPECT_LE(slack, std::max<uint64_t>(64, (steps - window) / 2) + 64);
    EXPECT_GT(kv.key_store().generation(), 1u);  // it grew several times
  }
  EXPECT_EQ(alloc.live(Role::kKeys), b.key_reserved);
  EXPECT_EQ(alloc.live(Role::kValues), b.value_reserved);
}

INSTANTIATE_TEST_SUITE_P(Growth, TieredLongRun,
                         ::testing::Values(StoreGrowth::kPreallocate, StoreGrowth::kGrow));

TEST(TieredKv, BulkAppendsEqualSingleAppends) {
  const int n_kv_heads = 3, head_dim = 4, e = n_kv_heads * head_dim;
  auto plain = memory::make_plain_allocator();
  for (int window : {0, 1, 3, 7, 64}) {
    TieredConfig cfg = validate_config({n_kv_heads, head_dim, 300, window});
    auto mk = [&](int h, int d, int cap) {
      return std::make_unique<HostWindowStore>(*plain, h, d, cap);
    };
    TieredLayerKv bulk(cfg, *plain, mk), single(cfg, *plain, mk);
    Appended rb;
    std::mt19937 rng(window);
    std::uniform_int_distribution<int> chunk(0, 23);
    while (bulk.length() < 280) {
      const int n = std::min(chunk(rng), 280 - bulk.length());
      append_random(bulk, rb, n, e, rng);
      check_invariants(bulk, rb, n_kv_heads, head_dim, window);
    }
    for (int p = 0; p < bulk.length(); ++p)
      single.append(1, rb.k.data() + p * e, rb.v.data() + p * e);
    check_invariants(single, rb, n_kv_heads, head_dim, window);
    ASSERT_EQ(bulk.n_offloaded(), single.n_offloaded());
    for (int h = 0; h < n_kv_heads; ++h)
      EXPECT_EQ(0, std::memcmp(bulk.key_store().row(h, 0), single.key_store().row(h, 0),
                               static_cast<size_t>(bulk.n_offloaded()) * head_dim * 2));
  }
}

TEST(TieredKv, ConcatenatorMergesSelectedHostTokensInOrder) {
  TieredConfig cfg = validate_config({1, 2, 64, 5});
  auto plain = memory::make_plain_allocator();
  TieredLayerKv kv(cfg, *plain, [&](int h, int d, int cap) {
    return std::make_unique<HostWindowStore>(*plain, h, d, cap);
  });
  Appended rec;
  std::mt19937 rng(3);
  for (int i = 0; i < 23; ++i) append_random(kv, rec, 1, 2, rng);  // 18 offloaded, ring wrapped
  ASSERT_EQ(kv.n_offloaded(), 18);
  ASSERT_NE(kv.window_first_slot(), 0);
  const std::vector<int32_t> sel = {0, 3, 4, 17};
  std::vector<float> host = {100, 103, 104, 117};
  std::vector<float> win(5);
  for (int i = 0; i < 5; ++i) win[kv.window_slot(i)] = 118.f + i;
  std::vector<float> out(9);
  std::vector<int32_t> pos(9);
  concat_tiers(kv, sel.data(), 4, host.data(), win.data(), 1, out.data(), pos.data());
  EXPECT_EQ(pos, (std::vector<int32_t>{0, 3, 4, 17, 18, 19, 20, 21, 22}));
  EXPECT_EQ(out, (std::vector<float>{100, 103, 104, 117, 118, 119, 120, 121, 122}));
  // A selection that is not ascending or not offloaded is an error.
  const std::vector<int32_t> bad = {3, 2}, beyond = {18};
  EXPECT_THROW(concat_tiers(kv, bad.data(), 2, host.data(), win.data(), 1, out.data()), Error);
  EXPECT_THROW(concat_tiers(kv, beyond.data(), 1, host.data(), win.data(), 1, out.data()), Error);
  EXPECT_THROW(concat_tiers(kv, nullptr, 3, host.data(), win.data(), 1, out.data()), Error);
}

TEST(TokenMapTest, RangesCoalesceAndAnswerQueries) {
  TokenMap m;
  m.append(Tier::kHost, 3);
  m.append(Tier::kDevice, 2);
  m.append(Tier::kHost, 2);  // a non-contiguous placement: host {[0,3),[5,7)}
  m.append(Tier::kDevice, 4);
  EXPECT_EQ(m.ranges(Tier::kHost), (std::vector<PosRange>{{0, 3}, {5, 7}}));
  EXPECT_EQ(m.ranges(Tier::kDevice), (std::vector<PosRange>{{3, 5}, {7, 11}}));
  EXPECT_EQ(m.tier_of(4), Tier::kDevice);
  EXPECT_EQ(m.tier_of(6), Tier::kHost);
  EXPECT_EQ(m.local_index(6), 4);
  EXPECT_EQ(m.local_index(8), 3);
  EXPECT_EQ(m.position(Tier::kDevice, 3), 8);
  EXPECT_THROW(m.tier_of(11), Error);
  EXPECT_THROW(m.tier_of(-1), Error);
  // Moving window position 3 after host position 6 would break store order: refused.
  EXPECT_THROW(m.move_oldest_to_host(1), Error);
  TokenMap f;
  f.append(Tier::kDevice, 5);
  f.move_oldest_to_host(2);
  f.move_oldest_to_host(1);
  EXPECT_EQ(f.ranges(Tier::kHost), (std::vector<PosRange>{{0, 3}}));
  EXPECT_EQ(f.ranges(Tier::kDevice), (std::vector<PosRange>{{3, 5}}));
}

// ---- V gather -------------------------------------------------------------------------------

TEST(TieredKv, GatherStagesTheSelectedValueRows) {
  const int n_kv_heads = 4, head_dim = 16, max_k = 40;
  CountingAllocator alloc;
  TieredConfig cfg = validate_config({n_kv_heads, head_dim, 512, 8});
  TieredLayerKv kv(cfg, alloc, [&](int h, int d, int cap) {
    return std::make_unique<HostWindowStore>(alloc, h, d, cap);
  });
  Appended rec;
  std::mt19937 rng(11);
  append_random(kv, rec, 300, n_kv_heads * head_dim, rng);
  const int n_off = kv.n_offloaded();
  ASSERT_EQ(n_off, 292);
  VStaging staging(alloc, n_kv_heads, head_dim, max_k);
  EXPECT_EQ(staging.bytes(), static_cast<uint64_t>(max_k) * n_kv_heads * head_dim * 2);
  EXPECT_EQ(alloc.live(Role::kStaging), staging.bytes());
  const uint16_t* buf = staging.data();
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int trial = 0; trial < 20; ++trial) {
    const int k = 1 + trial * 2 % max_k;
    std::vector<float> scores(static_cast<size_t>(n_kv_heads) * n_off);
    for (auto& x : scores) x = u(rng);
    const TokenSelection sel = select_top_k(scores.data(), n_kv_heads, 1, n_off, n_off, k);
    staging.gather(kv.value_store(), sel);
    EXPECT_EQ(staging.data(), buf);  // reused, never reallocated
    for (int h = 0; h < n_kv_heads; ++h)
      for (int t = 0; t < k; ++t) {
        const int idx = sel.head(h)[t];
        const uint16_t* got = staging.head(h, k) + static_cast<int64_t>(t) * head_dim;
        const float* src = rec.v.data() + (static_cast<int64_t>(idx) * n_kv_heads + h) * head_dim;
        for (int i = 0; i < head_dim; ++i) {
          ASSERT_EQ(got[i], kv.value_store().row(h, idx)[i]);
          ASSERT_EQ(got[i], f32_to_bf16(src[i]));
        }
      }
  }
  // Too many rows for the staging buffer, a token that is not offloaded, a wrong head count.
  EXPECT_THROW(staging.gather(kv.value_store(), select_all(n_kv_heads, max_k + 1)), Error);
  TokenSelection beyond = select_all(n_kv_heads, 2);
  beyond.idx[1] = n_off;
  EXPECT_THROW(staging.gather(kv.value_store(), beyond), Error);
  EXPECT_THROW(staging.gather(kv.value_store(), select_all(n_kv_heads - 1, 2)), Error);
}

// ---- configuration and accounting -----------------------------------------------------------

TEST(TieredKv, BadConfigurationIsAnErrorOrTheDocumentedClamp) {
  auto plain = memory::make_plain_allocator();
  TieredConfig cfg{2, 8, 100, 10};
  cfg.window = -1;
  EXPECT_THROW(TieredKvCache(1, cfg, 1, *plain), Error);
  try {
    validate_config(cfg);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("window"), std::string::npos);
  }
  EXPECT_THROW(validate_config({2, 8, 0, 0}), Error);
  EXPECT_THROW(validate_config({0, 8, 100, 0}), Error);
  EXPECT_THROW(validate_config({2, 0, 100, 0}), Error);
  EXPECT_THROW(validate_config({2, 8, 100, 0, StoreGrowth::kGrow, 0}), Error);
  EXPECT_THROW(TieredKvCache(0, {2, 8, 100, 10}, 1, *plain), Error);
  EXPECT_THROW(TieredKvCache(1, {2, 8, 100, 10}, 0, *plain), Error);
  // Window larger than the context: clamped, nothing is ever offloaded, no host store memory.
  TieredKvCache big(1, {2, 8, 100, 1000}, 1, *plain);
  EXPECT_EQ(big.config().window, 100);
  EXPECT_EQ(big.requested_window(), 1000);
  const int s = big.open_sequence();
  std::vector<float> kv(100 * 16, 1.f);
  big.layer(s, 0).append(100, kv.data(), kv.data());
  EXPECT_EQ(big.layer(s, 0).n_offloaded(), 0);
  EXPECT_EQ(big.bytes().key_reserved, 0u);
  // Context overflow, closed sequences, all slots in use.
  EXPECT_THROW(big.layer(s, 0).append(1, kv.data(), kv.data()), Error);
  EXPECT_THROW(big.open_sequence(), Error);
  EXPECT_THROW(big.layer(s, 1), Error);
  big.close_sequence(s);
  EXPECT_THROW(big.layer(s, 0), Error);
  EXPECT_THROW(VStaging(*plain, 2, 8, -1), Error);
}

TEST(TieredKv, ByteAccountingOverSequencesMatchesTheArithmetic) {
  CountingAllocator alloc;
  const int n_layers = 3, h = 2, d = 8, ctx = 64, w = 10;
  TieredKvCache cache(n_layers, {h, d, ctx, w}, 2, alloc);
  const int a = cache.open_sequence(), b = cache.open_sequence();
  std::vector<float> kv(ctx * h * d, 0.5f);
  for (int l = 0; l < n_layers; ++l) {
    cache.layer(a, l).append(40, kv.data(), kv.data());
    cache.layer(b, l).append(7, kv.data(), kv.data());
  }
  const uint64_t e = h * d;
  TierBytes t = cache.bytes();
  EXPECT_EQ(t.window_used, n_layers * (10 + 7) * e * 4 * 2);
  EXPECT_EQ(t.window_reserved, 2 * n_layers * w * e * 4 * 2);
  EXPECT_EQ(t.key_used, n_layers * 30 * e * 2);
  EXPECT_EQ(t.value_used, n_layers * 30 * e * 2);
  EXPECT_EQ(t.key_reserved, n_layers * (ctx - w) * e * 2);  // only sequence a offloaded
  EXPECT_EQ(alloc.live(Role::kKeys), t.key_reserved);
  EXPECT_EQ(alloc.live(Role::kValues), t.value_reserved);
  EXPECT_EQ(alloc.live(Role::kOther), t.window_reserved);
  // Closing keeps the allocations for reuse; the used bytes drop to zero.
  cache.close_sequence(a);
  t = cache.bytes();
  EXPECT_EQ(t.key_used, 0u);
  EXPECT_EQ(t.window_used, n_layers * 7 * e * 4 * 2);
  EXPECT_EQ(t.key_reserved, n_layers * (ctx - w) * e * 2);
  const int c = cache.open_sequence();
  EXPECT_EQ(c, a);
  EXPECT_EQ(cache.layer(c, 0).length(), 0);
}

}  // namespace
}  // namespace hybridgen::kv
