// Engine: the public API over the model loader, the transformer, the KV-cache manager, the
// sampler and the tokenizer.
#include "hybridgen/engine.h"

#include <omp.h>

#include <algorithm>
#include <chrono>

#include "cpu/isa.h"
#include "memory/allocator.h"
#include "memory/numa_allocator.h"
#include "model/model_loader.h"
#include "runtime/cpu_device_stage.h"
#include "runtime/hybrid_attention.h"
#include "runtime/prefill_capture.h"
#include "runtime/sampler.h"
#include "runtime/transformer.h"
#include "util/check.h"
#include "util/log.h"

namespace hybridgen {

namespace {
// Prompt tokens per forward pass during prefill: bounds the activations' memory
// ([chunk, 2 d_ff] floats) whatever the prompt length.
constexpr int kPrefillChunk = 512;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

struct Engine::Impl {
  ModelInfo info;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Backend> model;
  std::unique_ptr<kv::KvCacheManager> cache;
  // The hybrid runtime (policy != full): destroyed before the model it reads weights from.
  std::unique_ptr<memory::HostAllocator> host_alloc;
  memory::NumaAllocator* numa_alloc = nullptr;  // host_alloc when it is a NUMA allocator
  std::unique_ptr<runtime::HybridAttention> hybrid;
  int max_sequences = 1;
  // The runtime's stats and scheduler: the CPU backend's (hybrid) or the CUDA backend's own.
  runtime::HybridRuntime* runtime() const {
    if (hybrid) return hybrid.get();
    return model ? model->hybrid_runtime() : nullptr;
  }
  ~Impl() {  // the runtimes free their host stores into host_alloc: they go first
    hybrid.reset();
    model.reset();
  }

  // Engine::restore_problem; check_slots: also that every sequence of s finds a free slot.
  std::string restore_problem(const PrefillSnapshot& s, bool check_slots) const;

  const Tokenizer& tok() const {
    HG_CHECK(tokenizer, info.source +
                            ": this model has no tokenizer (random-weight presets "
                            "without tokenizer.json take token ids only)");
    return *tokenizer;
  }

  // Feeds prompts[i] into sequence seqs[i], in chunks; returns each prompt's last logits
  // [prompts.size(), vocab].
  std::vector<float> prefill(const std::vector<std::span<const int32_t>>& prompts,
                             const std::vector<int>& seqs) {
    const int vocab = model->config().vocab_size;
    std::vector<float> last(prompts.size() * size_t(vocab));
    std::vector<float> logits;
    Batch batch;
    std::vector<int> owners;  // which prompt each logits row of the batch belongs to
    auto flush = [&]() {
      if (batch.size() == 0) return;
      model->forward(batch, *cache, logits);
      for (size_t r = 0; r < owners.size(); ++r)
        std::copy_n(&logits[r * vocab], vocab, &last[size_t(owners[r]) * vocab]);
      batch = Batch();
      owners.clear();
    };
    for (size_t i = 0; i < prompts.size(); ++i) {
      for (size_t t = 0; t < prompts[i].size(); ++t) {
        const bool is_last = t + 1 == prompts[i].size();
        batch.add(prompts[i][t], seqs[i], is_last);
        if (is_last) owners.push_back(static_cast<int>(i));
        if (batch.size() == kPrefillChunk) flush();
      }
    }
    flush();
    return last;
  }
};

Engine::Engine() : impl_(std::make_unique<Impl>()) {}
Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::load(const LoadOptions& o) {
  HG_CHECK(!o.model_path.empty(), "no model given (the -m / --model flag)");
  HG_CHECK(o.n_ctx >= 0,
           "context size (-c / --ctx-size) must be >= 0, got " + std::to_string(o.n_ctx));
  HG_CHECK(o.max_sequences >= 1 && o.max_sequences <= 1024,
           "batch size must be in [1, 1024], got " + std::to_string(o.max_sequences));
  HG_CHECK(o.n_threads >= 0, "threads (-t) must be >= 0, got " + std::to_string(o.n_threads));
  if (o.n_threads > 0) omp_set_num_threads(o.n_threads);
  // The CPU level first: a bad HYBRIDGEN_CPU_ISA is reported before any work, and oneDNN's cap
  // is set before its first primitive.
  (void)cpu::active_isa();

  std::unique_ptr<Engine> e(new Engine());
  Impl& im = *e->impl_;
  const auto t0 = std::chrono::steady_clock::now();
  WeightChoice choice = o.weight_format == WeightFormat::kF32        ? WeightChoice::kF32
                        : o.weight_format == WeightFormat::kBF16     ? WeightChoice::kBF16
                        : o.weight_format == WeightFormat::kNative   ? WeightChoice::kNative
                        : o.weight_format == WeightFormat::kNativeQ8 ? WeightChoice::kNativeQ8
                                                                     : WeightChoice::kAuto;
  // The CUDA backend uploads float weights only (quantized ones: docs/quantization.md).
  HG_CHECK(!(o.device == "cuda" &&
             (choice == WeightChoice::kNative || choice == WeightChoice::kNativeQ8)),
           std::string("--weight-format ") +
               (choice == WeightChoice::kNative ? "native" : "native-q8") +
               " runs on --device cpu only (the CUDA backend takes f32 or bf16)");
  if (o.device == "cuda" && choice == WeightChoice::kAuto) choice = WeightChoice::kAutoFloat;
  LoadedModel m = load_model(o.model_path, o.random_weights, o.random_seed, choice);
  const ModelConfig& c = m.config;
  const int n_ctx = o.n_ctx > 0 ? o.n_ctx : std::min(c.max_positions, 4096);
  if (c.learned_positions)
    HG_CHECK(n_ctx <= c.max_positions,
             "context size " + std::to_string(n_ctx) + " exceeds the model's " +
                 std::to_string(c.max_positions) + " learned positions (lower -c)");

  ModelInfo& info = im.info;
  info.architecture = arch_name(c.arch);
  info.source = m.source;
  info.n_layers = c.n_layers;
  info.d_model = c.d_model;
  info.n_heads = c.n_heads;
  info.n_kv_heads = c.n_kv_heads;
  info.head_dim = c.head_dim;
  info.d_ff = c.d_ff;
  info.vocab_size = c.vocab_size;
  info.n_ctx = n_ctx;
  info.n_params = c.n_params();
  info.weight_bytes = m.weights.bytes();
  info.decode_weight_bytes = m.weights.decode_step_bytes();
  info.weight_format = m.weights.format_name();
  info.cpu_isa = cpu::isa_name(cpu::active_isa());
  info.cpu_dispatch = cpu::describe_dispatch();

  im.tokenizer = std::move(m.tokenizer);
  im.max_sequences = o.max_sequences;
  im.cache = std::make_unique<kv::KvCacheManager>(kv::KvShape{c.n_layers, c.n_kv_heads, c.head_dim},
                                                  n_ctx, o.max_sequences);
  info.kv_bytes_per_token = im.cache->bytes_per_token();
  HG_CHECK(o.device == "cpu" || o.device == "cuda",
           "unknown device '" + o.device + "' (the --device flag: cpu or cuda)");
  // --policy auto (the default on --device cuda): full while the whole context's KV of every
  // sequence fits in the device's free memory beside the weights and activations, else hybrid
  // with the largest window that fits (--gpu-memory-mb caps the KV's device memory).
  AttentionOptions att = o.attention;
  if (att.policy.empty()) att.policy = o.device == "cuda" ? "auto" : "full";
  if (att.policy == "auto") {
    if (o.device == "cuda") {
      const runtime::DeviceBudget b =
          cuda_device_budget(c, m.weights, n_ctx, o.max_sequences,
                             static_cast<uint64_t>(std::max(0.0, att.device_memory_mb) * 1e6));
      const runtime::AutoChoice choice = runtime::choose_auto_policy(b);
      att.policy = runtime::policy_name(choice.policy);
      if (choice.policy != runtime::Policy::kFull) att.window = choice.window;
      log().info("--policy auto chose {}: {}", att.policy, choice.reason);
    } else {
      att.policy = "full";
      log().info("--policy auto on --device cpu: full (host memory holds the whole KV)");
    }
  }
  const runtime::Policy policy = runtime::parse_policy(att.policy);
  const int threads = o.n_threads > 0 ? o.n_threads : omp_get_max_threads();
  // The hybrid runtime's host memory: plain (pinned on a GPU) or a NUMA placement policy.
  auto make_host_alloc = [&](bool pinned) {
    const AttentionOptions& a = att;
    if (a.kv_memory == "plain") {
      im.host_alloc = pinned ? make_cuda_pinned_allocator() : memory::make_plain_allocator();
    } else {
      memory::TierConfig tc;
      try {
        tc.policy = memory::parse_policy(a.kv_memory);
      } catch (const Error&) {
        fail("unknown KV memory policy '" + a.kv_memory +
             "' (the --kv-memory flag: plain, semantic, interleave, dram)");
      }
      tc.fast_nodes = a.fast_nodes;
      tc.slow_nodes = a.slow_nodes;
      tc.fast_key_budget_bytes = a.fast_key_budget_bytes;
      tc.auto_demote_keys = true;  // LRG: the newest keys stay on DRAM
      im.numa_alloc = memory::make_numa_allocator(tc).release();
      im.host_alloc.reset(im.numa_alloc);
    }
  };
  if (o.device == "cpu") {
    auto tf = std::make_unique<Transformer>(std::move(m.config), std::move(m.weights));
    if (policy != runtime::Policy::kFull) {
      const runtime::HybridConfig hc =
          runtime::resolve_attention_options(att, n_ctx, tf->config().head_dim, threads);
      make_host_alloc(false);
      im.hybrid = std::make_unique<runtime::HybridAttention>(hc, *tf, n_ctx, o.max_sequences,
                                                             *im.host_alloc);
      tf->set_attention_runner(im.hybrid.get());
      // The CPU stage's worker has its own threads: the device stage (here: the CPU backend)
      // gets the rest, so that the two stages do not fight over cores (an oversubscribed
      // OpenMP team spins in its barriers and starves the other stage).
      if (im.hybrid->policy_plan().pipelined)
        omp_set_num_threads(std::max(1, threads - hc.cpu_threads));
      log().info(
          "attention policy {}: GPU window {} tokens, K_min {}, {} query, {} CPU-stage "
          "thread(s)",
          runtime::policy_name(hc.policy), hc.window, hc.k_min,
          hc.speculative ? "speculative" : "exact", hc.cpu_threads);
    } else if (att.kv_memory != "plain")
      log().warn("--kv-memory {} has no effect with --policy full (one tier, nothing offloaded)",
                 att.kv_memory);
    im.model = std::move(tf);
  } else {  // cuda: every policy; the hybrid runtime lives in the backend (CUDA device stage)
    if (policy != runtime::Policy::kFull) {
      const runtime::HybridConfig hc =
          runtime::resolve_attention_options(att, n_ctx, m.config.head_dim, threads);
      make_host_alloc(true);
      CudaBackendOptions bo;
      bo.hybrid = &hc;
      bo.host_alloc = im.host_alloc.get();
      im.model = make_cuda_backend(m.config, m.weights, n_ctx, o.max_sequences, bo);
      if (im.model->hybrid_runtime()->policy_plan().pipelined)
        omp_set_num_threads(std::max(1, threads - hc.cpu_threads));
      log().info(
          "attention policy {} on the GPU: window {} tokens, K_min {}, {} query, {} CPU-stage "
          "thread(s), host stores in {}",
          runtime::policy_name(hc.policy), hc.window, hc.k_min,
          hc.speculative ? "speculative (GPU)" : "exact", hc.cpu_threads, im.host_alloc->name());
    } else {
      im.model = make_cuda_backend(m.config, m.weights, n_ctx, o.max_sequences);
    }
  }
  log().info("loaded {} ({}, {} layers, {:.1f} MB of {} weights) on {} in {:.2f} s", info.source,
             info.architecture, info.n_layers, info.weight_bytes / 1e6, info.weight_format,
             im.model->name(), seconds_since(t0));
  return e;
}

const ModelInfo& Engine::info() const { return impl_->info; }
bool Engine::has_tokenizer() const { return impl_->tokenizer != nullptr; }

std::vector<int32_t> Engine::tokenize(std::string_view text, bool add_special,
                                      bool parse_special) const {
  return impl_->tok().encode(text, add_special, parse_special);
}

std::string Engine::detokenize(std::span<const int32_t> tokens) const {
  return impl_->tok().decode(tokens);
}

std::string Engine::apply_chat_template(const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt) const {
  return impl_->tok().apply_chat_template(messages, add_generation_prompt);
}

bool Engine::is_end_of_generation(int32_t token) const {
  if (impl_->tokenizer) return impl_->tokenizer->is_end_of_generation(token);
  return token == impl_->model->config().eos_id;
}

GenerationResult Engine::generate(std::span<const int32_t> prompt, const GenerateOptions& options,
                                  const StreamCallback& on_text) {
  BatchStreamCallback cb;
  if (on_text) cb = [&](int, std::string_view text) { return on_text(text); };
  return std::move(
      generate_batch({std::vector<int32_t>(prompt.begin(), prompt.end())}, options, cb)[0]);
}

std::vector<GenerationResult> Engine::generate_batch(
    const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& options,
    const BatchStreamCallback& on_text) {
  return generate_from(prompts, nullptr, options, on_text);
}

std::vector<GenerationResult> Engine::generate_batch(const PrefillSnapshot& s,
                                                     const GenerateOptions& options,
                                                     const BatchStreamCallback& on_text) {
  std::vector<std::vector<int32_t>> prompts;
  for (const PrefillSnapshot::Sequence& q : s.sequences) prompts.push_back(q.prompt);
  return generate_from(prompts, &s, options, on_text);
}

std::vector<GenerationResult> Engine::generate_from(
    const std::vector<std::vector<int32_t>>& prompts, const PrefillSnapshot* snap,
    const GenerateOptions& options, const BatchStreamCallback& on_text) {
  Impl& im = *impl_;
  const int n = static_cast<int>(prompts.size());
  const int vocab = im.info.vocab_size;
  options.sampling.validate();
  HG_CHECK(n >= 1, "generate: no prompts");
  HG_CHECK(n <= im.max_sequences, "generate: " + std::to_string(n) +
                                      " prompts but the engine was loaded for a batch of " +
                                      std::to_string(im.max_sequences) + " (raise the batch size)");
  for (int i = 0; i < n; ++i) {
    HG_CHECK(!prompts[i].empty(), "prompt " + std::to_string(i) + " is empty");
    HG_CHECK(static_cast<int>(prompts[i].size()) < im.info.n_ctx,
             "prompt " + std::to_string(i) + " has " + std::to_string(prompts[i].size()) +
                 " tokens but the context size is " + std::to_string(im.info.n_ctx) +
                 " (raise it with -c / --ctx-size, or shorten the prompt)");
    for (int32_t t : prompts[i])
      HG_CHECK(t >= 0 && t < vocab, "prompt " + std::to_string(i) + " has token id " +
                                        std::to_string(t) + " outside the vocabulary");
  }

  if (snap) {
    const std::string why = restore_problem(*snap);
    HG_CHECK(why.empty(), why);
  }
  std::vector<int> seqs;
  const auto t_open = std::chrono::steady_clock::now();
  try {
    for (int i = 0; i < n; ++i)
      seqs.push_back(snap ? restore_sequence(*snap, i) : im.cache->open_sequence());
  } catch (...) {
    for (int s : seqs) im.cache->close_sequence(s);
    throw;
  }
  const double restore_s = snap ? seconds_since(t_open) : 0;
  if (im.runtime()) im.runtime()->new_request();
  struct Live {
    std::vector<int32_t> history;
    Sampler sampler;
    std::unique_ptr<StreamDecoder> stream;
    bool done = false;
  };
  std::vector<Live> live;
  std::vector<GenerationResult> results(n);
  for (int i = 0; i < n; ++i) {
    live.push_back(Live{prompts[i], Sampler(options.sampling),
                        im.tokenizer ? std::make_unique<StreamDecoder>(*im.tokenizer) : nullptr});
    results[i].stats.n_prompt_tokens = static_cast<int>(prompts[i].size());
  }

  auto close_all = [&]() {
    for (int s : seqs) im.cache->close_sequence(s);
  };
  try {
    std::vector<float> logits;
    if (snap) {  // restored above: the snapshot's last logits
      for (const PrefillSnapshot::Sequence& q : snap->sequences)
        logits.insert(logits.end(), q.logits.begin(), q.logits.end());
      for (auto& r : results) {
        r.stats.prefill_seconds = restore_s;
        r.stats.prefill_restored = true;
      }
    } else {
      auto t0 = std::chrono::steady_clock::now();
      std::vector<std::span<const int32_t>> spans(prompts.begin(), prompts.end());
      logits = im.prefill(spans, seqs);
      const double prefill_s = seconds_since(t0);
      for (auto& r : results) r.stats.prefill_seconds = prefill_s;
    }

    double decode_s = 0;
    if (options.n_predict == 0)
      for (int i = 0; i < n; ++i) {
        live[i].done = true;
        results[i].stop_reason = "length";
      }
    std::vector<int> rows(n);  // logits row of each live sequence in `logits`
    for (int i = 0; i < n; ++i) rows[i] = i;
    while (true) {
      const auto ts = std::chrono::steady_clock::now();
      Batch batch;
      std::vector<int> owners;
      for (int i = 0; i < n; ++i) {
        if (live[i].done) continue;
        const int32_t tok = live[i].sampler.sample(
            std::span<const float>(&logits[size_t(rows[i]) * vocab], vocab), live[i].history);
        live[i].history.push_back(tok);
        GenerationResult& r = results[i];
        r.tokens.push_back(tok);
        const bool eog = options.stop_at_eog && is_end_of_generation(tok);
        if (!eog && live[i].stream) {
          std::string text = live[i].stream->push(tok);
          r.text += text;
          if (on_text && !text.empty() && !on_text(i, text)) live[i].done = true;
        }
        const int len = im.cache->length(seqs[i]);
        if (eog) {
          r.stop_reason = "eog";
          live[i].done = true;
        } else if (options.n_predict >= 0 &&
                   static_cast<int>(r.tokens.size()) >= options.n_predict) {
          r.stop_reason = "length";
          live[i].done = true;
        } else if (len + 1 > im.info.n_ctx) {
          r.stop_reason = "context";
          live[i].done = true;
        } else if (live[i].done) {
          r.stop_reason = "callback";
        }
        if (live[i].done) {
          if (live[i].stream) {
            std::string rest = live[i].stream->flush();
            r.text += rest;
            if (on_text && !rest.empty()) on_text(i, rest);
          }
          continue;
        }
        batch.add(tok, seqs[i], true);
        owners.push_back(i);
      }
      if (batch.size() == 0) {
        decode_s += seconds_since(ts);
        break;
      }
      im.model->forward(batch, *im.cache, logits);
      for (size_t r = 0; r < owners.size(); ++r) rows[owners[r]] = static_cast<int>(r);
      decode_s += seconds_since(ts);
    }
    for (auto& r : results) {
      r.stats.n_generated = static_cast<int>(r.tokens.size());
      r.stats.decode_seconds = decode_s;
      if (!im.tokenizer) r.text.clear();
    }
  } catch (...) {
    close_all();
    throw;
  }
  close_all();
  return results;
}

// ---- Shared prefill -------------------------------------------------------------------------

uint64_t PrefillSnapshot::bytes() const {
  uint64_t b = 0;
  for (const Sequence& q : sequences)
    for (const auto* part : {&q.k, &q.v, &q.h2o, &q.keyformer})
      for (const std::vector<float>& l : *part) b += l.size() * sizeof(float);
  return b;
}

PrefillSnapshot Engine::prefill_snapshot(const std::vector<std::vector<int32_t>>& prompts,
                                         const PrefillSnapshotOptions& options) {
  Impl& im = *impl_;
  const int n = static_cast<int>(prompts.size());
  const ModelConfig& c = im.model->config();
  HG_CHECK(n >= 1 && n <= im.max_sequences, "prefill snapshot: " + std::to_string(n) +
                                                " prompts, the engine was loaded for a batch of " +
                                                std::to_string(im.max_sequences));
  // It resets the attention runtime's scheduler for a new request, which would disturb live
  // sequences (a server's): take snapshots on an idle engine.
  HG_CHECK(open_sequences() == 0, "prefill snapshot: " + std::to_string(open_sequences()) +
                                      " sequence(s) are open; take a snapshot on an engine "
                                      "with none open (close them, or use another engine)");
  for (int i = 0; i < n; ++i) {
    HG_CHECK(!prompts[i].empty() && static_cast<int>(prompts[i].size()) < im.info.n_ctx,
             "prefill snapshot: prompt " + std::to_string(i) + " has " +
                 std::to_string(prompts[i].size()) + " tokens; it must have 1 to " +
                 std::to_string(im.info.n_ctx - 1) + " (-c / --ctx-size)");
    for (int32_t t : prompts[i])
      HG_CHECK(t >= 0 && t < c.vocab_size, "prefill snapshot: prompt " + std::to_string(i) +
                                               " has token id " + std::to_string(t) +
                                               " outside the vocabulary");
  }
  runtime::HybridRuntime* rt = im.runtime();
  auto* tf = dynamic_cast<Transformer*>(im.model.get());
  HG_CHECK(rt || tf,
           "prefill snapshot: --device cuda --policy full keeps its KV in the backend, which "
           "cannot be read back yet; take the snapshot with a tiered policy or on --device cpu");
  PrefillSnapshot s;
  s.model_source = im.info.source;
  s.weight_format = im.info.weight_format;
  s.n_layers = c.n_layers;
  s.n_kv_heads = c.n_kv_heads;
  s.head_dim = c.head_dim;
  s.vocab_size = c.vocab_size;
  const runtime::HybridConfig defaults;
  s.keyformer_tau_init = rt ? rt->config().keyformer_tau_init : defaults.keyformer_tau_init;
  s.keyformer_tau_delta = rt ? rt->config().keyformer_tau_delta : defaults.keyformer_tau_delta;
  s.source_policy = rt ? runtime::policy_name(rt->config().policy) : "full";
  s.source_window = rt ? rt->config().window : im.info.n_ctx;
  s.kv_precision = !rt ? "f32"
                   : rt->device_stage().name() == std::string("cpu")
                       ? "f32 window + bf16 offloaded"
                       : "bf16 window + bf16 offloaded";
  // The CPU backend: the engine's own attention (full's, or the hybrid runtime) wrapped by
  // PromptStatsAttention, which adds the prompt attention statistics over the keys as that
  // attention read them. The CUDA backend runs its runtime itself: only the runtime's own scores.
  std::unique_ptr<runtime::PromptStatsAttention> cap;
  if (tf) {
    runtime::PromptStatsAttention::KeysOf keys_of;
    if (rt)
      keys_of = [rt](int seq, int il, std::vector<float>& K) {
        return rt->attended_keys(seq, il, K);
      };
    cap = std::make_unique<runtime::PromptStatsAttention>(
        *im.cache, runtime::dims_of(*tf), im.hybrid.get(), keys_of, options.attention_stats,
        options.keyformer_stats, s.keyformer_tau_init, s.keyformer_tau_delta);
    tf->set_attention_runner(cap.get());
  }
  std::vector<int> seqs;
  auto cleanup = [&]() {
    if (cap) tf->set_attention_runner(im.hybrid.get());  // null: FullAttention again
    for (int q : seqs) im.cache->close_sequence(q);
  };
  try {
    for (int i = 0; i < n; ++i) seqs.push_back(im.cache->open_sequence());
    if (rt) rt->new_request();
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::span<const int32_t>> spans(prompts.begin(), prompts.end());
    const std::vector<float> logits = im.prefill(spans, seqs);
    s.prefill_seconds = seconds_since(t0);
    if (cap) s.stats_seconds = cap->stats_seconds();
    t0 = std::chrono::steady_clock::now();
    const int nkv = c.n_kv_heads, hd = c.head_dim;
    const int64_t kv_w = int64_t(nkv) * hd;
    for (int i = 0; i < n; ++i) {
      PrefillSnapshot::Sequence q;
      q.prompt = prompts[i];
      q.slot = seqs[i];
      q.logits.assign(logits.begin() + int64_t(i) * c.vocab_size,
                      logits.begin() + int64_t(i + 1) * c.vocab_size);
      const int len = q.n_tokens();
      if (rt) {
        rt->capture_prefill(seqs[i], q);  // K/V (and on a GPU the runtime's own scores)
      } else {
        q.k.assign(c.n_layers, std::vector<float>(size_t(len) * kv_w));
        q.v.assign(c.n_layers, std::vector<float>(size_t(len) * kv_w));
        for (int l = 0; l < c.n_layers; ++l) {
          const kv::LayerView view = im.cache->view(seqs[i], l);
          for (int p = 0; p < len; ++p)
            for (int h = 0; h < nkv; ++h) {
              std::copy_n(view.key(h, p), hd, &q.k[l][p * kv_w + h * hd]);
              std::copy_n(view.value(h, p), hd, &q.v[l][p * kv_w + h * hd]);
            }
        }
      }
      if (cap && options.attention_stats) {
        const int kinds = options.keyformer_stats ? 2 : 1;
        q.h2o.assign(c.n_layers, {});
        if (kinds == 2) q.keyformer.assign(c.n_layers, {});  // else: the runtime's own, if any
        for (int l = 0; l < c.n_layers; ++l) {
          const kv::HeavyHitterAccumulator* acc[2] = {cap->h2o(seqs[i], l),
                                                      cap->keyformer(seqs[i], l)};
          std::vector<float>* dst[2] = {&q.h2o[l], kinds == 2 ? &q.keyformer[l] : nullptr};
          for (int a = 0; a < kinds; ++a) {
            HG_CHECK(acc[a], "prefill snapshot: no statistics of layer " + std::to_string(l));
            dst[a]->assign(size_t(nkv) * len, 0.f);
            for (int h = 0; h < nkv; ++h)
              std::copy_n(acc[a]->score(h).begin(), std::min<size_t>(len, acc[a]->score(h).size()),
                          dst[a]->begin() + int64_t(h) * len);
          }
          q.stat_updates = acc[0]->updates();
        }
      }
      s.sequences.push_back(std::move(q));
    }
    s.capture_seconds = seconds_since(t0);
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
  return s;
}

std::string Engine::restore_problem(const PrefillSnapshot& s) const {
  return impl_->restore_problem(s, true);
}

std::string Engine::Impl::restore_problem(const PrefillSnapshot& s, bool check_slots) const {
  const Impl& im = *this;
  const ModelConfig& c = im.model->config();
  if (s.n_layers != c.n_layers || s.n_kv_heads != c.n_kv_heads || s.head_dim != c.head_dim ||
      s.vocab_size != c.vocab_size)
    return "prefill snapshot of " + s.model_source + " (" + std::to_string(s.n_layers) +
           " layers, " + std::to_string(s.n_kv_heads) + " KV heads of " +
           std::to_string(s.head_dim) + ", vocabulary " + std::to_string(s.vocab_size) +
           ") does not fit " + im.info.source + " (" + std::to_string(c.n_layers) + ", " +
           std::to_string(c.n_kv_heads) + ", " + std::to_string(c.head_dim) + ", " +
           std::to_string(c.vocab_size) + ")";
  if (s.model_source != im.info.source || s.weight_format != im.info.weight_format)
    return "prefill snapshot of " + s.model_source + " (" + s.weight_format +
           " weights) does not belong to " + im.info.source + " (" + im.info.weight_format +
           " weights)";
  if (s.sequences.empty()) return "prefill snapshot: no sequences";
  int free_slots = 0;
  for (int q = 0; q < im.cache->max_sequences(); ++q) free_slots += !im.cache->is_open(q);
  if (check_slots && int(s.sequences.size()) > free_slots)
    return "prefill snapshot: " + std::to_string(s.sequences.size()) + " sequences, " +
           std::to_string(free_slots) + " free sequence slot(s) (raise the batch size)";
  const runtime::HybridRuntime* rt = im.runtime();
  if (!rt && !dynamic_cast<const Transformer*>(im.model.get()))
    return "prefill restore: --device cuda --policy full keeps its KV in the backend; restoring "
           "into it is not implemented (use a tiered policy, or --device cpu)";
  for (int i = 0; i < int(s.sequences.size()); ++i) {
    const PrefillSnapshot::Sequence& q = s.sequences[i];
    if (int(q.logits.size()) != c.vocab_size)
      return "prefill snapshot: sequence " + std::to_string(i) + " has no last logits";
    if (rt) {
      std::string why = rt->restore_problem(s, i);
      if (!why.empty()) return why;
    } else if (q.n_tokens() >= im.info.n_ctx) {
      return "prefill snapshot: " + std::to_string(q.n_tokens()) +
             " prompt tokens do not fit the context size " + std::to_string(im.info.n_ctx) +
             " (-c)";
    } else if (int(q.k.size()) != c.n_layers || int(q.v.size()) != c.n_layers) {
      return "prefill snapshot: sequence " + std::to_string(i) + " has K/V of " +
             std::to_string(q.k.size()) + " layers, the model " + std::to_string(c.n_layers);
    }
  }
  return "";
}

int Engine::restore_sequence(const PrefillSnapshot& s, int index) {
  Impl& im = *impl_;
  HG_CHECK(index >= 0 && index < int(s.sequences.size()),
           "prefill restore: no sequence " + std::to_string(index) + " in the snapshot (it holds " +
               std::to_string(s.sequences.size()) + ")");
  const std::string why = im.restore_problem(s, false);
  HG_CHECK(why.empty(), why);
  const PrefillSnapshot::Sequence& q = s.sequences[index];
  const ModelConfig& c = im.model->config();
  const int n = q.n_tokens(), nkv = c.n_kv_heads, hd = c.head_dim;
  const int64_t kv_w = int64_t(nkv) * hd;
  const int seq = open_sequence();
  try {
    im.cache->reserve(seq, n);  // positions
    if (runtime::HybridRuntime* rt = im.runtime()) {
      if (q.slot != seq && std::string(rt->heavy_kind()) == "keyformer")
        log().warn(
            "prefill restore: Keyformer's noise is seeded per sequence slot; prompt {} was "
            "prefilled in slot {} and decodes in slot {}",
            index, q.slot, seq);
      rt->restore_prefill(seq, s, index);
    } else {
      for (int l = 0; l < c.n_layers; ++l) {
        HG_CHECK(q.k[l].size() == size_t(n) * kv_w && q.v[l].size() == size_t(n) * kv_w,
                 "prefill snapshot: layer " + std::to_string(l) + " has the wrong size");
        for (int p = 0; p < n; ++p)
          im.cache->write(seq, l, p, &q.k[l][p * kv_w], &q.v[l][p * kv_w]);
      }
    }
  } catch (...) {
    im.cache->close_sequence(seq);
    throw;
  }
  return seq;
}

int Engine::open_sequence() {
  Impl& im = *impl_;
  // The first sequence after an idle engine is a new request for the scheduler (Algorithm 1,
  // lines 6-7), as generate() starts one.
  if (im.runtime() && open_sequences() == 0) im.runtime()->new_request();
  return im.cache->open_sequence();
}

void Engine::close_sequence(int seq) { impl_->cache->close_sequence(seq); }

int Engine::sequence_length(int seq) const { return impl_->cache->length(seq); }

int Engine::open_sequences() const {
  int n = 0;
  for (int s = 0; s < impl_->cache->max_sequences(); ++s) n += impl_->cache->is_open(s);
  return n;
}

void Engine::step(std::span<const StepInput> inputs, std::vector<float>& logits) {
  Impl& im = *impl_;
  const int vocab = im.info.vocab_size;
  HG_CHECK(!inputs.empty(), "step: no inputs");
  Batch batch;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepInput& in = inputs[i];
    HG_CHECK(!in.tokens.empty(), "step: input " + std::to_string(i) + " has no tokens");
    const int len = im.cache->length(in.seq);  // throws if the sequence is not open
    HG_CHECK(static_cast<int64_t>(len) + static_cast<int64_t>(in.tokens.size()) <= im.info.n_ctx,
             "step: sequence " + std::to_string(in.seq) + " has " + std::to_string(len) +
                 " tokens and " + std::to_string(in.tokens.size()) +
                 " more do not fit the context size " + std::to_string(im.info.n_ctx) +
                 " (raise it with -c / --ctx-size)");
    for (size_t t = 0; t < in.tokens.size(); ++t) {
      HG_CHECK(in.tokens[t] >= 0 && in.tokens[t] < vocab,
               "step: token id " + std::to_string(in.tokens[t]) + " is outside the vocabulary");
      batch.add(in.tokens[t], in.seq, t + 1 == in.tokens.size());
    }
  }
  im.model->forward(batch, *im.cache, logits);
}

uint64_t Engine::kv_bytes_in_use() const {
  return impl_->cache->bytes_in(kv::Tier::kDevice) + impl_->cache->bytes_in(kv::Tier::kHost);
}

std::string Engine::token_bytes(int32_t token) const { return impl_->tok().token_bytes(token); }

AttentionStats Engine::attention_stats() const {
  if (impl_->runtime()) {
    AttentionStats s = impl_->runtime()->stats();
    if (impl_->numa_alloc) s.placement = impl_->numa_alloc->report().format();
    return s;
  }
  AttentionStats s;
  s.policy = "full";
  s.window = impl_->info.n_ctx;
  return s;
}

std::vector<StageEvent> Engine::attention_trace() const {
  if (impl_->runtime()) return impl_->runtime()->trace();
  return {};
}

void Engine::reset_attention_stats() {
  if (impl_->runtime()) impl_->runtime()->reset_stats();
}

std::vector<float> Engine::evaluate(std::span<const int32_t> tokens, int prefill_tokens) {
  Impl& im = *impl_;
  const int n_chunked = prefill_tokens < 0
                            ? static_cast<int>(tokens.size())
                            : std::min(prefill_tokens, static_cast<int>(tokens.size()));
  HG_CHECK(!tokens.empty(), "evaluate: no tokens");
  HG_CHECK(static_cast<int>(tokens.size()) <= im.info.n_ctx,
           "evaluate: " + std::to_string(tokens.size()) + " tokens exceed the context size " +
               std::to_string(im.info.n_ctx) + " (raise -c)");
  const int vocab = im.info.vocab_size;
  std::vector<float> all(tokens.size() * size_t(vocab));
  const int seq = im.cache->open_sequence();
  if (im.runtime()) im.runtime()->new_request();
  try {
    std::vector<float> logits;
    for (size_t begin = 0; begin < tokens.size();) {
      // Chunks up to n_chunked, then one token per step (decode steps).
      const size_t end = begin < size_t(n_chunked)
                             ? std::min(size_t(n_chunked), begin + kPrefillChunk)
                             : begin + 1;
      Batch batch;
      for (size_t t = begin; t < end; ++t) batch.add(tokens[t], seq, true);
      im.model->forward(batch, *im.cache, logits);
      std::copy(logits.begin(), logits.end(), all.begin() + begin * vocab);
      begin = end;
    }
  } catch (...) {
    im.cache->close_sequence(seq);
    throw;
  }
  im.cache->close_sequence(seq);
  return all;
}

}  // namespace hybridgen
