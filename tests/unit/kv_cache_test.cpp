#include "kv/kv_cache.h"

#include <gtest/gtest.h>

#include "hybridgen/error.h"

namespace hybridgen::kv {
namespace {

TEST(KvCache, WritesAreReadBackPerSequenceLayerAndHead) {
  KvCacheManager cache({2, 3, 4}, 8, 2);
  const int a = cache.open_sequence(), b = cache.open_sequence();
  EXPECT_NE(a, b);
  for (int pos = 0; pos < 5; ++pos) {
    ASSERT_EQ(cache.reserve(a, 1), pos);
    for (int layer = 0; layer < 2; ++layer) {
      std::vector<float> k(12), v(12);
      for (int i = 0; i < 12; ++i) {
        k[i] = 1000 * layer + 100 * pos + i;
        v[i] = -k[i];
      }
      cache.write(a, layer, pos, k.data(), v.data());
    }
  }
  EXPECT_EQ(cache.length(a), 5);
  EXPECT_EQ(cache.length(b), 0);
  for (int layer = 0; layer < 2; ++layer) {
    LayerView view = cache.view(a, layer);
    EXPECT_EQ(view.n_tokens(), 5);
    for (int pos = 0; pos < 5; ++pos)
      for (int h = 0; h < 3; ++h)
        for (int i = 0; i < 4; ++i) {
          EXPECT_EQ(view.key(h, pos)[i], 1000 * layer + 100 * pos + h * 4 + i);
          EXPECT_EQ(view.value(h, pos)[i], -(1000 * layer + 100 * pos + h * 4 + i));
        }
  }
  EXPECT_EQ(cache.tier_of(a, 4), Tier::kDevice);
  EXPECT_EQ(cache.bytes_in(Tier::kDevice), 5 * cache.bytes_per_token());
  EXPECT_EQ(cache.bytes_per_token(), 2u * 2 * 3 * 4 * sizeof(float));
  EXPECT_EQ(cache.bytes_in(Tier::kHost), 0u);
}

TEST(KvCache, FullContextAndSlotsAreClearErrors) {
  KvCacheManager cache({1, 1, 2}, 4, 1);
  const int s = cache.open_sequence();
  cache.reserve(s, 4);
  EXPECT_THROW(cache.reserve(s, 1), Error);
  EXPECT_THROW(cache.open_sequence(), Error);
  cache.close_sequence(s);
  const int t = cache.open_sequence();
  EXPECT_EQ(cache.length(t), 0);
  EXPECT_THROW(cache.tier_of(t, 0), Error);
}

}  // namespace
}  // namespace hybridgen::kv
