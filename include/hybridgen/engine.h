// The public entry point: load a model, tokenize, generate with streaming, read stats.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hybridgen/chat.h"
#include "hybridgen/config.h"
#include "hybridgen/error.h"
#include "hybridgen/prefill_snapshot.h"

namespace hybridgen {

struct ModelInfo {
  std::string architecture;  // "llama", "qwen2", "mistral", "opt"
  std::string source;        // the path loaded (or "random weights of PATH")
  int n_layers = 0, d_model = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, d_ff = 0;
  int vocab_size = 0;
  int n_ctx = 0;  // context size of this engine
  int64_t n_params = 0;
  uint64_t weight_bytes = 0;  // as held by the backend
  // Weight bytes a decode step reads (linears, LM head, norms; not the embedding tables).
  uint64_t decode_weight_bytes = 0;
  std::string weight_format;  // "f32" or "bf16"
  uint64_t kv_bytes_per_token = 0;
  // The CPU instruction set the CPU kernels use ("portable", "avx2", "avx512", "avx512bf16":
  // detected at run time, capped by HYBRIDGEN_CPU_ISA), and one line per hot op naming its path.
  std::string cpu_isa;
  std::string cpu_dispatch;
};

struct GenerationStats {
  int n_prompt_tokens = 0;
  double prefill_seconds = 0;
  bool prefill_restored = false;  // from a PrefillSnapshot: prefill_seconds is the restore's
  int n_generated = 0;
  double decode_seconds = 0;  // decode forward passes + sampling, excluding prefill
  double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? n_prompt_tokens / prefill_seconds : 0;
  }
  double decode_tokens_per_second() const {
    // The first generated token comes from the prefill's logits; decode steps = n - 1.
    return decode_seconds > 0 && n_generated > 1 ? (n_generated - 1) / decode_seconds : 0;
  }
};

// What the hybrid runtime did since load (or the last reset_attention_stats). All zero for
// policy `full`. Times are sums over decode steps, in seconds.
struct AttentionStats {
  std::string policy;           // as given to load
  int window = 0;               // effective device window per sequence and layer (tokens)
  int64_t decode_steps = 0;     // forward steps that took the split (selective) path
  int64_t layer_passes = 0;     // (step, layer, sequence) attention passes on that path
  int64_t passes_all = 0;       // of those: every offloaded token used (none or <= K)
  int64_t passes_post_qkt = 0;  // Post-QKT: logits of all offloaded keys, then top-K
  int64_t passes_pre_qkt = 0;   // Pre-QKT: K predicted first, logits of those only
  double mean_k = 0;            // mean offloaded tokens used per KV head and pass
  int k_now = 0;                // the scheduler's current K (hybrid) or the fixed K
  std::string mode_now;         // the scheduler's current mode ("post-qkt" / "pre-qkt")
  double t_device = 0;          // device stage (everything but the CPU stage and its waits)
  double t_cpu = 0;             // CPU stage: query, logits and selection
  double t_tx = 0;              // V gather into staging (+ host-to-device copy on a GPU)
  double t_wait = 0;            // device stage blocked waiting for the CPU stage
  // Speculation's quality: mean cosine similarity between the CPU stage's speculated query and
  // the true one, over query heads, sequences and layers >= 1 (layer 0's is exact); and the
  // same for layer 1 alone. 0 when the query is exact.
  double speculation_cosine = 0;
  std::vector<double> speculation_cosine_per_layer;  // [n_layers]; index 0 is exact (1)
  uint64_t key_bytes_read = 0;                       // offloaded key bytes the CPU stage read
  uint64_t value_bytes_moved = 0;                    // offloaded V bytes gathered for the device
  uint64_t key_bytes_moved = 0;  // offloaded K bytes staged for the device (exact-selected)
  std::string cpu_logits;        // "speculative" / "exact-selected" (split policies)
  // Recall of the selection (Post-QKT passes): the softmax mass of the kept tokens among every
  // offloaded token's CPU-stage logits, mean over query heads and sequences; per layer, the mean
  // over passes (0: no Post-QKT pass), and its lowest value in one step's layer means.
  double recall = 0;                     // mean over every Post-QKT pass
  double recall_min_step = 0;            // lowest per-step minimum over layers (0: none)
  std::vector<double> recall_per_layer;  // [n_layers]
  int64_t recall_guard_holds = 0;        // steps where the scheduler's guard held K
  // Memory, bytes (used = tokens held; reserved = allocated). K and V apart.
  uint64_t window_used = 0, window_reserved = 0;
  uint64_t key_store_used = 0, key_store_reserved = 0;
  uint64_t value_store_used = 0, value_store_reserved = 0;
  uint64_t staging_bytes = 0;  // V staging + CPU-logits buffers, all pipeline slots
  std::string allocator;       // host allocator of the stores
  std::string placement;       // NUMA allocators: bytes per node and role, from the kernel
  std::vector<std::string> scheduler_trace;  // the last decisions of Algorithm 1
};

// One interval of a pipeline stage, for traces. Times in seconds since the engine was loaded.
struct StageEvent {
  std::string stage;  // "cpu" (query+logits+selection), "tx" (V gather), "device" (the layer on
                      // the device backend), "wait" (device stage blocked on the CPU stage)
  int64_t step = 0;   // decode step
  int layer = 0;
  double begin = 0, end = 0;
};

// Human-readable summary: the split, times, bytes and the memory per tier; verbose adds the
// scheduler's last decisions.
std::string format_attention_stats(const AttentionStats& s, bool verbose);

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (prompt excluded)
  std::string text;             // their exact bytes
  std::string stop_reason;      // "eog", "length" or "context"
  GenerationStats stats;
};

// Streaming callback: receives complete UTF-8 text as it is generated; return false to stop.
using StreamCallback = std::function<bool(std::string_view text)>;
// Batch streaming: also says which prompt the text belongs to.
using BatchStreamCallback = std::function<bool(int index, std::string_view text)>;

class Engine {
 public:
  // Throws hybridgen::Error naming the file/field/flag on any bad input.
  static std::unique_ptr<Engine> load(const LoadOptions& options);
  ~Engine();

  const ModelInfo& info() const;

  bool has_tokenizer() const;
  std::vector<int32_t> tokenize(std::string_view text, bool add_special = true,
                                bool parse_special = true) const;
  std::string detokenize(std::span<const int32_t> tokens) const;
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt = true) const;
  bool is_end_of_generation(int32_t token) const;

  // Prefill the prompt, then decode. Throws if the prompt does not fit the context.
  GenerationResult generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                            const StreamCallback& on_text = {});
  // Independent prompts of different lengths, decoded together (one forward step per
  // generated token for all live sequences). Requires prompts.size() <= max_sequences.
  std::vector<GenerationResult> generate_batch(const std::vector<std::vector<int32_t>>& prompts,
                                               const GenerateOptions& options,
                                               const BatchStreamCallback& on_text = {});

  // ---- Shared prefill (hybridgen/prefill_snapshot.h) ----
  // Prefills each prompt in its own sequence (as generate_batch does: chunks of 512 tokens, the
  // batch's prompts together), captures what every policy's decode needs (per layer the prompt's
  // K/V, the last logits, the prompt attention statistics) and closes the sequences again.
  // Policy full on the CPU backend gives exact float32 K/V; a tiered policy gives its tiers'
  // precision. Not during a generate; throws on --device cuda --policy full (its KV lives in
  // the backend, not readable yet).
  PrefillSnapshot prefill_snapshot(const std::vector<std::vector<int32_t>>& prompts,
                                   const PrefillSnapshotOptions& options = {});
  // Empty when this engine can restore `s` (same model shapes and vocabulary, context room,
  // statistics its policy needs, sequence slots free), else why not (naming what differs).
  std::string restore_problem(const PrefillSnapshot& s) const;
  // Opens a sequence and places prompt `index` of `s` in it: the KV-cache manager (full) or the
  // hybrid runtime's tiers (window through the device stage, older rows to the host stores as
  // bf16) and heavy-hitter scores, as this policy's own prefill of that prompt would have left
  // them. The next-token logits are s.sequences[index].logits. Throws restore_problem().
  int restore_sequence(const PrefillSnapshot& s, int index);
  // generate_batch from a snapshot: restore, then the same decode loop. stats.prefill_seconds
  // is the restore's time and stats.prefill_restored is set.
  std::vector<GenerationResult> generate_batch(const PrefillSnapshot& s,
                                               const GenerateOptions& options,
                                               const BatchStreamCallback& on_text = {});

  // ---- Continuous batching (servers): sequences join and leave between forward steps ----
  // One forward pass is a step(); a server opens a sequence per request, feeds its prompt in
  // chunks and then one token per step together with the other live sequences, samples from
  // the returned logits itself, and closes the sequence when the request ends. Not thread-safe:
  // one thread owns the engine (tokenize/detokenize/token_bytes are const and may be called
  // from other threads). Load the engine on that thread too: the CPU backend's OpenMP team
  // belongs to the thread that runs it, and a second, idle team left on the loading thread
  // makes libgomp throttle its spinning, slowing every step on a machine with few cores.
  // A row's logits do not depend on the other rows of a step as long as a step has at most 4
  // one-token inputs (the CPU backend's GEMV); bigger steps use oneDNN's GEMM, whose rounding
  // depends on the row count.

  // Opens one of the max_sequences slots, empty. Throws hybridgen::Error when all are in use.
  int open_sequence();
  // Frees the slot: its tokens leave the KV cache (the slot's memory is kept for the next one).
  void close_sequence(int seq);
  int sequence_length(int seq) const;  // tokens in the KV cache of an open sequence
  int open_sequences() const;
  struct StepInput {
    int seq = -1;                     // an open sequence
    std::span<const int32_t> tokens;  // appended to it: a prefill chunk or one decode token
  };
  // One forward pass over all inputs. logits: [inputs.size(), vocab] row-major, the next-token
  // logits after each input's last token. Throws (naming the sequence and the context size)
  // when a sequence would outgrow the context, or on a token id outside the vocabulary.
  void step(std::span<const StepInput> inputs, std::vector<float>& logits);
  // K+V bytes the open sequences hold (policy full: the one tier; the hybrid runtime's tiers
  // are in attention_stats()).
  uint64_t kv_bytes_in_use() const;
  // The bytes one token id stands for (possibly part of a UTF-8 character), for streaming.
  std::string token_bytes(int32_t token) const;

  // Teacher-forced evaluation: next-token logits after each prefix of `tokens`,
  // [tokens.size(), vocab] row-major. Starts from an empty context. The first prefill_tokens
  // (-1: all) go through in prefill chunks; the rest one token per forward step, as decode
  // steps (the hybrid runtime's split path, where selection and speculation apply).
  std::vector<float> evaluate(std::span<const int32_t> tokens, int prefill_tokens = -1);

  // The hybrid runtime's counters, memory and scheduler trace (policy != full).
  AttentionStats attention_stats() const;
  // Stage intervals recorded since load or the last reset (LoadOptions.attention.trace), sorted
  // by begin time. Call between generate calls, not during one.
  std::vector<StageEvent> attention_trace() const;
  void reset_attention_stats();  // also clears the trace

 private:
  Engine();
  // generate_batch's body: snapshot null: prefill `prompts`; else restore its sequences.
  std::vector<GenerationResult> generate_from(const std::vector<std::vector<int32_t>>& prompts,
                                              const PrefillSnapshot* snapshot,
                                              const GenerateOptions& options,
                                              const BatchStreamCallback& on_text);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hybridgen
