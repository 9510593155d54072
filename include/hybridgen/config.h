// Options of the public API: loading, sampling, generation.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hybridgen {

// Sampling, applied in llama.cpp's order: repetition penalty, top-k, top-p, min-p,
// temperature, then a seeded draw. temperature <= 0 means greedy (argmax).
struct SamplingParams {
  float temperature = 0.8f;
  int top_k = 40;               // <= 0: off
  float top_p = 0.95f;          // >= 1: off
  float min_p = 0.05f;          // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off; applied to tokens of the last repeat_last_n
  int repeat_last_n = 64;
  uint64_t seed = 0xC0FFEE;

  // Throws hybridgen::Error naming the field if a value is out of range.
  void validate() const;
};

// How weights are held for the CPU backend's GEMMs.
enum class WeightFormat {
  kAuto,  // f32 for float32 checkpoints up to 2 B parameters (exact); native for quantized
          // GGUF files on the kernel paths where it measured faster than bf16 (the table in
          // src/model/model_loader.cpp); bf16 otherwise (speed). Never native-q8: its 8-bit
          // activations change answers (docs/quantization.md)
  kF32,
  kBF16,
  kNative,    // GGUF quantized blocks as stored, computed on directly, the decode activations
              // quantized to int16 per block of 32 (near-float; CPU device only)
  kNativeQ8,  // the same blocks with llama.cpp's 8-bit activations (Q8_0 / Q8_1 / Q8_K):
              // llama.cpp's rounding, not float's (CPU device only)
};

// How attention splits the KV cache between the device and the host (the hybrid runtime,
// paper §4). Every policy but `full` keeps a device-resident window of recent tokens per
// sequence and layer and offloads older tokens to host stores (keys and values apart).
struct AttentionOptions {
  // full:         one tier, attention over every token on the device (the oracle).
  // hybrid:       HybridGen: CPU logits over offloaded keys (pipelined, speculative query),
  //               token selection, feedback scheduler (K and Post/Pre-QKT adapted at run time).
  // aog:          all KV offloaded and streamed to the device each layer (FlexGen-like).
  // aoc:          all KV offloaded, attention on the CPU (MoE-Lightning-like).
  // h2o:          heavy hitters (accumulated attention) + recent, fixed K (Pre-QKT).
  // streamingllm: 4 attention sinks + the device window.
  // keyformer:    Post-QKT score-based top-K, fixed K.
  // infinigen:    Pre-QKT partial-dimension speculation, fixed K.
  std::string policy = "full";
  // Device window per sequence and layer, in tokens. -1: 10% of the context. Ignored by
  // `full`; aog and aoc use 0 (everything offloaded).
  int window = -1;
  // K_min: the scheduler never uses fewer offloaded tokens per KV head (paper §4.3.1).
  int k_min = 128;
  // Fixed K for the selective baselines (h2o, keyformer, infinigen) and for `hybrid` with a
  // fixed selection; 0: K_min.
  int k = 0;
  // hybrid only: "adaptive" (Algorithm 1 picks K and switches Post -> Pre-QKT), "post" or
  // "pre" (fixed mode, K adapted unless k > 0), "off" (every offloaded token: exact).
  std::string selection = "adaptive";
  // Pre-QKT predictor of hybrid: "heavy" (accumulated attention, H2O-style), "sinks-recent"
  // (position-based) or "partial" (InfiniGen-style partial query dimensions).
  std::string predictor = "heavy";
  // Speculative query (the paper: layer i's input with layer i+1's norm and W_q) computed by
  // the CPU stage one layer ahead, overlapped with the device stage. false: the CPU stage waits
  // for the true query (synchronous; exact).
  bool speculative = true;
  // Speculation where it is measured to work: after a 4-step warm-up, layers whose speculated
  // query has a mean cosine similarity to the true query below this use the true query
  // (synchronous CPU stage). 0: speculate everywhere (the paper); 1: effectively exact.
  double speculation_min_cosine = 0.9;
  // Where the logits of the offloaded tokens a selective policy keeps come from:
  // "exact-selected": the CPU stage's query (speculated one layer ahead) only chooses them; their
  //   K rows travel with their V rows and the device stage scores them with the true query
  //   (exact attention over the kept tokens; twice the staged bytes);
  // "speculative": the CPU stage's logits are used as they are (the paper's mode);
  // "default": the policy's row (exact-selected for every selective policy).
  std::string cpu_logits = "default";
  // Scheduler guard: K is never decreased while the recall of the kept tokens (their softmax
  // mass among every offloaded token's CPU-stage logits, Post-QKT) is below this. 0: off.
  double recall_guard = 0.9;
  // Threads of the CPU stage's worker pool; 0: half of the threads (at least 1).
  int cpu_threads = 0;
  // A model profile written by hybridgen-eval --profile-out (JSON with "k_min"): its K_min
  // replaces k_min above. Empty: none.
  std::string profile;
  // Host memory of the offloaded KV (paper §4.4): "plain" (ordinary process memory), or a
  // NUMA placement policy: "semantic" (keys on DRAM nodes, values on the slow tier: CPU-less
  // nodes such as CXL memory), "interleave" (pages alternate over the tiers), "dram" (all on
  // nodes with CPUs). On a one-node machine the NUMA policies warn and use that node.
  std::string kv_memory = "plain";
  std::vector<int> fast_nodes, slow_nodes;  // empty: discovered (CPU nodes / CPU-less nodes)
  uint64_t fast_key_budget_bytes = 0;       // semantic: keys allowed on DRAM (0: all of it)
  // Device memory the KV window may take, MB (0: no limit). The window of every sequence and
  // layer is checked against it at load: too large is an out-of-memory error that says what was
  // asked, what the budget is and which flag lowers it (the CPU backend's stand-in for the
  // GPU's free memory; the CUDA backend checks the real one).
  double device_memory_mb = 0;
  // Record per-layer stage intervals (Engine::attention_trace) for Chrome/Perfetto traces.
  bool trace = false;
};

struct LoadOptions {
  // An HF model directory (config.json + *.safetensors + tokenizer.json) or a .gguf file.
  std::string model_path;
  // Seeded random weights of the shapes in model_path's config.json (a preset in models/):
  // no checkpoint needed. Tokenization is byte-level if the directory has no tokenizer.
  bool random_weights = false;
  uint64_t random_seed = 1;
  int n_ctx = 0;          // context size in tokens per sequence; 0: min(model's, 4096)
  int max_sequences = 1;  // sequences decoded together (batch)
  int n_threads = 0;      // CPU threads; 0: all cores
  WeightFormat weight_format = WeightFormat::kAuto;
  // Where the model runs: "cpu" (the reference backend) or "cuda" (all layers on the GPU).
  std::string device = "cpu";
  AttentionOptions attention;
};

struct GenerateOptions {
  int n_predict = 128;  // tokens to generate at most (< 0: until end of generation or context)
  SamplingParams sampling;
  bool stop_at_eog = true;  // stop at end-of-generation tokens (EOS, <|im_end|>, ...)
};

}  // namespace hybridgen
