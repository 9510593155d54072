// The shared prefill's capture on the CPU backend (hybridgen/prefill_snapshot.h): the engine's
// own attention (FullAttention, or the hybrid runtime) untouched, so K/V and outputs are its
// own bit for bit, plus the prompt attention statistics the selective policies start decoding
// from, accumulated over the keys as that attention read them (full: float32; tiered: offloaded
// rows bf16) the way the runtime's exact prefill does (CpuDeviceStage::exact): per (sequence
// slot, layer) H2O's attention mass and Keyformer's Gumbel-softmax scores, seeded per slot and
// layer as HybridRuntime seeds them. Only the float summation order of the scores differs.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "kv/token_selector.h"
#include "runtime/attention_runner.h"
#include "runtime/device_stage.h"

namespace hybridgen::runtime {

class PromptStatsAttention final : public AttentionRunner {
 public:
  // Keys of (sequence slot, layer) as the step's attention read them, after its append:
  // K: [n_kv_heads, length, head_dim] float32 (resized by the callee), length: positions held.
  using KeysOf = std::function<int(int seq, int il, std::vector<float>& K)>;
  // inner: the engine's runner (the hybrid runtime), or null: FullAttention over `cache` (and
  // keys_of may be null: the cache's rows). stats false: the inner runner only.
  PromptStatsAttention(kv::KvCacheManager& cache, const ModelDims& dims, AttentionRunner* inner,
                       KeysOf keys_of, bool stats, bool keyformer, float keyformer_tau_init,
                       float keyformer_tau_delta);
  void begin_step(const Batch& batch, const int32_t* pos) override;
  void layer_input(int il, const float* x) override { inner_->layer_input(il, x); }
  void attend(int il, const float* q, const float* k, const float* v, float* out) override;
  void end_step() override { inner_->end_step(); }

  // The accumulators of (slot, layer); null when no statistics (of that kind) were taken or the
  // slot had no token.
  const kv::HeavyHitterAccumulator* h2o(int seq, int il) const;
  const kv::HeavyHitterAccumulator* keyformer(int seq, int il) const;
  double stats_seconds() const { return stats_s_; }  // spent on the statistics so far

 private:
  kv::KvCacheManager& cache_;
  ModelDims d_;
  FullAttention full_;
  AttentionRunner* inner_;
  KeysOf keys_of_;
  bool stats_, keyformer_;
  float tau_init_, tau_delta_;
  double stats_s_ = 0;
  const Batch* batch_ = nullptr;
  const int32_t* pos_ = nullptr;
  // [slot * n_layers + layer], created on a slot's first token.
  std::vector<std::unique_ptr<kv::HeavyHitterAccumulator>> h2o_, kf_;
  std::vector<std::vector<float>> keys_;  // per distinct sequence of the step
};

}  // namespace hybridgen::runtime
