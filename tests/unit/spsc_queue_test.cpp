// SPSC queue: ordering and no loss under a two-thread stress run (also run under ThreadSanitizer:
// no OpenMP in this file, since libgomp is not TSan-instrumented), close() semantics, storage.
#include "runtime/spsc_queue.h"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "hybridgen/error.h"

namespace hybridgen::runtime {
namespace {

// A large slot, like the CPU stage's hand-off (logits + staging descriptors).
struct Big {
  uint64_t seq = 0;
  std::array<uint32_t, 255> payload{};  // filled from seq; checked by the consumer
};

void fill(Big& b, uint64_t seq) {
  b.seq = seq;
  for (size_t i = 0; i < b.payload.size(); ++i) b.payload[i] = static_cast<uint32_t>(seq * 31 + i);
}
bool intact(const Big& b) {
  for (size_t i = 0; i < b.payload.size(); ++i)
    if (b.payload[i] != static_cast<uint32_t>(b.seq * 31 + i)) return false;
  return true;
}

TEST(SpscQueue, ItemsArriveInOrderWithoutLossAtEveryCapacity) {
  // A full queue of capacity 1 or 3 makes nearly every item a futex sleep and wake-up of one
  // side (tens of microseconds each on a loaded 2-core machine: 1M items took 78 s there), so
  // the small queues get 100,000 items, still every slot wrapped around tens of thousands of
  // times; the 64-slot queue, which mostly spins, gets the million.
  for (size_t capacity : {size_t{1}, size_t{3}, size_t{64}}) {
    SCOPED_TRACE("capacity " + std::to_string(capacity));
    const uint64_t kItems = capacity < 64 ? 100'000 : 1'000'000;
    SpscQueue<uint64_t> q(capacity);
    std::thread producer([&] {
      for (uint64_t i = 0; i < kItems; ++i) ASSERT_TRUE(q.push(i));
      q.close();
    });
    uint64_t expected = 0, v = 0;
    bool in_order = true;
    while (q.pop(v)) {
      if (v != expected) in_order = false;
      ++expected;
    }
    producer.join();
    EXPECT_TRUE(in_order);
    EXPECT_EQ(expected, kItems);  // every item, then pop reports the close
  }
}

TEST(SpscQueue, LargeSlotsInPlaceStress) {
  constexpr uint64_t kItems = 200'000;
  SpscQueue<Big> q(8);
  std::thread producer([&] {
    for (uint64_t i = 0; i < kItems; ++i) {
      Big* slot = q.begin_push();
      ASSERT_NE(slot, nullptr);
      fill(*slot, i);  // written in place: no copy of the 1 KiB struct
      q.commit_push();
    }
    q.close();
  });
  uint64_t expected = 0;
  int bad = 0;
  while (const Big* slot = q.begin_pop()) {
    if (slot->seq != expected || !intact(*slot)) ++bad;
    ++expected;
    q.end_pop();
  }
  producer.join();
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(expected, kItems);
}

TEST(SpscQueue, CloseWakesABlockedConsumer) {
  SpscQueue<int> q(4);
  std::thread consumer([&] {
    int v;
    EXPECT_FALSE(q.pop(v));  // blocks on the empty queue until close()
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  q.close();
  consumer.join();
}

TEST(SpscQueue, CloseWakesABlockedProducer) {
  SpscQueue<int> q(2);
  ASSERT_TRUE(q.push(1));
  ASSERT_TRUE(q.push(2));
  std::thread producer([&] { EXPECT_FALSE(q.push(3)); });  // full: blocks until close()
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  q.close();
  producer.join();
  // What was committed before close still drains, then pop reports the end.
  int v = 0;
  EXPECT_TRUE(q.pop(v));
  EXPECT_EQ(v, 1);
  EXPECT_TRUE(q.pop(v));
  EXPECT_EQ(v, 2);
  EXPECT_FALSE(q.pop(v));
  EXPECT_FALSE(q.push(4));
}

TEST(SpscQueue, TryPushAndTryPopDoNotBlock) {
  SpscQueue<int> q(2);
  int v = 0;
  EXPECT_FALSE(q.try_pop(v));
  EXPECT_TRUE(q.try_push(1));
  EXPECT_TRUE(q.try_push(2));
  EXPECT_FALSE(q.try_push(3));
  EXPECT_EQ(q.size(), 2u);
  EXPECT_TRUE(q.try_pop(v));
  EXPECT_EQ(v, 1);
  q.close();
  EXPECT_FALSE(q.try_push(5));
  EXPECT_TRUE(q.try_pop(v));
  EXPECT_EQ(v, 2);
}

TEST(SpscQueue, StorageComesFromTheHookOrTheCallersBuffer) {
  int allocs = 0, frees = 0;
  size_t asked = 0;
  {
    SlotAllocator hook{[&](size_t bytes, size_t align) {
                         ++allocs;
                         asked = bytes;
                         return ::operator new(bytes, std::align_val_t(align));
                       },
                       [&](void* p, size_t, size_t align) {
                         ++frees;
                         ::operator delete(p, std::align_val_t(align));
                       }};
    SpscQueue<Big> q(5, hook);
    Big b;
    fill(b, 7);
    for (int round = 0; round < 20; ++round) {  // reuse: no further allocation
      ASSERT_TRUE(q.push(b));
      Big out;
      ASSERT_TRUE(q.pop(out));
      EXPECT_TRUE(intact(out));
    }
  }
  EXPECT_EQ(allocs, 1);
  EXPECT_EQ(frees, 1);
  EXPECT_EQ(asked, 5 * sizeof(Big));

  alignas(Big) static unsigned char buffer[SpscQueue<Big>::bytes_for(3)];
  SpscQueue<Big> q(buffer, sizeof buffer);
  EXPECT_EQ(q.capacity(), 3u);
  Big* slot = q.begin_push();
  EXPECT_EQ(static_cast<void*>(slot), static_cast<void*>(buffer));  // slots live in the buffer
  fill(*slot, 1);
  q.commit_push();
  const Big* got = q.begin_pop();
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->seq, 1u);
  q.end_pop();
}

TEST(SpscQueue, BadStorageIsAClearError) {
  EXPECT_THROW(SpscQueue<int>(0), Error);
  alignas(8) unsigned char small[2];
  try {
    SpscQueue<int> q(small, sizeof small);  // fewer bytes than one slot
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity must be in [1, 2^30] slots, got 0"),
              std::string::npos)
        << e.what();
  }
  alignas(8) unsigned char buf[64];
  EXPECT_THROW(SpscQueue<uint64_t>(buf + 1, 32), Error);  // misaligned
}

// pop_until: items in order with a producer that sometimes pauses past the spin phase; a stalled
// producer ends in kTimeout (nothing consumed), close ends in kClosed after draining.
TEST(SpscQueue, PopUntilDeliversTimesOutAndSeesClose) {
  using Clock = std::chrono::steady_clock;
  SpscQueue<uint64_t> q(4);
  const uint64_t n = 20000;
  std::thread producer([&] {
    for (uint64_t i = 0; i < n; ++i) {
      if (i % 1000 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
      ASSERT_TRUE(q.push(i));
    }
  });
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t v = ~0ull;
    ASSERT_EQ(q.pop_until(v, Clock::now() + std::chrono::seconds(30)),
              SpscQueue<uint64_t>::PopStatus::kOk);
    ASSERT_EQ(v, i);
  }
  producer.join();
  uint64_t v = 0;
  const auto t0 = Clock::now();
  EXPECT_EQ(q.pop_until(v, t0 + std::chrono::milliseconds(50)),
            SpscQueue<uint64_t>::PopStatus::kTimeout);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(50));
  ASSERT_TRUE(q.push(7));
  q.close();
  EXPECT_EQ(q.pop_until(v, Clock::now() + std::chrono::seconds(1)),
            SpscQueue<uint64_t>::PopStatus::kOk);
  EXPECT_EQ(v, 7u);
  EXPECT_EQ(q.pop_until(v, Clock::now() + std::chrono::seconds(1)),
            SpscQueue<uint64_t>::PopStatus::kClosed);
}

// A consumer asleep in pop_until wakes on close from another thread.
TEST(SpscQueue, CloseWakesATimedConsumer) {
  SpscQueue<int> q(2);
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    q.close();
  });
  int v = 0;
  EXPECT_EQ(q.pop_until(v, std::chrono::steady_clock::now() + std::chrono::seconds(30)),
            SpscQueue<int>::PopStatus::kClosed);
  closer.join();
}

}  // namespace
}  // namespace hybridgen::runtime
