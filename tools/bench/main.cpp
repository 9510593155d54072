// hybridgen-bench: the attention policies side by side on the same model and inputs, over sweeps
// of context length, batch, device window, K and selection, with repetitions; llama-bench style.
//
//   hybridgen-bench --policy full,hybrid,aog -p 512,1024 -n 32 -r 3
//   hybridgen-bench -m models/presets/llama-3.2-1b --random-weights --policy hybrid
//       --selection adaptive,post,pre --k 0,64 -p 1024-4096*2 --json out.json --trace t.json
//
// What is timed: Engine::generate_batch on seeded random token ids (no tokenization), greedy
// decoding, end-of-generation ignored. Prefill = the prompt's forward passes. Decode = the
// engine's decode loop: n - 1 forward steps plus greedy sampling (an argmax over the vocabulary,
// timed apart and printed) and the incremental detokenization of each generated id. Engine loads
// (weights included) and warm-up runs are outside every timing.
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "ceilings.h"
#include "common/attention_flags.h"
#include "hybridgen/hybridgen.h"
#include "report.h"
#include "runtime/sampler.h"
#include "sweep.h"
#include "util/check.h"
#include "util/log.h"

namespace {

using namespace hybridgen;
using namespace hybridgen::bench;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), cached by models/fetch-default-model.sh.
std::string default_model_path() {
  if (const char* env = std::getenv("HYBRIDGEN_DEFAULT_MODEL")) return env;
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// Seeded token ids (splitmix64, as hybridgen-run --n-prompt): sequence i of every configuration
// gets the same ids, so that policies see identical inputs.
std::vector<int32_t> random_prompt(int n, int vocab, uint64_t seed) {
  std::vector<int32_t> ids;
  uint64_t x = seed;
  for (int i = 0; i < n; ++i) {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    ids.push_back(static_cast<int32_t>((z ^ (z >> 31)) % vocab));
  }
  return ids;
}

// Microseconds of one greedy sample over `vocab` logits (the engine's Sampler), reported beside
// decode times because the engine's decode loop includes it.
double greedy_sample_us(int vocab) {
  SamplingParams p;
  p.temperature = 0;
  Sampler sampler(p);
  std::vector<float> logits(vocab);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (float& l : logits) l = nd(rng);
  const std::vector<int32_t> history;
  const int n = 200;
  volatile int32_t sink = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) sink = sink + sampler.sample(logits, history);
  return 1e6 * seconds_since(t0) / n;
}

// A one-line progress bar on stderr, redrawn in place on a terminal.
class Progress {
 public:
  Progress(bool on, int total) : on_(on), tty_(isatty(fileno(stderr))), total_(total) {}
  void update(int done, const std::string& what) {
    if (!on_) return;
    const int width = 30;
    const int filled = total_ > 0 ? done * width / total_ : width;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "%s[%s] %d/%d %.0f s  %s%s", tty_ ? "\r\033[K" : "", bar.c_str(), done,
                 total_, seconds_since(t0_), what.c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void clear() {
    if (on_ && tty_) std::fputs("\r\033[K", stderr);
  }

 private:
  bool on_, tty_;
  int total_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

// The first line of a /proc file that starts with `key` (the whole first line if key is empty),
// or "" where there is none (not Linux).
std::string proc_line(const char* path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line))
    if (line.compare(0, key.size(), key) == 0) {
      const size_t colon = key.empty() ? std::string::npos : line.find(':');
      return colon == std::string::npos ? line
                                        : line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "";
}

std::string joined_command(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.find_first_of(" \"'*") != std::string::npos) a = "'" + a + "'";
    s += (i ? " " : "") + a;
  }
  return s;
}

// Creates (or keeps) the file now, so that a bad output path fails before the runs.
void check_writable(const std::string& flag, const std::string& path) {
  if (path.empty()) return;
  std::ofstream f(path, std::ios::app);
  if (!f) throw Error(flag + " " + path + ": cannot open for writing");
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  if (!f) throw Error(path + ": write failed");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hybridgen-bench: attention policies side by side over sweeps (llama-bench style)"};
  LoadOptions load;
  load.model_path = default_model_path();
  std::string policies = "full,hybrid,aog", n_prompt = "512", batch = "1", windows, window_fracs,
              ks = "0", selections = "adaptive", weight_format = "auto", log_level;
  std::string json_path, csv_path, trace_path;
  SweepSpec spec;
  uint64_t seed = 1;
  int bw_mib = 1024, bw_reps = 5;
  bool progress = false, no_shared_prefill = false;
  std::string shared_prefill = "window";

  app.add_option("-m,--model", load.model_path, "HF model directory or .gguf file")
      ->capture_default_str();
  app.add_flag("--random-weights", load.random_weights,
               "seeded random weights of the shapes in -m's config.json (models/presets)");
  app.add_option("--weight-seed", load.random_seed, "seed of --random-weights")
      ->capture_default_str();
  app.add_option("--weight-format", weight_format,
                 "weights for the CPU GEMMs: auto, f32, bf16, native (GGUF blocks as stored, "
                 "16-bit activations), native-q8 (the same blocks, llama.cpp's 8-bit activations)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "native", "native-q8"}))
      ->capture_default_str();
  app.add_option("--device", spec.device, "cpu or cuda (every policy)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--policy", policies,
                 "policies, comma list: full, hybrid, aog, aoc, h2o, streamingllm, keyformer, "
                 "infinigen")
      ->capture_default_str();
  app.add_option("-p,--n-prompt", n_prompt,
                 "prompt lengths (tokens): list and ranges, e.g. 512,1024 or 512-4096*2")
      ->capture_default_str();
  app.add_option("-n,--n-gen", spec.n_gen, "tokens generated per sequence (n - 1 decode steps)")
      ->capture_default_str();
  app.add_option("-b,--batch", batch, "batch sizes (sequences decoded together): list, ranges")
      ->capture_default_str();
  app.add_option("-c,--ctx-size", spec.n_ctx, "engine context (0: -p + -n of each prompt length)")
      ->capture_default_str();
  auto* win = app.add_option("--window", windows,
                             "device windows in tokens: list, ranges (-1: 10% of the context)");
  app.add_option("--window-frac", window_fracs,
                 "device windows as fractions of the context, list (default 0.1)")
      ->excludes(win);
  app.add_option("--k", ks, "fixed K list (hybrid, h2o, keyformer, infinigen); 0: K_min/adaptive")
      ->capture_default_str();
  app.add_option("--k-min", spec.k_min, "K_min of the scheduler and of the fixed-K policies")
      ->capture_default_str();
  app.add_option("--selection", selections, "hybrid's selection list: adaptive, post, pre, off")
      ->capture_default_str();
  tools::AttentionFlagExtras attention_extras;
  tools::add_attention_flags(app, load.attention, attention_extras,
                             tools::AttentionFlagScope::kExceptSweeps);
  app.add_option("-t,--threads", load.n_threads, "CPU threads (0: all cores)")
      ->capture_default_str();
  app.add_option("-r,--repetitions", spec.repetitions, "timed runs per configuration")
      ->capture_default_str();
  app.add_option("--warmup", spec.warmup,
                 "untimed runs per configuration before the timed ones (same prompt, <= 3 "
                 "tokens generated)")
      ->capture_default_str();
  app.add_option("-s,--seed", seed, "seed of the random prompt ids")->capture_default_str();
  app.add_option("--bw-mib", bw_mib, "buffer of the host bandwidth measurement, MiB")
      ->capture_default_str();
  app.add_option("--bw-reps", bw_reps, "passes of the host bandwidth measurement")
      ->capture_default_str();
  app.add_option("--json", json_path, "write every configuration and repetition as JSON");
  app.add_option("--csv", csv_path, "write one CSV row per configuration");
  app.add_option("--trace", trace_path,
                 "write a Chrome/Perfetto trace of the pipeline stages (last repetition of each "
                 "configuration; tracing adds a little overhead to the timings)");
  app.add_option("--shared-prefill", shared_prefill,
                 "one prefill restored into several configurations' engines (docs/benchmarks.md): "
                 "window = per prompt length, context, batch and device window (the restored "
                 "decode is bit-identical to each policy's own prefill); context = per prompt "
                 "length, context and batch (one exact float32 prefill of policy full for every "
                 "policy; tiered policies then differ from their own prefill by its bf16 "
                 "rounding of offloaded K/V); off")
      ->check(CLI::IsMember({"window", "context", "off"}))
      ->capture_default_str();
  app.add_flag("--no-shared-prefill", no_shared_prefill, "--shared-prefill off");
  app.add_flag("--progress", progress, "progress bar on stderr even when it is not a terminal");
  app.add_option("--log-level", log_level, "engine log level (default warn)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help exits 0; every bad command line exits 1, like the sweep errors below.
    return app.exit(e) == 0 ? 0 : 1;
  }

  try {
    if (!log_level.empty()) set_log_level(log_level);
    // ---- every check before any work ----
    spec.policies = parse_name_list("--policy", policies, policy_names());
    spec.n_prompt = parse_int_list("-p/--n-prompt", n_prompt);
    spec.batch = parse_int_list("-b/--batch", batch);
    if (!windows.empty() || app.count("--window"))
      spec.windows = parse_int_list("--window", windows);
    else
      spec.window_fracs =
          parse_double_list("--window-frac", app.count("--window-frac") ? window_fracs : "0.1");
    spec.ks = parse_int_list("--k", ks);
    spec.k_min_given = app.count("--k-min") > 0;
    spec.selections =
        parse_name_list("--selection", selections, {"adaptive", "post", "pre", "off"});
    HG_CHECK(load.n_threads >= 0, "-t/--threads must be >= 0");
    HG_CHECK(load.attention.cpu_threads >= 0, "--cpu-threads must be >= 0");
    HG_CHECK(bw_mib >= 64, "--bw-mib must be >= 64 (a buffer far larger than the caches)");
    HG_CHECK(bw_reps >= 1, "--bw-reps must be >= 1");
    const std::vector<BenchConfig> configs = expand(spec);
    if (!std::filesystem::exists(load.model_path))
      throw Error(load.model_path + (load.model_path == default_model_path()
                                         ? ": the default model is not downloaded yet; run "
                                           "models/fetch-default-model.sh or pass -m"
                                         : ": no such file or directory (the -m flag)"));
    check_writable("--json", json_path);
    check_writable("--csv", csv_path);
    check_writable("--trace", trace_path);

    load.weight_format = weight_format == "f32"         ? WeightFormat::kF32
                         : weight_format == "bf16"      ? WeightFormat::kBF16
                         : weight_format == "native"    ? WeightFormat::kNative
                         : weight_format == "native-q8" ? WeightFormat::kNativeQ8
                                                        : WeightFormat::kAuto;
    load.device = spec.device;
    load.attention.k_min = spec.k_min;
    tools::apply_attention_flags(load.attention, attention_extras);
    const bool exact_query = !load.attention.speculative;
    load.attention.trace = !trace_path.empty();

    // ---- the ceiling, measured with the threads the runs use ----
    if (load.n_threads > 0) omp_set_num_threads(load.n_threads);
    RunContext ctx;
    ctx.n_gen = spec.n_gen;
    ctx.speculative = !exact_query;
    ctx.device = spec.device;
    ctx.cpu = proc_line("/proc/cpuinfo", "model name");
    ctx.cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
    ctx.loadavg_start = proc_line("/proc/loadavg", "");
    ctx.host = measure_host_read(static_cast<size_t>(bw_mib), bw_reps);

    GenerateOptions gen;
    gen.n_predict = spec.n_gen;
    gen.sampling.temperature = 0;  // greedy: the cheapest sampling, timed apart
    gen.stop_at_eog = false;       // every run generates exactly -n tokens

    // ---- the shared prefill: configurations of one (prompt length, context, batch[, window])
    // key -> configurations left to run with it, and its snapshot while any are.
    if (no_shared_prefill) shared_prefill = "off";
    const bool per_window = shared_prefill == "window";
    auto key_of = [&](const BenchConfig& c) {
      std::string k = std::to_string(c.n_prompt) + "/" + std::to_string(c.n_ctx) + "/" +
                      std::to_string(c.batch);
      if (per_window)  // the tiers' split decides which K/V rows the prefill read as bf16
        k += "/" + (c.policy == "full"                       ? std::string("full")
                    : c.policy == "aog" || c.policy == "aoc" ? std::string("0")
                                                             : std::to_string(c.window));
      return k;
    };
    std::map<std::string, int> uses;
    for (const BenchConfig& c : configs) ++uses[key_of(c)];
    struct Shared {
      PrefillSnapshot snapshot;
      int index = -1;  // into ctx.shared
    };
    std::map<std::string, Shared> snapshots;
    auto needs_stats = [](const std::string& policy) {  // policies that read prompt scores
      return policy == "h2o" || policy == "keyformer" || policy == "hybrid";
    };
    // Takes the group's snapshot. Per window: an engine of the group's first configuration
    // (its tiers: the prefill every policy of that window runs). Per context: policy full on the
    // CPU backend (exact float32 K/V). On a GPU the CUDA backend's full KV cannot be read back,
    // so the group's first tiered policy takes it there.
    auto take_snapshot = [&](const BenchConfig& c, const std::string& key) -> Shared* {
      LoadOptions lo = load;
      lo.n_ctx = c.n_ctx;
      lo.max_sequences = c.batch;
      bool stats = false, keyformer = false;
      const BenchConfig* source = nullptr;
      for (const BenchConfig& o : configs)
        if (key_of(o) == key) {
          stats = stats || needs_stats(o.policy);
          keyformer = keyformer || o.policy == "keyformer" ||
                      (o.policy == "hybrid" && load.attention.predictor == "keyformer");
          if (!source && (o.policy != "full" || (per_window && spec.device == "cpu"))) source = &o;
        }
      if (!per_window && spec.device == "cpu") source = nullptr;  // full
      if (!source && spec.device == "cuda") return nullptr;       // only full: nothing to share
      lo.attention.policy = source ? source->policy : "full";
      if (source) {
        if (source->window >= 0) lo.attention.window = source->window;
        if (source->k >= 0) lo.attention.k = source->k;
        if (!source->selection.empty()) lo.attention.selection = source->selection;
      }
      auto engine = Engine::load(lo);
      std::vector<std::vector<int32_t>> prompts;  // the configurations' prompts (below)
      for (int i = 0; i < c.batch; ++i)
        prompts.push_back(random_prompt(c.n_prompt, engine->info().vocab_size, seed + i));
      PrefillSnapshotOptions so;
      so.attention_stats = stats;
      so.keyformer_stats = keyformer;
      // The first prefill of an engine builds its GEMM primitives: a warm-up of one chunk (512
      // tokens per prompt at most, no statistics) is discarded; the timed prefill runs once.
      if (spec.warmup > 0) {
        std::vector<std::vector<int32_t>> head;
        for (const auto& p : prompts)
          head.emplace_back(p.begin(), p.begin() + std::min<size_t>(p.size(), 512));
        PrefillSnapshotOptions none;
        none.attention_stats = false;
        engine->prefill_snapshot(head, none);
      }
      Shared sh;
      sh.snapshot = engine->prefill_snapshot(prompts, so);
      SharedPrefill sp;
      sp.n_prompt = c.n_prompt;
      sp.batch = c.batch;
      sp.n_ctx = c.n_ctx;
      sp.source_policy = sh.snapshot.source_policy;
      sp.kv_precision = sh.snapshot.kv_precision;
      sp.prefill_s = sh.snapshot.prefill_seconds;
      sp.stats_s = sh.snapshot.stats_seconds;
      sp.capture_s = sh.snapshot.capture_seconds;
      sp.bytes = sh.snapshot.bytes();
      sh.index = static_cast<int>(ctx.shared.size());
      ctx.shared.push_back(sp);
      return &(snapshots[key] = std::move(sh));
    };

    const int total = static_cast<int>(configs.size()) * (spec.warmup + spec.repetitions);
    Progress bar(progress || isatty(fileno(stderr)), total);
    int done = 0;
    std::vector<ConfigResult> results;
    for (size_t ci = 0; ci < configs.size(); ++ci) {
      const BenchConfig& c = configs[ci];
      LoadOptions lo = load;
      lo.n_ctx = c.n_ctx;
      lo.max_sequences = c.batch;
      lo.attention.policy = c.policy;
      if (c.window >= 0) lo.attention.window = c.window;
      if (c.k >= 0) lo.attention.k = c.k;
      if (!c.selection.empty()) lo.attention.selection = c.selection;
      const std::string key = key_of(c);
      Shared* sh = nullptr;
      if (shared_prefill != "off" && uses[key] + (snapshots.count(key) ? 1 : 0) >= 2) {
        if (snapshots.count(key))
          sh = &snapshots[key];
        else {
          bar.update(done, c.label() + ": shared prefill");
          sh = take_snapshot(c, key);
        }
      }
      bar.update(done, c.label() + ": loading");
      ConfigResult r;
      r.config = c;
      const auto tl = std::chrono::steady_clock::now();
      auto engine = Engine::load(lo);
      r.load_s = seconds_since(tl);
      const ModelInfo& info = engine->info();
      if (ci == 0) {
        ctx.model = info;
        ctx.sample_us = greedy_sample_us(info.vocab_size);
        bar.clear();
        std::printf(
            "model: %s (%s, %d layers, d_model %d, heads %d/%d, %.1f M parameters, weights %.1f "
            "MB %s, KV %.1f KB/token f32)\n",
            info.source.c_str(), info.architecture.c_str(), info.n_layers, info.d_model,
            info.n_heads, info.n_kv_heads, info.n_params / 1e6, info.weight_bytes / 1e6,
            info.weight_format.c_str(), info.kv_bytes_per_token / 1e3);
        std::printf("cpu: %s, %d cores; load average at start: %s\n", ctx.cpu.c_str(), ctx.cores,
                    ctx.loadavg_start.c_str());
        std::printf(
            "device %s, %d threads; host read bandwidth %.2f GB/s (median of %d passes over "
            "%zu MiB, min %.2f, max %.2f)\n",
            spec.device.c_str(), ctx.host.threads, ctx.host.median_gbs, ctx.host.reps, ctx.host.mib,
            ctx.host.min_gbs, ctx.host.max_gbs);
        std::printf(
            "timed: prefill, and decode = %d steps incl. greedy sampling (%.1f us/token, "
            "measured apart); %d warm-up + %d timed runs per configuration, mean ± stddev\n",
            std::max(0, spec.n_gen - 1), ctx.sample_us, spec.warmup, spec.repetitions);
        std::printf("%s\n\n%s", floor_formula().c_str(), markdown_header().c_str());
        std::fflush(stdout);
      }
      std::vector<std::vector<int32_t>> prompts;
      for (int i = 0; i < c.batch; ++i)
        prompts.push_back(random_prompt(c.n_prompt, info.vocab_size, seed + i));
      if (sh) {
        const std::string why = engine->restore_problem(sh->snapshot);
        if (!why.empty()) {
          bar.clear();
          std::fprintf(stderr, "%s: its own prefill (%s)\n", c.label().c_str(), why.c_str());
          sh = nullptr;
        }
      }
      if (sh) {
        r.shared_prefill = sh->index;
        ++ctx.shared[sh->index].configs;
      }
      // Prefill and decode: from the shared snapshot or its own prefill.
      auto generate = [&](const GenerateOptions& g) {
        if (!sh) return engine->generate_batch(prompts, g);
        std::vector<GenerationResult> out = engine->generate_batch(sh->snapshot, g);
        ++ctx.shared[sh->index].runs;
        ctx.shared[sh->index].restore_s += out[0].stats.prefill_seconds;
        return out;
      };
      for (int w = 0; w < spec.warmup; ++w) {
        bar.update(done, c.label() + ": warm-up");
        GenerateOptions g = gen;
        g.n_predict = std::min(spec.n_gen, 3);
        generate(g);
        ++done;
      }
      for (int rep = 0; rep < spec.repetitions; ++rep) {
        bar.update(done, c.label() + ": run " + std::to_string(rep + 1) + "/" +
                             std::to_string(spec.repetitions));
        engine->reset_attention_stats();  // this repetition's counters (and trace) only
        const std::vector<GenerationResult> out = generate(gen);
        RepResult rr;
        if (out[0].stats.prefill_restored)
          rr.restore_s = out[0].stats.prefill_seconds;
        else
          rr.prefill_s = out[0].stats.prefill_seconds;
        rr.decode_s = out[0].stats.decode_seconds;
        rr.stats = engine->attention_stats();
        r.reps.push_back(std::move(rr));
        ++done;
      }
      if (!trace_path.empty()) r.trace = engine->attention_trace();
      engine.reset();  // free this configuration's weights and KV before the next load
      if (--uses[key] == 0) snapshots.erase(key);  // its last configuration ran
      bar.clear();
      std::fputs(markdown_row(r, summarize(r, ctx)).c_str(), stdout);
      std::fflush(stdout);
      results.push_back(std::move(r));
    }
    bar.update(done, "done");
    bar.clear();
    ctx.loadavg_end = proc_line("/proc/loadavg", "");
    if (!ctx.shared.empty()) std::printf("\n");
    for (size_t i = 0; i < ctx.shared.size(); ++i) {
      const SharedPrefill& sp = ctx.shared[i];
      std::printf(
          "shared prefill #%zu: p=%d b=%d c=%d, policy %s (%s K/V), prefill %.3f s (%.1f t/s, "
          "once; %.3f s of it the prompt statistics), capture %.3f s, %.1f MB; restored into %d "
          "configuration(s), %d run(s), %.3f s in all; prefill time saved ~%.3f s\n",
          i, sp.n_prompt, sp.batch, sp.n_ctx, sp.source_policy.c_str(), sp.kv_precision.c_str(),
          sp.prefill_s, sp.prefill_s > 0 ? sp.batch * sp.n_prompt / sp.prefill_s : 0.0, sp.stats_s,
          sp.capture_s, sp.bytes / 1e6, sp.configs, sp.runs, sp.restore_s, sp.saved_s());
    }
    std::printf("\nload average at the end: %s\n", ctx.loadavg_end.c_str());

    const std::string command = joined_command(argc, argv);
    if (!json_path.empty()) write_file(json_path, to_json(ctx, command, results));
    if (!csv_path.empty()) {
      std::string csv = csv_header();
      for (const ConfigResult& r : results) csv += csv_row(r, summarize(r, ctx));
      write_file(csv_path, csv);
    }
    if (!trace_path.empty()) write_file(trace_path, to_chrome_trace(results));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
