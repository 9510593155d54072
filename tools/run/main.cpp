// hybridgen-run: generate text from a model checkpoint, llama-cli style.
//
//   hybridgen-run -m model.gguf -p "Once upon a time" -n 64
//   hybridgen-run --chat -p "What is the capital of France?" --temp 0
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/attention_flags.h"
#include "hybridgen/hybridgen.h"
#include "util/log.h"

namespace {

// The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), cached by models/fetch-default-model.sh.
std::string default_model_path() {
  if (const char* env = std::getenv("HYBRIDGEN_DEFAULT_MODEL")) return env;
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw hybridgen::Error(path + ": cannot open the prompt file (-f)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hybridgen-run: generate text with HybridGen"};
  hybridgen::LoadOptions load;
  hybridgen::GenerateOptions gen;
  std::string prompt, prompt_file, system_prompt, log_level, weight_format = "auto";
  bool chat = false, verbose = false, show_prompt = false;
  int batch = 1, n_prompt = 0;
  load.model_path = default_model_path();

  app.add_option("-m,--model", load.model_path, "HF model directory or .gguf file")
      ->capture_default_str();
  app.add_option("-p,--prompt", prompt, "prompt text");
  app.add_option("-f,--file", prompt_file, "read the prompt from a file");
  app.add_option("-n,--n-predict", gen.n_predict, "tokens to generate (-1: until end)")
      ->capture_default_str();
  app.add_option("-c,--ctx-size", load.n_ctx, "context size in tokens (0: min(model, 4096))")
      ->capture_default_str();
  app.add_option("-t,--threads", load.n_threads, "CPU threads (0: all cores)")
      ->capture_default_str();
  app.add_option("-b,--batch", batch, "run the prompt as this many independent sequences")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--n-prompt", n_prompt,
                 "a seeded random prompt of this many token ids (models without a tokenizer, "
                 "benchmarks)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--chat", chat, "wrap the prompt in the model's chat template");
  app.add_option("--system", system_prompt, "system message for --chat");
  app.add_option("--temp", gen.sampling.temperature, "temperature (0: greedy)")
      ->capture_default_str();
  app.add_option("--top-k", gen.sampling.top_k, "top-k (0: off)")->capture_default_str();
  app.add_option("--top-p", gen.sampling.top_p, "top-p (1: off)")->capture_default_str();
  app.add_option("--min-p", gen.sampling.min_p, "min-p (0: off)")->capture_default_str();
  app.add_option("--repeat-penalty", gen.sampling.repeat_penalty, "repetition penalty (1: off)")
      ->capture_default_str();
  app.add_option("--repeat-last-n", gen.sampling.repeat_last_n, "tokens the penalty looks back")
      ->capture_default_str();
  app.add_option("-s,--seed", gen.sampling.seed, "sampling seed")->capture_default_str();
  app.add_flag("--random-weights", load.random_weights,
               "seeded random weights of the shapes in -m's config.json (model presets)");
  app.add_option("--weight-seed", load.random_seed, "seed of --random-weights")
      ->capture_default_str();
  app.add_option("--weight-format", weight_format,
                 "weights for the CPU GEMMs: auto, f32, bf16, native (GGUF blocks as stored, "
                 "16-bit activations), native-q8 (the same blocks, llama.cpp's 8-bit activations)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "native", "native-q8"}))
      ->capture_default_str();
  app.add_option("--device", load.device, "where the model runs: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  hybridgen::tools::AttentionFlagExtras attention_extras;
  hybridgen::tools::add_attention_flags(app, load.attention, attention_extras);
  app.add_flag(
      "--ignore-eos", [&](int64_t) { gen.stop_at_eog = false; },
      "keep generating past end-of-generation tokens");
  app.add_flag("--show-prompt", show_prompt, "print the prompt before the generated text");
  app.add_flag("-v,--verbose", verbose, "log details (model, memory, timings) to stderr");
  app.add_option("--log-level", log_level,
                 "trace, debug, info, warn, error, off "
                 "(default warn; env HYBRIDGEN_LOG_LEVEL)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (verbose) hybridgen::set_log_level("info");
    if (!log_level.empty()) hybridgen::set_log_level(log_level);
    load.weight_format = weight_format == "f32"         ? hybridgen::WeightFormat::kF32
                         : weight_format == "bf16"      ? hybridgen::WeightFormat::kBF16
                         : weight_format == "native"    ? hybridgen::WeightFormat::kNative
                         : weight_format == "native-q8" ? hybridgen::WeightFormat::kNativeQ8
                                                        : hybridgen::WeightFormat::kAuto;
    load.max_sequences = batch;
    hybridgen::tools::apply_attention_flags(load.attention, attention_extras);
    if (!prompt_file.empty()) {
      if (!prompt.empty()) throw hybridgen::Error("give the prompt with -p or -f, not both");
      prompt = read_file(prompt_file);
    }
    if (!std::filesystem::exists(load.model_path) && load.model_path == default_model_path())
      throw hybridgen::Error(load.model_path +
                             ": the default model is not downloaded yet; run "
                             "models/fetch-default-model.sh or pass -m");
    gen.sampling.validate();

    auto engine = hybridgen::Engine::load(load);
    const auto& info = engine->info();
    if (verbose) {
      std::fprintf(stderr,
                   "model: %s\n  arch %s, %d layers, d_model %d, heads %d/%d (head dim %d), "
                   "d_ff %d, vocab %d\n  %.1f M parameters, weights %.1f MB (%s), context %d, "
                   "KV %.1f KB/token (%.1f MB for the full context x %d sequence(s))\n",
                   info.source.c_str(), info.architecture.c_str(), info.n_layers, info.d_model,
                   info.n_heads, info.n_kv_heads, info.head_dim, info.d_ff, info.vocab_size,
                   info.n_params / 1e6, info.weight_bytes / 1e6, info.weight_format.c_str(),
                   info.n_ctx, info.kv_bytes_per_token / 1024.0,
                   info.kv_bytes_per_token * double(info.n_ctx) * batch / 1e6, batch);
      std::fprintf(stderr, "  a decode step reads %.1f MB of weights\n%s\n",
                   info.decode_weight_bytes / 1e6, info.cpu_dispatch.c_str());
    }

    std::vector<int32_t> tokens;
    if (n_prompt > 0) {
      if (!prompt.empty() || chat) throw hybridgen::Error("--n-prompt replaces -p/-f/--chat");
      uint64_t x = gen.sampling.seed;
      for (int i = 0; i < n_prompt; ++i) {  // splitmix64: reproducible ids for benchmarks
        x += 0x9E3779B97F4A7C15ull;
        uint64_t z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        tokens.push_back(static_cast<int32_t>((z ^ (z >> 31)) % info.vocab_size));
      }
    } else if (engine->has_tokenizer()) {
      std::string text = prompt;
      if (chat) {
        std::vector<hybridgen::ChatMessage> msgs;
        if (!system_prompt.empty()) msgs.push_back({"system", system_prompt});
        msgs.push_back({"user", prompt});
        text = engine->apply_chat_template(msgs, true);
      }
      if (text.empty()) throw hybridgen::Error("no prompt: give one with -p or -f");
      // A chat template already holds the BOS it wants; add_special only for plain prompts.
      tokens = engine->tokenize(text, !chat, true);
      if (show_prompt) std::fwrite(text.data(), 1, text.size(), stdout);
    } else {
      throw hybridgen::Error(info.source +
                             " has no tokenizer: put a tokenizer.json beside the "
                             "config, or give --n-prompt N for random token ids");
    }
    if (verbose) std::fprintf(stderr, "prompt: %zu tokens\n", tokens.size());

    std::vector<hybridgen::GenerationResult> results;
    if (batch == 1) {
      results.push_back(engine->generate(tokens, gen, [](std::string_view t) {
        std::fwrite(t.data(), 1, t.size(), stdout);
        std::fflush(stdout);
        return true;
      }));
      std::fputc('\n', stdout);
    } else {
      results = engine->generate_batch(std::vector<std::vector<int32_t>>(batch, tokens), gen);
      for (int i = 0; i < batch; ++i)
        std::printf("--- sequence %d ---\n%s\n", i, results[i].text.c_str());
    }
    const auto& s = results[0].stats;
    int generated = 0;
    for (const auto& r : results) generated += r.stats.n_generated;
    std::fprintf(
        stderr,
        "\nprefill: %d tokens x %d in %.3f s (%.2f tokens/s)\n"
        "decode: %d tokens in %.3f s (%.2f tokens/s, %.2f ms/step, %d sequence(s)); "
        "stop: %s\n",
        s.n_prompt_tokens, batch, s.prefill_seconds,
        s.n_prompt_tokens * batch / std::max(s.prefill_seconds, 1e-9), generated, s.decode_seconds,
        s.decode_seconds > 0 ? (generated - batch) / s.decode_seconds : 0.0,
        generated > batch ? 1000.0 * s.decode_seconds / ((generated - batch) / batch) : 0.0, batch,
        results[0].stop_reason.c_str());
    if (verbose || engine->attention_stats().policy != "full")
      std::fputs(hybridgen::format_attention_stats(engine->attention_stats(), verbose).c_str(),
                 stderr);
  } catch (const hybridgen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
