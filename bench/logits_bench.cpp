// Logits calculator vs host read bandwidth, measured in the same run.
// The calculator reads every offloaded key once per decode step and does little arithmetic per
// byte, so its floor is key bytes / host read bandwidth; the goal is >= 80% of that bandwidth.
//   hybridgen-logits-bench [reps=9] [dtype=bf16|f16|f32] [tokens...=32768 65536 131072]
// Shapes: 8 KV heads × head_dim 128 × GQA group 4 (Llama-3.1-8B's attention). Threads: OpenMP
// (OMP_NUM_THREADS). Bandwidth: the method of bench/membw.cpp (8 independent accumulators of 16
// floats per thread over 1 GiB, vectorized OpenMP sum), same thread count.
// Key placement (paper §4.4): HYBRIDGEN_LOGITS_PLACEMENT=heap (default: ordinary memory),
// dram (NUMA nodes with CPUs), slow (CPU-less nodes: CXL), interleave (pages over both tiers),
// through the tiered allocator; the kernel's placement report is printed. On a one-node machine
// the NUMA placements fall back to that node (with a warning). Numbers from an emulated VM are
// not performance numbers.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cpu/logits.h"
#include "host_bandwidth.h"
#include "hybridgen/error.h"
#include "memory/numa_allocator.h"
#include "model/dequant.h"

namespace {

using hybridgen::bench::median;

double host_read_gbs(int reps) { return median(hybridgen::bench::host_read_gbs(1024, reps)); }

// The key store of one run: heap memory, or a region of the tiered allocator placed like keys
// (dram), like values (slow: the semantic policy puts values on the slow tier) or interleaved.
struct KeyBuffer {
  std::vector<uint8_t> heap;
  std::unique_ptr<hybridgen::memory::NumaAllocator> numa;
  uint8_t* data = nullptr;
  size_t bytes = 0;
  KeyBuffer(size_t n, const std::string& placement) : bytes(n) {
    using namespace hybridgen::memory;
    if (placement == "heap") {
      heap.resize(n);
      data = heap.data();
      return;
    }
    TierConfig c;
    Role role = Role::kKeys;
    if (placement == "dram") {
      c.policy = Policy::kDram;
    } else if (placement == "interleave") {
      c.policy = Policy::kInterleave;
    } else if (placement == "slow") {
      c.policy = Policy::kSemantic;
      role = Role::kValues;
    } else {
      throw hybridgen::Error(
          "HYBRIDGEN_LOGITS_PLACEMENT must be heap, dram, slow or interleave, "
          "got '" +
          placement + "'");
    }
    numa = make_numa_allocator(c);
    data = static_cast<uint8_t*>(numa->allocate(n, role));
  }
  ~KeyBuffer() {
    if (numa) numa->deallocate(data, bytes);
  }
};

}  // namespace

int main(int argc, char** argv) {
  using namespace hybridgen;
  using namespace hybridgen::cpu;
  const int reps = argc > 1 ? std::atoi(argv[1]) : 9;
  KeyDType dtype = KeyDType::kBF16;
  if (argc > 2) {
    const std::string d = argv[2];
    if (d == "f16")
      dtype = KeyDType::kF16;
    else if (d == "f32")
      dtype = KeyDType::kF32;
    else if (d != "bf16") {
      std::fprintf(stderr, "error: dtype must be bf16, f16 or f32, got '%s'\n", argv[2]);
      return 1;
    }
  }
  std::vector<int> token_counts;
  for (int i = 3; i < argc; ++i) token_counts.push_back(std::atoi(argv[i]));
  if (token_counts.empty()) token_counts = {32768, 65536, 131072};
  const int n_kv_heads = 8, head_dim = 128, group = 4;

  const char* env = std::getenv("HYBRIDGEN_LOGITS_PLACEMENT");
  const std::string placement = env ? env : "heap";
  const double bw = host_read_gbs(reps);
  std::printf("host read bandwidth: %.2f GB/s median over %d reps of 1 GiB, %d threads\n", bw, reps,
              omp_get_max_threads());
  std::printf("logits: %d KV heads x head_dim %d x group %d, %s keys, path %s, keys in %s\n",
              n_kv_heads, head_dim, group, key_dtype_name(dtype),
              logits_path_name(logits_auto_path(dtype)), placement.c_str());

  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int n_tokens : token_counts) {
    const int eb = key_dtype_bytes(dtype);
    // keys: [n_kv_heads, n_tokens, head_dim], first touched in parallel like the reads.
    const size_t n_el = static_cast<size_t>(n_kv_heads) * n_tokens * head_dim;
    // Enough copies of the key store (≥ 512 MiB together) that each repetition reads keys that
    // are not in the last-level cache, as in a decode step that reads every layer's keys once.
    const size_t bytes = n_el * eb;
    const size_t copies = std::max<size_t>(1, ((size_t{512} << 20) + bytes - 1) / bytes);
    KeyBuffer key_buf(copies * bytes, placement);
    uint8_t* keys = key_buf.data;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < copies * n_el; ++i) {
      const float v = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
      if (dtype == KeyDType::kF32)
        std::memcpy(&keys[i * 4], &v, 4);
      else {
        const uint16_t h = dtype == KeyDType::kF16 ? f32_to_f16(v) : f32_to_bf16(v);
        std::memcpy(&keys[i * 2], &h, 2);
      }
    }
    std::vector<float> q(static_cast<size_t>(n_kv_heads) * group * head_dim);  // [32, 128]
    for (float& x : q) x = nd(rng);
    std::vector<float> out(static_cast<size_t>(n_kv_heads) * group * n_tokens);  // [32, n]
    LogitsProblem p;
    p.n_kv_heads = n_kv_heads;
    p.group = group;
    p.head_dim = head_dim;
    p.n_tokens = n_tokens;
    p.q = q.data();
    p.q_head_stride = head_dim;
    p.keys = {keys, dtype, static_cast<int64_t>(n_tokens) * head_dim, head_dim};
    p.out = out.data();
    p.out_head_stride = n_tokens;
    p.scale = 1.f / std::sqrt(static_cast<float>(head_dim));
    attention_logits(p);  // warm-up (page faults, thread pool)
    std::vector<double> secs;
    for (int r = 0; r < reps; ++r) {
      p.keys.data = keys + ((r + 1) % copies) * bytes;
      const auto t0 = std::chrono::steady_clock::now();
      attention_logits(p);
      secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const double s = median(secs);
    const double key_bytes = static_cast<double>(n_el) * eb;
    const double gbs = key_bytes / s / 1e9;
    // Output bytes written (n_q × n_tokens floats) are 1/8 of the bf16 key bytes at group 4;
    // they are reported separately, not counted in GB/s.
    std::printf(
        "tokens %7d: %8.3f ms  %7.1f Mkeys/s (token x KV head)  %6.2f GB/s keys  "
        "%5.1f%% of read bandwidth  (+%.1f MB logits written)\n",
        n_tokens, s * 1e3, n_tokens * static_cast<double>(n_kv_heads) / s / 1e6, gbs,
        100.0 * gbs / bw, out.size() * 4 / 1e6);
    if (key_buf.numa) std::printf("%s", key_buf.numa->report().format().c_str());
  }
  return 0;
}
