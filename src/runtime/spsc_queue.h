// Bounded single-producer / single-consumer queue between the CPU stage and the device stage of
// pipelined decode (one queue per direction).
//
// - Fixed-size slots of T, allocated once (T may be a large struct: logits + V staging
//   descriptors). The storage comes from an allocator hook (later: pinned host memory via
//   cudaHostAlloc) or from a caller's pre-allocated buffer; slots are constructed once and reused,
//   so steady-state pushes and pops never allocate.
// - Two ways to move data: push/pop (move-assign into/out of a slot), and in-place
//   begin_push/commit_push, begin_pop/end_pop, which hand out the slot itself so that the
//   producer can gather V rows straight into (pinned) slot memory with no extra copy.
// - Blocking without burning a core: a short spin, then C++20 std::atomic wait/notify (a futex on
//   Linux). Waiting sides sleep on a per-side "event" counter that the other side bumps after
//   publishing; notify is nearly free when nobody waits (libstdc++ counts waiters).
// - close() wakes both sides: pushes fail from then on, pops drain what is left then fail.
// - pop_until: a pop with a deadline (a stalled producer becomes an error, not a hang). Its sleep
//   is a condition variable (atomic wait has no timeout); commit_push takes the mutex to notify
//   only while such a waiter is registered, so untimed traffic never touches it.
//
// Exactly one thread may push and exactly one thread may pop at a time (the two may differ).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#include "util/check.h"

namespace hybridgen::runtime {

// Where the queue's slots live. allocate(bytes, alignment) returns storage or throws;
// deallocate(ptr, bytes, alignment) frees it. The default uses aligned operator new.
struct SlotAllocator {
  std::function<void*(size_t bytes, size_t alignment)> allocate;
  std::function<void(void* p, size_t bytes, size_t alignment)> deallocate;

  static SlotAllocator heap() {
    return {
        [](size_t bytes, size_t align) { return ::operator new(bytes, std::align_val_t(align)); },
        [](void* p, size_t, size_t align) { ::operator delete(p, std::align_val_t(align)); }};
  }
};

template <typename T>
class SpscQueue {
  static_assert(std::is_default_constructible_v<T>, "slots are constructed once, up front");

 public:
  // Bytes of caller-provided storage needed for `capacity` slots (alignment: alignof(T)).
  static constexpr size_t bytes_for(size_t capacity) { return capacity * sizeof(T); }

  // Owning: `capacity` slots from `alloc` (default: the heap).
  explicit SpscQueue(size_t capacity, SlotAllocator alloc = SlotAllocator::heap())
      : capacity_(checked_capacity(capacity)), alloc_(std::move(alloc)) {
    HG_CHECK(alloc_.allocate && alloc_.deallocate, "SPSC queue: allocator hook without functions");
    void* mem = alloc_.allocate(bytes_for(capacity_), alignof(T));
    HG_CHECK(mem != nullptr, "SPSC queue: the slot allocator returned null for " +
                                 std::to_string(bytes_for(capacity_)) + " bytes");
    owns_ = true;
    construct_slots(mem);
  }
  // Non-owning: slots constructed inside the caller's buffer [buffer, buffer + bytes), which must
  // outlive the queue and be aligned for T. Capacity = bytes / sizeof(T).
  SpscQueue(void* buffer, size_t bytes) : capacity_(checked_capacity(bytes / sizeof(T))) {
    HG_CHECK(buffer != nullptr, "SPSC queue: null buffer");
    HG_CHECK(reinterpret_cast<uintptr_t>(buffer) % alignof(T) == 0,
             "SPSC queue: buffer is not aligned to " + std::to_string(alignof(T)) + " bytes");
    construct_slots(buffer);
  }
  SpscQueue(const SpscQueue&) = delete;
  SpscQueue& operator=(const SpscQueue&) = delete;
  ~SpscQueue() {
    for (size_t i = 0; i < capacity_; ++i) slots_[i].~T();
    if (owns_) alloc_.deallocate(slots_, bytes_for(capacity_), alignof(T));
  }

  size_t capacity() const { return capacity_; }
  // A snapshot; exact only when called by the producer or consumer with the other side idle.
  size_t size() const {
    return static_cast<size_t>(tail_.load(std::memory_order_acquire) -
                               head_.load(std::memory_order_acquire));
  }
  bool closed() const { return closed_.load(std::memory_order_acquire); }

  // ---- producer ------------------------------------------------------------------------------
  // Blocks while full. Returns the free slot to fill, or nullptr once the queue is closed.
  T* begin_push() {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);  // only the producer writes it
    for (int spin = 0;; ++spin) {
      if (closed()) return nullptr;
      // The event is read before the fullness check: a pop that lands after the check bumps
      // the event, so the wait below returns at once instead of missing the wake-up.
      const uint32_t ev = space_event_.load(std::memory_order_seq_cst);
      if (tail - head_.load(std::memory_order_seq_cst) < capacity_)
        return &slots_[tail % capacity_];
      if (spin < kSpins) {
        cpu_relax();
        continue;
      }
      space_event_.wait(ev, std::memory_order_seq_cst);
    }
  }
  // Publishes the slot returned by begin_push.
  void commit_push() {
    tail_.store(tail_.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);
    data_event_.fetch_add(1, std::memory_order_seq_cst);
    data_event_.notify_one();
    wake_timed_consumer();
  }
  // Blocks while full; false (item not queued) once the queue is closed.
  bool push(T item) {
    T* slot = begin_push();
    if (!slot) return false;
    *slot = std::move(item);
    commit_push();
    return true;
  }
  // Non-blocking: false if full or closed.
  bool try_push(T item) {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (closed() || tail - head_.load(std::memory_order_acquire) >= capacity_) return false;
    slots_[tail % capacity_] = std::move(item);
    commit_push();
    return true;
  }

  // ---- consumer ------------------------------------------------------------------------------
  // Blocks while empty. Returns the oldest slot, or nullptr once the queue is closed and drained.
  T* begin_pop() {
    const uint64_t head = head_.load(std::memory_order_relaxed);  // only the consumer writes it
    for (int spin = 0;; ++spin) {
      const uint32_t ev = data_event_.load(std::memory_order_seq_cst);
      if (tail_.load(std::memory_order_seq_cst) != head) return &slots_[head % capacity_];
      if (closed()) {
        // Re-read the tail after seeing `closed`: a commit made before close() is visible now
        // even if the read above missed it, so nothing pushed before close is lost.
        if (tail_.load(std::memory_order_seq_cst) != head) return &slots_[head % capacity_];
        return nullptr;
      }
      if (spin < kSpins) {
        cpu_relax();
        continue;
      }
      data_event_.wait(ev, std::memory_order_seq_cst);
    }
  }
  // Frees the slot returned by begin_pop for the producer.
  void end_pop() {
    head_.store(head_.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);
    space_event_.fetch_add(1, std::memory_order_seq_cst);
    space_event_.notify_one();
  }
  // Blocks while empty; false once the queue is closed and drained.
  bool pop(T& out) {
    T* slot = begin_pop();
    if (!slot) return false;
    out = std::move(*slot);
    end_pop();
    return true;
  }
  enum class PopStatus { kOk, kClosed, kTimeout };
  // Blocks while empty, until `deadline`: kOk (out filled), kClosed (closed and drained) or
  // kTimeout (nothing arrived in time; nothing consumed).
  PopStatus pop_until(T& out, std::chrono::steady_clock::time_point deadline) {
    const uint64_t head = head_.load(std::memory_order_relaxed);
    auto ready = [&] { return tail_.load(std::memory_order_seq_cst) != head || closed(); };
    for (int spin = 0; spin < kSpins && !ready(); ++spin) cpu_relax();
    if (!ready()) {
      // Registered before the predicate is checked under the lock: a commit that misses the
      // registration happened before it, so the predicate sees its tail.
      timed_waiters_.fetch_add(1, std::memory_order_seq_cst);
      {
        std::unique_lock<std::mutex> lock(timed_mu_);
        timed_cv_.wait_until(lock, deadline, ready);
      }
      timed_waiters_.fetch_sub(1, std::memory_order_seq_cst);
    }
    if (tail_.load(std::memory_order_seq_cst) != head) {
      out = std::move(slots_[head % capacity_]);
      end_pop();
      return PopStatus::kOk;
    }
    return closed() ? PopStatus::kClosed : PopStatus::kTimeout;
  }

  // Non-blocking: false if empty (closed or not).
  bool try_pop(T& out) {
    const uint64_t head = head_.load(std::memory_order_relaxed);
    if (tail_.load(std::memory_order_acquire) == head) return false;
    out = std::move(slots_[head % capacity_]);
    end_pop();
    return true;
  }

  // ---- either side, or a third thread ---------------------------------------------------------
  // Ends the queue: blocked and later pushes return false/nullptr; pops drain what was committed
  // and then return false/nullptr. Idempotent.
  void close() {
    closed_.store(true, std::memory_order_seq_cst);
    data_event_.fetch_add(1, std::memory_order_seq_cst);
    space_event_.fetch_add(1, std::memory_order_seq_cst);
    data_event_.notify_all();
    space_event_.notify_all();
    wake_timed_consumer();
  }

 private:
  // Spins before sleeping: a hand-off between pipeline stages is usually microseconds away, and
  // a futex sleep/wake costs more than that.
  static constexpr int kSpins = 256;

  void wake_timed_consumer() {
    if (timed_waiters_.load(std::memory_order_seq_cst) == 0) return;
    { std::lock_guard<std::mutex> lock(timed_mu_); }  // the waiter is asleep or sees the tail
    timed_cv_.notify_all();
  }

  static size_t checked_capacity(size_t c) {
    HG_CHECK(c >= 1 && c <= (size_t{1} << 30),
             "SPSC queue: capacity must be in [1, 2^30] slots, got " + std::to_string(c));
    return c;
  }
  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  void construct_slots(void* mem) {
    slots_ = static_cast<T*>(mem);
    for (size_t i = 0; i < capacity_; ++i) new (&slots_[i]) T();
  }

  size_t capacity_;
  SlotAllocator alloc_;
  bool owns_ = false;
  T* slots_ = nullptr;  // [capacity_]
  // Producer- and consumer-written words on separate cache lines (no false sharing).
  // Positions are free-running 64-bit counters (never wrap in practice); the event words that the
  // sides sleep on are 32-bit, the futex word size, and only their change matters.
  alignas(64) std::atomic<uint64_t> tail_{0};         // pushes committed (producer writes)
  alignas(64) std::atomic<uint32_t> data_event_{0};   // bumped on commit and close; consumer sleeps
  alignas(64) std::atomic<uint64_t> head_{0};         // pops finished (consumer writes)
  alignas(64) std::atomic<uint32_t> space_event_{0};  // bumped on pop and close; producer sleeps
  alignas(64) std::atomic<bool> closed_{false};
  std::atomic<int> timed_waiters_{0};  // consumers inside pop_until's sleep
  std::mutex timed_mu_;
  std::condition_variable timed_cv_;
};

}  // namespace hybridgen::runtime
