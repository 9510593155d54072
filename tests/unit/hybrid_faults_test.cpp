// Fault injection into the hybrid runtime (issue 8): a stalled CPU stage, a failing CPU stage,
// host-tier allocation failure, a missing NUMA node, device out-of-memory (simulated: the
// window's device-memory budget). Each must end in a clear error or a documented fallback —
// never a hang, a crash or wrong output.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "hybridgen/engine.h"
#include "kv/kv_cache.h"
#include "memory/allocator.h"
#include "model/model_loader.h"
#include "runtime/hybrid_attention.h"
#include "runtime/transformer.h"
#include "test_support.h"

namespace hybridgen {
namespace {

using runtime::HybridAttention;
using runtime::HybridConfig;
using runtime::Policy;
using runtime::SelectionControl;
using test::Contains;
using test::error_of;

const std::string kTiny = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/tiny-llama";
constexpr int kCtx = 128;

struct Rig {
  std::unique_ptr<Transformer> model;
  std::unique_ptr<kv::KvCacheManager> cache;
  int seq = 0;
  Rig() {
    LoadedModel m = load_model(kTiny, false, 0, WeightChoice::kF32);
    cache = std::make_unique<kv::KvCacheManager>(
        kv::KvShape{m.config.n_layers, m.config.n_kv_heads, m.config.head_dim}, kCtx, 1);
    model = std::make_unique<Transformer>(std::move(m.config), std::move(m.weights));
    seq = cache->open_sequence();
  }
  // A new sequence (what the engine does after a failed request).
  void restart() {
    cache->close_sequence(seq);
    seq = cache->open_sequence();
  }
  std::vector<float> step(int token) {
    Batch b;
    b.add(token, seq, true);
    std::vector<float> logits;
    model->forward(b, *cache, logits);
    return logits;
  }
  void prefill(int n) {
    Batch b;
    for (int i = 0; i < n; ++i) b.add((i * 7) % 300, seq, i + 1 == n);
    std::vector<float> logits;
    model->forward(b, *cache, logits);
  }
};

HybridConfig pipelined() {
  HybridConfig c;
  c.policy = Policy::kHybrid;
  c.window = 4;
  c.k_min = 4;
  c.speculative = true;
  c.cpu_threads = 1;
  return c;
}

// A CPU stage that stops answering: the device stage gives up after the stall timeout with an
// error naming the layer, and refuses further steps; destruction does not hang.
TEST(HybridFaults, StalledCpuStageIsAnErrorNotAHang) {
  Rig r;
  auto alloc = memory::make_plain_allocator();
  HybridConfig cfg = pipelined();
  cfg.stall_timeout_s = 0.2;
  std::atomic<bool> stall{false};
  cfg.cpu_stage_hook = [&](int layer) {
    if (stall && layer == 1) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  };
  {
    HybridAttention h(cfg, *r.model, kCtx, 1, *alloc);
    r.model->set_attention_runner(&h);
    r.prefill(20);
    r.step(5);
    stall = true;
    const auto t0 = std::chrono::steady_clock::now();
    const std::string err = error_of([&] { r.step(6); });
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_TRUE(Contains(err, "did not deliver layer 1")) << err;
    EXPECT_TRUE(Contains(err, "stalled")) << err;
    EXPECT_LT(waited, 1.2);  // the timeout, not the stall
    EXPECT_TRUE(Contains(error_of([&] { r.step(7); }), "reload the engine"));
    r.model->set_attention_runner(nullptr);
  }  // joins the worker once the stalled layer finishes
}

// A CPU stage that throws: the error reaches the caller with the layer; the runtime recovers
// for the next request (a new sequence).
TEST(HybridFaults, FailingCpuStageReportsAndRecovers) {
  Rig r;
  auto alloc = memory::make_plain_allocator();
  HybridConfig cfg = pipelined();
  std::atomic<int> fail_at{-1};
  cfg.cpu_stage_hook = [&](int layer) {
    if (layer == fail_at) throw Error("injected CPU-stage failure");
  };
  HybridAttention h(cfg, *r.model, kCtx, 1, *alloc);
  r.model->set_attention_runner(&h);
  r.prefill(20);
  r.step(5);
  fail_at = 1;
  const std::string err = error_of([&] { r.step(6); });
  EXPECT_TRUE(Contains(err, "CPU stage (layer 1)")) << err;
  EXPECT_TRUE(Contains(err, "injected CPU-stage failure")) << err;
  fail_at = -1;
  r.restart();
  r.prefill(20);
  for (int i = 0; i < 10; ++i)
    for (float x : r.step(i)) ASSERT_TRUE(std::isfinite(x));
  r.model->set_attention_runner(nullptr);
}

// Host tiers that cannot allocate: a clear error naming the role, no crash, no leak (the ASan
// build of this suite checks the leak part).
class FailingAllocator final : public memory::HostAllocator {
 public:
  explicit FailingAllocator(memory::Role fail_role) : fail_(fail_role) {}
  void* allocate(size_t bytes, memory::Role role) override {
    if (role == fail_)
      throw Error(std::string("injected: no memory for ") + memory::role_name(role) + " (" +
                  std::to_string(bytes) + " bytes)");
    return inner_->allocate(bytes, role);
  }
  void deallocate(void* p, size_t bytes) noexcept override { inner_->deallocate(p, bytes); }
  std::string name() const override { return "failing"; }

 private:
  memory::Role fail_;
  std::unique_ptr<memory::HostAllocator> inner_ = memory::make_plain_allocator();
};

TEST(HybridFaults, HostTierAllocationFailureIsAClearError) {
  for (memory::Role role : {memory::Role::kKeys, memory::Role::kValues, memory::Role::kStaging}) {
    for (bool speculative : {false, true}) {
      Rig r;
      FailingAllocator alloc(role);
      HybridConfig cfg = pipelined();
      cfg.speculative = speculative;
      HybridAttention h(cfg, *r.model, kCtx, 1, alloc);
      r.model->set_attention_runner(&h);
      const std::string err = error_of([&] {
        r.prefill(20);  // offloads 16 tokens: the key and value stores allocate here
        r.step(3);      // the CPU stage's V staging allocates here
      });
      EXPECT_TRUE(Contains(err, std::string("no memory for ") + memory::role_name(role))) << err;
      r.model->set_attention_runner(nullptr);
    }
  }
}

TEST(HybridFaults, MissingNumaNodeNamesIt) {
  LoadOptions o;
  o.model_path = kTiny;
  o.n_ctx = 64;
  o.attention.policy = "hybrid";
  o.attention.kv_memory = "semantic";
  o.attention.slow_nodes = {977};
  EXPECT_TRUE(Contains(error_of([&] { Engine::load(o); }), "977"));
  o.attention.slow_nodes = {};
  o.attention.kv_memory = "cxl-please";
  EXPECT_TRUE(Contains(error_of([&] { Engine::load(o); }), "--kv-memory"));
}

// Simulated device out-of-memory: the window does not fit the device-memory budget. The error
// says what was asked, what is available and which flags lower it.
TEST(HybridFaults, DeviceOutOfMemorySaysWhatAndWhichFlag) {
  LoadOptions o;
  o.model_path = kTiny;
  o.n_ctx = 4096;
  o.max_sequences = 4;
  o.attention.policy = "hybrid";
  o.attention.window = 4096;
  o.attention.device_memory_mb = 1;
  const std::string err = error_of([&] { Engine::load(o); });
  EXPECT_TRUE(Contains(err, "out of device memory")) << err;
  EXPECT_TRUE(Contains(err, "--window")) << err;
  EXPECT_TRUE(Contains(err, "--gpu-memory-mb")) << err;
  o.attention.window = 64;  // fits: 64 tokens x 4 sequences x 2 layers x 2 KV heads x 16 x 8 B
  EXPECT_NO_THROW(Engine::load(o));
}

}  // namespace
}  // namespace hybridgen
