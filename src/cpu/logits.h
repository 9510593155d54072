// The logits calculator of hybrid attention (paper §4.2): Q·Kᵀ·scale over the keys that were
// offloaded to host memory, computed by CPU workers while the device runs the previous layer.
//
// Keys are stored token-major per KV head (the tiered key store's layout):
//   keys: [n_kv_heads, n_tokens, head_dim] with arbitrary head and token strides (in elements),
//   in f32, f16 or bf16.
// GQA: a KV head serves `group` query heads. One pass over a KV head's keys computes the logits
// of all of its query heads, so every key byte is read from memory once per decode step — the
// calculator is bound by host read bandwidth, not by arithmetic.
//
// The API takes plain pointers and strides (no containers), so the tiered KV store, the CPU
// stage and the benchmarks call it on whatever memory they hold (DRAM, CXL node, pinned).
#pragma once
#include <cstdint>

namespace hybridgen::cpu {

// Element type of the stored keys.
enum class KeyDType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Bytes of one stored key element.
int key_dtype_bytes(KeyDType t);
const char* key_dtype_name(KeyDType t);

// Which kernel computes the dot products. kAuto picks the fastest one this CPU supports for the
// key type; the others exist so that tests can check every path the machine can run.
enum class LogitsPath : uint8_t {
  kAuto = 0,
  // Scalar loops, float32 accumulation, exact float query. Runs everywhere.
  kPortable = 1,
  // AVX-512F (+BW/VL for masked 16-bit loads): keys widened to f32 (f16 via vcvtph2ps, bf16 by a
  // 16-bit shift), float32 query, FMA into float32.
  kAvx512 = 2,
  // AVX-512 BF16 (vdpbf16ps), bf16 keys only. The QUERY IS ROUNDED TO BF16 (round to nearest
  // even) so that one instruction multiplies 32 key elements; products of two bf16 values are
  // exact in float32 and are accumulated in float32. The query rounding adds a relative error of
  // at most 2^-9 per query element, i.e. |Δlogit| <= 2^-9 · scale · Σ|q_i·k_i|.
  kAvx512Bf16 = 3,
  // AVX2 + FMA (+F16C): keys widened to f32 (f16 via vcvtph2ps, bf16 by interleaving zeros
  // below them, with the query permuted to match), float32 query, FMA into float32.
  kAvx2 = 4,
};
const char* logits_path_name(LogitsPath p);
// Whether this CPU (and build) can run `p` for keys of type `t` (what the CPU has, whatever
// HYBRIDGEN_CPU_ISA says: tests check every path the machine can run).
bool logits_path_supported(LogitsPath p, KeyDType t);
// The path kAuto resolves to for keys of type `t` on this CPU, within HYBRIDGEN_CPU_ISA's cap.
LogitsPath logits_auto_path(KeyDType t);

// Where the keys are. Element (kv head h, token t, dim i) is at
//   data + h * head_stride + t * token_stride + i          (counted in elements of `dtype`).
struct KeysView {
  const void* data = nullptr;
  KeyDType dtype = KeyDType::kBF16;
  int64_t head_stride = 0;   // elements between consecutive KV heads' token 0
  int64_t token_stride = 0;  // elements between consecutive tokens; >= head_dim
};

struct LogitsProblem {
  int n_kv_heads = 0;
  int group = 1;  // query heads per KV head; query head j of KV head h is h * group + j
  int head_dim = 0;
  int n_tokens = 0;  // logits per query head (tokens read per KV head)

  // q: [n_kv_heads * group, head_dim]; query head qh starts at q + qh * q_head_stride (floats).
  const float* q = nullptr;
  int64_t q_head_stride = 0;

  KeysView keys;

  // Optional gather (Pre-QKT: logits only for the selected tokens). When set, logit t of KV head
  // h is computed for stored token token_index[h * index_head_stride + t] instead of token t:
  //   token_index: [n_kv_heads, n_tokens] (each row: indices into that head's stored tokens).
  // PRECOND: every index is in [0, number of stored tokens). Not range-checked (hot path).
  const int32_t* token_index = nullptr;
  int64_t index_head_stride = 0;

  // out: [n_kv_heads * group, n_tokens]; row qh starts at out + qh * out_head_stride (floats).
  float* out = nullptr;
  int64_t out_head_stride = 0;

  float scale = 1.f;  // normally 1/sqrt(head_dim)
};

// out[qh, t] = scale * Σ_i q[qh, i] * key(qh / group, t)[i] for every query head qh and token t.
// OpenMP-parallel over (KV head × token block) work items inside; call it from one thread.
// Throws hybridgen::Error for an inconsistent problem (null pointers, strides shorter than
// head_dim, a path this CPU cannot run).
void attention_logits(const LogitsProblem& p, LogitsPath path = LogitsPath::kAuto);

}  // namespace hybridgen::cpu
