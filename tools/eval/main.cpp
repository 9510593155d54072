// hybridgen-eval: accuracy of attention policies against full attention, and K_min profiling.
//
//   hybridgen-eval ppl     -f text.txt -c 4096 --prefill 3072 --policy hybrid,h2o --k 64,128
//   hybridgen-eval kl      -f text.txt --policy hybrid:post,streamingllm --k 128 --gen 32
//   hybridgen-eval passkey --lengths 1024,2048 --depths 0.1,0.5,0.9 --policy hybrid --k 128
//   hybridgen-eval mc      --data piqa.jsonl --fewshot 3 --policy hybrid --window 32 --k 16
//   hybridgen-eval profile -f text.txt --policy hybrid:post --k 16,32,64,128 --tolerance 0.01
//                          --profile-out smollm2.profile.json
//
// Every mode runs `full` first (the reference) and then each configuration of --policy x --k on
// the same tokens; each configuration loads its own engine. Tokens after the exact prefill go
// one per forward step as decode steps, where selection and the speculative query apply.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "eval.h"
#include "util/log.h"

namespace {

using hgeval::Json;
using hybridgen::Error;

std::string default_model_path() {
  if (const char* env = std::getenv("HYBRIDGEN_DEFAULT_MODEL")) return env;
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
}

struct Options {
  hybridgen::LoadOptions load;
  std::string weight_format = "auto", log_level;
  std::vector<std::string> policies;
  std::vector<int> ks;
  std::vector<double> fractions;
  int window = -1;
  bool exact_query = false, quiet = false;
  std::string json_path, csv_path;
  uint64_t seed = 1;
  // Token input of ppl, kl and profile.
  std::string text_file;
  int random_tokens = 0, n_tokens = 0, prefill = -1, gen = 32;
  // passkey
  std::vector<int> lengths;
  std::vector<double> depths = {0.1, 0.5, 0.9};
  int trials = 2;
  std::string filler;
  // mc
  std::string data, task = "auto", fewshot_file, mc_prefill = "fewshot";
  int fewshot = 3, limit = 0;
  bool show_prompt = false;
  // profile
  std::string metric = "ppl", profile_out;
  double tolerance = 0.01;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void note(const Options& o, const std::string& s) {
  if (!o.quiet) std::fprintf(stderr, "%s\n", s.c_str());
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// The reference engine (policy full) fixes the context for every later engine.
std::unique_ptr<hybridgen::Engine> load_reference(Options& o) {
  if (!std::filesystem::exists(o.load.model_path) && o.load.model_path == default_model_path())
    throw Error(o.load.model_path +
                ": the default model is not downloaded yet; run models/fetch-default-model.sh "
                "or pass -m");
  o.load.weight_format = o.weight_format == "f32"         ? hybridgen::WeightFormat::kF32
                         : o.weight_format == "bf16"      ? hybridgen::WeightFormat::kBF16
                         : o.weight_format == "native"    ? hybridgen::WeightFormat::kNative
                         : o.weight_format == "native-q8" ? hybridgen::WeightFormat::kNativeQ8
                                                          : hybridgen::WeightFormat::kAuto;
  o.load.attention.speculative = !o.exact_query;
  hybridgen::LoadOptions ref = o.load;
  ref.attention.policy = "full";
  auto e = hybridgen::Engine::load(ref);
  o.load.n_ctx = e->info().n_ctx;
  return e;
}

int resolved_window(const Options& o) {
  // The runtime's default (-1): 10% of the context.
  return o.window < 0 ? o.load.n_ctx / 10 : o.window;
}

std::vector<hgeval::RunConfig> configs_for(const Options& o, int n_tokens) {
  if (o.policies.size() == 1 && o.policies[0] == "none") return {};  // the reference alone
  auto c = hgeval::expand_configs(o.policies, o.ks, o.fractions, resolved_window(o), n_tokens);
  for (const auto& r : c)
    if (r.budget > 0 && r.budget >= n_tokens)
      note(o, "note: " + r.label + " K=" + std::to_string(r.k) + " attends to " +
                  std::to_string(r.budget) + " past tokens, not fewer than the " +
                  std::to_string(n_tokens) +
                  " evaluated: nothing is left out (lower --window or --k)");
  return c;
}

std::unique_ptr<hybridgen::Engine> load_config(const Options& o, const hgeval::RunConfig& c) {
  return hybridgen::Engine::load(hgeval::load_options(o.load, c));
}

hgeval::RunConfig reference_config() {
  hgeval::RunConfig r;
  r.label = "full (ref)";
  r.policy = "full";
  return r;
}

// Fields every row reports about the runtime's choices (mean K: the scheduler's).
void add_stats(Json& row, const hybridgen::Engine& e) {
  const hybridgen::AttentionStats s = e.attention_stats();
  row["mean_k"] = s.decode_steps > 0 ? Json(s.mean_k) : Json(nullptr);
  // How close the speculated query came to the true one (0: not measured, e.g. --exact-query).
  row["spec_cosine"] = s.speculation_cosine != 0 ? Json(s.speculation_cosine) : Json(nullptr);
  // Selection recall (Post-QKT: kept softmax mass of the CPU-stage logits; none: no Post pass).
  row["recall"] = s.recall > 0 ? Json(s.recall) : Json(nullptr);
  // What the selective path staged for the device per decode step: V rows, + K rows when the
  // device scores the kept tokens (exact-selected).
  row["staged_mb_step"] =
      s.decode_steps > 0 ? Json((s.value_bytes_moved + s.key_bytes_moved) / 1e6 / s.decode_steps)
                         : Json(nullptr);
}

void emit(const Options& o, const std::string& mode, const Json& settings,
          const std::vector<hgeval::Column>& columns, const std::vector<Json>& rows,
          const hybridgen::ModelInfo& info) {
  if (o.json_path != "-" && o.csv_path != "-")
    std::fputs(hgeval::markdown(columns, rows).c_str(), stdout);
  if (!o.json_path.empty()) {
    Json doc;
    doc["tool"] = "hybridgen-eval";
    doc["mode"] = mode;
    doc["model"] = info.source;
    doc["n_ctx"] = info.n_ctx;
    doc["settings"] = settings;
    doc["rows"] = rows;
    hgeval::write_output(o.json_path, doc.dump(2) + "\n", "--json");
  }
  if (!o.csv_path.empty()) hgeval::write_output(o.csv_path, hgeval::csv(rows), "--csv");
}

Json base_settings(const Options& o) {
  Json s;
  s["policies"] = o.policies;
  s["window"] = resolved_window(o);
  s["speculative_query"] = !o.exact_query;
  s["spec_min_cosine"] = o.load.attention.speculation_min_cosine;
  s["cpu_logits"] = o.load.attention.cpu_logits;
  s["recall_guard"] = o.load.attention.recall_guard;
  s["predictor"] = o.load.attention.predictor;
  s["threads"] = o.load.n_threads;
  return s;
}

// ---- ppl, kl, profile: teacher-forced along one token sequence ------------------------------

std::vector<int32_t> input_tokens(const Options& o, const hybridgen::Engine& e) {
  const int n_ctx = e.info().n_ctx;
  const int want = o.n_tokens > 0 ? o.n_tokens : n_ctx;
  if (want > n_ctx)
    throw Error("-n " + std::to_string(want) + " exceeds the context size " +
                std::to_string(n_ctx) + " (raise -c)");
  std::vector<int32_t> t;
  if (o.random_tokens > 0) {
    if (!o.text_file.empty()) throw Error("give -f or --random-tokens, not both");
    uint64_t x = o.seed;
    const int n = std::min(o.random_tokens, want);
    for (int i = 0; i < n; ++i) {  // splitmix64, as hybridgen-run --n-prompt
      x += 0x9E3779B97F4A7C15ull;
      uint64_t z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      t.push_back(static_cast<int32_t>((z ^ (z >> 31)) % e.info().vocab_size));
    }
    return t;
  }
  if (o.text_file.empty()) throw Error("no input: give a text file with -f, or --random-tokens N");
  const std::string text = hgeval::read_text_file(o.text_file, "-f");
  if (!e.has_tokenizer())
    throw Error(e.info().source + " has no tokenizer: give --random-tokens N instead of -f");
  t = e.tokenize(text, true, false);
  if (static_cast<int>(t.size()) > want) t.resize(want);
  if (static_cast<int>(t.size()) < want)
    note(o, "note: " + o.text_file + " has " + std::to_string(t.size()) +
                " tokens, fewer than the " + std::to_string(want) + " asked for: using them all");
  return t;
}

struct TfResult {
  Json row;
  hgeval::Agreement a;
};

int run_teacher_forced(Options& o, const std::string& mode) {
  auto ref_engine = load_reference(o);
  const hybridgen::ModelInfo info = ref_engine->info();
  const std::vector<int32_t> tokens = input_tokens(o, *ref_engine);
  const int n = static_cast<int>(tokens.size());
  const int prefill = o.prefill >= 0 ? o.prefill : n / 2;
  if (prefill > n - 2)
    throw Error("--prefill " + std::to_string(prefill) + " leaves no decode step to score in " +
                std::to_string(n) + " tokens (lower --prefill or raise -n)");
  if (mode == "profile" && o.policies.size() != 1)
    throw Error("profile sweeps one policy (--policy), got " + std::to_string(o.policies.size()));
  const auto configs = configs_for(o, n);
  if (mode == "profile" && (configs.empty() || configs[0].k == 0))
    throw Error("profile sweeps K: --policy '" + o.policies[0] +
                "' has no K (use hybrid:post, hybrid:pre, hybrid, h2o, keyformer, infinigen or "
                "streamingllm)");
  const bool with_gen = mode == "kl" && o.gen > 0;
  const int gen_prompt = std::max(prefill, 1);
  if (with_gen && gen_prompt + o.gen > info.n_ctx)
    throw Error("--gen " + std::to_string(o.gen) + " after a prompt of " +
                std::to_string(gen_prompt) + " tokens exceeds the context size " +
                std::to_string(info.n_ctx));
  note(o, "model " + info.source + ", context " + std::to_string(info.n_ctx) + ", " +
              std::to_string(n) + " tokens: " + std::to_string(prefill) + " prefilled, " +
              std::to_string(n - prefill) + " decode steps; window " +
              std::to_string(resolved_window(o)) + "; " + std::to_string(configs.size()) +
              " configurations + full");

  auto t0 = std::chrono::steady_clock::now();
  hgeval::Reference ref;
  {
    const std::vector<float> logits = ref_engine->evaluate(tokens, prefill);
    ref = hgeval::make_reference(logits, tokens, prefill, info.vocab_size);
  }
  std::vector<int32_t> ref_gen;
  if (with_gen) ref_gen = hgeval::greedy(*ref_engine, std::span(tokens).first(gen_prompt), o.gen);
  ref_engine.reset();
  const double ppl_full = std::exp(ref.nll_sum / ref.n_scored());
  std::vector<Json> rows;
  {
    Json r = hgeval::config_row(reference_config());
    r["scored"] = ref.n_scored();
    r["ppl"] = ppl_full;
    r["ppl_ratio"] = 1.0;
    r["kl"] = 0.0;
    r["kl_max"] = 0.0;
    r["top1"] = 1.0;
    if (with_gen) r["gen_agree"] = o.gen;
    r["mean_k"] = nullptr;
    r["spec_cosine"] = nullptr;
    r["recall"] = nullptr;
    r["staged_mb_step"] = nullptr;
    r["seconds"] = seconds_since(t0);
    rows.push_back(r);
    note(o, "[0/" + std::to_string(configs.size()) + "] full (reference): ppl " +
                fmt("%.4f", ppl_full) + ", " + fmt("%.1f", seconds_since(t0)) + " s");
  }

  for (size_t i = 0; i < configs.size(); ++i) {
    const auto& c = configs[i];
    t0 = std::chrono::steady_clock::now();
    auto e = load_config(o, c);
    const std::vector<float> logits = e->evaluate(tokens, prefill);
    const hgeval::Agreement a = hgeval::compare(logits, tokens, ref);
    Json r = hgeval::config_row(c);
    r["scored"] = a.n_scored;
    r["ppl"] = a.ppl();
    r["ppl_ratio"] = a.ppl() / ppl_full;
    r["kl"] = a.kl_mean();
    r["kl_max"] = a.kl_max;
    r["top1"] = a.top1();
    add_stats(r, *e);
    if (with_gen)
      r["gen_agree"] = hgeval::common_prefix(
          ref_gen, hgeval::greedy(*e, std::span(tokens).first(gen_prompt), o.gen));
    r["seconds"] = seconds_since(t0);
    rows.push_back(r);
    note(o, "[" + std::to_string(i + 1) + "/" + std::to_string(configs.size()) + "] " + c.label +
                (c.k > 0 ? " K=" + std::to_string(c.k) : "") + ": ppl ratio " +
                fmt("%.4f", a.ppl() / ppl_full) + ", KL " + fmt("%.5f", a.kl_mean()) + ", top-1 " +
                fmt("%.2f%%", 100 * a.top1()) + ", " + fmt("%.1f", seconds_since(t0)) + " s");
  }

  Json settings = base_settings(o);
  settings["input"] =
      o.random_tokens > 0 ? "random tokens (seed " + std::to_string(o.seed) + ")" : o.text_file;
  settings["tokens"] = n;
  settings["prefill"] = prefill;
  if (with_gen) settings["gen"] = o.gen;
  std::vector<hgeval::Column> cols = {{"policy", "policy", ""}, {"window", "window", ""},
                                      {"k", "K", ""},           {"budget", "budget", ""},
                                      {"ppl", "ppl", "%.4f"},   {"ppl_ratio", "ppl ratio", "%.4f"}};
  if (mode != "ppl") {
    cols.push_back({"kl", "KL mean", "%.5f"});
    cols.push_back({"kl_max", "KL max", "%.4f"});
    cols.push_back({"top1", "top-1", "%.4f"});
  }
  if (with_gen)
    cols.push_back({"gen_agree", "greedy agree (of " + std::to_string(o.gen) + ")", ""});
  cols.push_back({"mean_k", "mean K", "%.1f"});
  cols.push_back({"spec_cosine", "spec cos", "%.3f"});
  cols.push_back({"recall", "recall", "%.4f"});
  cols.push_back({"staged_mb_step", "staged MB/step", "%.2f"});
  cols.push_back({"seconds", "s", "%.1f"});

  if (mode == "profile") {
    // The knee: the smallest K from which every larger K of the sweep is within tolerance (a
    // single lucky K below a failing one is not a floor the scheduler can rely on).
    std::vector<std::pair<int, bool>> by_k;
    for (size_t i = 1; i < rows.size(); ++i) {
      const Json& r = rows[i];
      double err = 0;
      if (o.metric == "ppl")
        err = r["ppl_ratio"].get<double>() - 1;
      else if (o.metric == "kl")
        err = r["kl"].get<double>();
      else
        err = 1 - r["top1"].get<double>();
      const bool ok = err <= o.tolerance;
      rows[i]["within_tolerance"] = ok;
      by_k.push_back({r["k"].get<int>(), ok});
    }
    std::sort(by_k.begin(), by_k.end());
    int knee = -1;
    for (int i = static_cast<int>(by_k.size()) - 1; i >= 0 && by_k[i].second; --i)
      knee = by_k[i].first;
    cols.push_back({"within_tolerance", "within", ""});
    settings["metric"] = o.metric;
    settings["tolerance"] = o.tolerance;
    emit(o, mode, settings, cols, rows, info);
    const std::string what = o.metric == "ppl"  ? "perplexity ratio - 1"
                             : o.metric == "kl" ? "mean KL (nats)"
                                                : "1 - top-1 agreement";
    if (knee < 0)
      throw Error("no K of the sweep is within tolerance (" + what +
                  " <= " + fmt("%g", o.tolerance) +
                  " at the largest K): widen the sweep (--k) or the "
                  "tolerance; no profile written");
    Json p;
    p["k_min"] = knee;
    p["model"] = info.source;
    p["policy"] = configs[0].policy;
    p["selection"] = configs[0].selection;
    p["window"] = configs[0].window;
    p["n_ctx"] = info.n_ctx;
    p["input"] = settings["input"];
    p["tokens"] = n;
    p["prefill"] = prefill;
    p["metric"] = o.metric;
    p["tolerance"] = o.tolerance;
    p["full_ppl"] = ppl_full;
    Json sweep = Json::array();
    for (size_t i = 1; i < rows.size(); ++i) {
      Json s;
      for (const char* k : {"k", "budget", "ppl", "ppl_ratio", "kl", "top1", "within_tolerance"})
        s[k] = rows[i][k];
      sweep.push_back(s);
    }
    p["sweep"] = sweep;
    p["tool"] = "hybridgen-eval profile";
    hgeval::write_output(o.profile_out, p.dump(2) + "\n", "--profile-out");
    std::fprintf(stderr, "k_min = %d (%s <= %g from K = %d on); profile written to %s\n", knee,
                 what.c_str(), o.tolerance, knee, o.profile_out.c_str());
    return 0;
  }
  emit(o, mode, settings, cols, rows, info);
  return 0;
}

// ---- passkey --------------------------------------------------------------------------------

int run_passkey(Options& o) {
  auto ref_engine = load_reference(o);
  const hybridgen::ModelInfo info = ref_engine->info();
  if (!ref_engine->has_tokenizer())
    throw Error(info.source + " has no tokenizer: passkey needs one");
  std::vector<int> lengths = o.lengths;
  if (lengths.empty()) lengths = {std::min(1024, info.n_ctx)};
  for (int l : lengths)
    if (l < 64 || l > info.n_ctx)
      throw Error("--lengths: " + std::to_string(l) + " tokens is outside [64, the context size " +
                  std::to_string(info.n_ctx) + "]");
  for (double d : o.depths)
    if (!(d >= 0 && d <= 1)) throw Error("--depths values must be in [0, 1], got " + fmt("%g", d));
  if (o.trials < 1) throw Error("--trials must be >= 1");
  const std::vector<std::string> filler = hgeval::filler_sentences(o.filler);

  // The same prompts for every policy.
  std::mt19937_64 rng(o.seed);
  std::vector<hgeval::PasskeyPrompt> prompts;
  std::vector<int> prompt_length;  // the --lengths entry of each prompt
  for (int l : lengths)
    for (double d : o.depths)
      for (int t = 0; t < o.trials; ++t) {
        prompts.push_back(hgeval::make_passkey_prompt(*ref_engine, filler, l, d, rng));
        if (static_cast<int>(prompts.back().tokens.size()) > info.n_ctx)
          throw Error("--lengths " + std::to_string(l) + ": the prompt has " +
                      std::to_string(prompts.back().tokens.size()) +
                      " tokens, more than the context size " + std::to_string(info.n_ctx));
        prompt_length.push_back(l);
      }
  int shortest = info.n_ctx;
  for (const auto& p : prompts) shortest = std::min(shortest, p.n_context);
  auto configs = configs_for(o, shortest);
  configs.insert(configs.begin(), reference_config());
  note(o, "model " + info.source + ", context " + std::to_string(info.n_ctx) + ", " +
              std::to_string(prompts.size()) + " prompts per policy; window " +
              std::to_string(resolved_window(o)));

  std::vector<Json> rows;
  for (size_t ci = 0; ci < configs.size(); ++ci) {
    const auto& c = configs[ci];
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<hybridgen::Engine> e = ci == 0 ? std::move(ref_engine) : load_config(o, c);
    std::map<int, std::pair<int, int>> per_length;  // length -> (passed, trials)
    std::map<int, Json> trials;
    for (size_t pi = 0; pi < prompts.size(); ++pi) {
      const auto& p = prompts[pi];
      // The context is prefilled exactly; the question and the answer go as decode steps.
      // Greedy generation yields the key iff the argmax at every answer position is the key's
      // token (it then feeds exactly these tokens), so teacher forcing checks the generation.
      const std::vector<float> logits = e->evaluate(p.tokens, p.n_context);
      const int n = static_cast<int>(p.tokens.size());
      std::vector<int32_t> predicted;
      for (int t = n - p.n_answer; t < n; ++t) {
        const float* row = &logits[size_t(t - 1) * info.vocab_size];
        predicted.push_back(
            static_cast<int32_t>(std::max_element(row, row + info.vocab_size) - row));
      }
      const bool ok = std::equal(predicted.begin(), predicted.end(), p.tokens.end() - p.n_answer);
      auto& [passed, total] = per_length[prompt_length[pi]];
      passed += ok;
      ++total;
      Json tr;
      tr["tokens"] = n;
      tr["depth"] = p.depth;
      tr["key"] = p.key;
      tr["predicted"] = e->detokenize(predicted);
      tr["ok"] = ok;
      trials[prompt_length[pi]].push_back(tr);
    }
    for (const auto& [len, pt] : per_length) {
      Json r = hgeval::config_row(c);
      r["length"] = len;
      r["passed"] = pt.first;
      r["trials"] = pt.second;
      r["success"] = double(pt.first) / pt.second;
      add_stats(r, *e);
      r["details"] = trials[len];
      rows.push_back(r);
    }
    std::string summary;
    for (const auto& [len, pt] : per_length)
      summary += " " + std::to_string(len) + ": " + std::to_string(pt.first) + "/" +
                 std::to_string(pt.second);
    note(o, "[" + std::to_string(ci) + "/" + std::to_string(configs.size() - 1) + "] " + c.label +
                (c.k > 0 ? " K=" + std::to_string(c.k) : "") + ":" + summary + ", " +
                fmt("%.1f", seconds_since(t0)) + " s");
  }
  Json settings = base_settings(o);
  settings["lengths"] = lengths;
  settings["depths"] = o.depths;
  settings["trials"] = o.trials;
  settings["filler"] = o.filler.empty() ? "built-in sentences" : o.filler;
  settings["seed"] = o.seed;
  emit(o, "passkey", settings,
       {{"policy", "policy", ""},
        {"window", "window", ""},
        {"k", "K", ""},
        {"budget", "budget", ""},
        {"length", "length", ""},
        {"passed", "passed", ""},
        {"trials", "trials", ""},
        {"success", "success", "%.2f"}},
       rows, info);
  return 0;
}

// ---- mc -------------------------------------------------------------------------------------

// One choice of one item, tokenized once for every policy.
struct McRequest {
  std::vector<int32_t> tokens;  // context + continuation
  int n_cont = 0;               // continuation tokens at the end
  int prefill = 0;              // exact prefix
  int n_chars = 0;              // the choice's length in characters (acc_norm)
};

int utf8_chars(const std::string& s) {
  int n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

int run_mc(Options& o) {
  if (o.data.empty()) throw Error("no data: give a JSONL file with --data");
  if (o.mc_prefill != "fewshot" && o.mc_prefill != "context" && o.mc_prefill != "none")
    throw Error("--mc-prefill must be fewshot, context or none, got '" + o.mc_prefill + "'");
  if (o.fewshot < 0) throw Error("--fewshot must be >= 0");
  std::string task = o.task;
  std::vector<hgeval::McItem> items = hgeval::read_mc_jsonl(o.data, task);
  std::vector<hgeval::McItem> pool;
  const bool same_pool = o.fewshot_file.empty();
  if (!same_pool) {
    std::string t2 = task;
    pool = hgeval::read_mc_jsonl(o.fewshot_file, t2);
    if (t2 != task)
      throw Error(o.fewshot_file + ": a " + t2 + " file, but --data is " + task +
                  " (--fewshot-file)");
  }
  const std::vector<hgeval::McItem>& shots_from = same_pool ? items : pool;
  const int pool_size = static_cast<int>(shots_from.size()) - (same_pool ? 1 : 0);
  if (o.fewshot > pool_size)
    throw Error("--fewshot " + std::to_string(o.fewshot) +
                " needs that many other items, the "
                "few-shot pool has " +
                std::to_string(pool_size) + " (--fewshot-file)");
  if (o.limit > 0 && o.limit < static_cast<int>(items.size())) items.resize(o.limit);

  auto ref_engine = load_reference(o);
  const hybridgen::ModelInfo info = ref_engine->info();
  if (!ref_engine->has_tokenizer()) throw Error(info.source + " has no tokenizer: mc needs one");

  // Requests: few-shot examples drawn once per item (seeded), the same for every policy.
  std::mt19937_64 rng(o.seed);
  std::vector<std::vector<McRequest>> requests(items.size());
  int shortest = info.n_ctx, longest = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    std::vector<int> idx;
    for (int j = 0; j < static_cast<int>(shots_from.size()); ++j)
      if (!(same_pool && j == static_cast<int>(i))) idx.push_back(j);
    std::vector<hgeval::McItem> shots;
    for (int s = 0; s < o.fewshot; ++s) {  // partial Fisher-Yates
      const size_t pick = s + rng() % (idx.size() - s);
      std::swap(idx[s], idx[pick]);
      shots.push_back(shots_from[idx[s]]);
    }
    std::string ctx = hgeval::mc_context(shots, items[i]);
    if (o.show_prompt && i == 0) {  // the harness's format, to compare with its own dumps
      std::fprintf(stderr, "--- prompt of item 1 ---\n%s", ctx.c_str());
      for (const std::string& c : items[i].choices)
        std::fprintf(stderr, "\n  choice: \" %s\"", c.c_str());
      std::fprintf(stderr, "\n---\n");
    }
    const std::string shots_text = ctx.substr(0, ctx.size() - items[i].text.size());
    for (const std::string& choice : items[i].choices) {
      // lm-evaluation-harness: continuation = target_delimiter + choice; trailing spaces of the
      // context move to the continuation; the continuation's tokens are those of
      // context+continuation after the context's own.
      std::string c = ctx, cont = " " + choice;
      while (!c.empty() && c.back() == ' ') {
        c.pop_back();
        cont.insert(cont.begin(), ' ');
      }
      McRequest r;
      const std::vector<int32_t> ctx_tok = ref_engine->tokenize(c, true, false);
      r.tokens = ref_engine->tokenize(c + cont, true, false);
      r.n_cont = static_cast<int>(r.tokens.size()) - static_cast<int>(ctx_tok.size());
      if (r.n_cont < 1)
        throw Error(o.data + ":" + std::to_string(items[i].line) +
                    ": a choice tokenizes to nothing after the context");
      if (static_cast<int>(r.tokens.size()) > info.n_ctx)
        throw Error(o.data + ":" + std::to_string(items[i].line) + ": the prompt has " +
                    std::to_string(r.tokens.size()) + " tokens, more than the context size " +
                    std::to_string(info.n_ctx) + " (raise -c or lower --fewshot)");
      const int n_ctx_tok = static_cast<int>(r.tokens.size()) - r.n_cont;
      if (o.mc_prefill == "context")
        r.prefill = n_ctx_tok;
      else if (o.mc_prefill == "fewshot")
        r.prefill = std::min<int>(
            n_ctx_tok, static_cast<int>(ref_engine->tokenize(shots_text, true, false).size()));
      r.n_chars = utf8_chars(choice);
      shortest = std::min(shortest, static_cast<int>(r.tokens.size()));
      longest = std::max(longest, static_cast<int>(r.tokens.size()));
      requests[i].push_back(std::move(r));
    }
  }
  auto configs = configs_for(o, shortest);
  configs.insert(configs.begin(), reference_config());
  note(o, "model " + info.source + ", " + task + ": " + std::to_string(items.size()) + " items, " +
              std::to_string(o.fewshot) + "-shot, prompts of " + std::to_string(shortest) + ".." +
              std::to_string(longest) + " tokens, prefill " + o.mc_prefill + "; window " +
              std::to_string(resolved_window(o)));

  std::vector<Json> rows;
  std::vector<int> ref_pick(items.size(), -1);
  for (size_t ci = 0; ci < configs.size(); ++ci) {
    const auto& c = configs[ci];
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<hybridgen::Engine> e = ci == 0 ? std::move(ref_engine) : load_config(o, c);
    int correct = 0, correct_norm = 0, agree = 0;
    std::vector<double> lp;
    for (size_t i = 0; i < items.size(); ++i) {
      int best = 0, best_norm = 0;
      double best_ll = -1e300, best_ll_norm = -1e300;
      for (size_t k = 0; k < requests[i].size(); ++k) {
        const McRequest& r = requests[i][k];
        const std::vector<float> logits = e->evaluate(r.tokens, r.prefill);
        const int n = static_cast<int>(r.tokens.size());
        double ll = 0;
        for (int t = n - r.n_cont; t < n; ++t) {
          hgeval::log_softmax(
              std::span<const float>(&logits[size_t(t - 1) * info.vocab_size], info.vocab_size),
              lp);
          ll += lp[r.tokens[t]];
        }
        if (ll > best_ll) best_ll = ll, best = static_cast<int>(k);
        const double norm = ll / std::max(1, r.n_chars);
        if (norm > best_ll_norm) best_ll_norm = norm, best_norm = static_cast<int>(k);
      }
      correct += best == items[i].label;
      correct_norm += best_norm == items[i].label;
      if (ci == 0) ref_pick[i] = best;
      agree += best == ref_pick[i];
    }
    const double n_items = static_cast<double>(items.size());
    Json r = hgeval::config_row(c);
    r["items"] = items.size();
    r["acc"] = correct / n_items;
    r["acc_norm"] = correct_norm / n_items;
    r["agree"] = agree / n_items;  // same pick as full attention
    add_stats(r, *e);
    r["seconds"] = seconds_since(t0);
    rows.push_back(r);
    note(o, "[" + std::to_string(ci) + "/" + std::to_string(configs.size() - 1) + "] " + c.label +
                (c.k > 0 ? " K=" + std::to_string(c.k) : "") + ": acc " +
                fmt("%.4f", correct / n_items) + ", " + fmt("%.1f", seconds_since(t0)) + " s");
  }
  Json settings = base_settings(o);
  settings["task"] = task;
  settings["data"] = o.data;
  settings["fewshot"] = o.fewshot;
  settings["fewshot_file"] = same_pool ? o.data : o.fewshot_file;
  settings["mc_prefill"] = o.mc_prefill;
  settings["seed"] = o.seed;
  emit(o, "mc", settings,
       {{"policy", "policy", ""},
        {"window", "window", ""},
        {"k", "K", ""},
        {"budget", "budget", ""},
        {"items", "items", ""},
        {"acc", "acc", "%.4f"},
        {"acc_norm", "acc_norm", "%.4f"},
        {"agree", "same pick as full", "%.4f"},
        {"mean_k", "mean K", "%.1f"},
        {"seconds", "s", "%.1f"}},
       rows, info);
  return 0;
}

// ---- CLI ------------------------------------------------------------------------------------

void add_common(CLI::App* app, Options& o) {
  app->add_option("-m,--model", o.load.model_path, "HF model directory or .gguf file")
      ->capture_default_str();
  app->add_option("-c,--ctx-size", o.load.n_ctx, "context size in tokens (0: min(model, 4096))")
      ->capture_default_str();
  app->add_option("-t,--threads", o.load.n_threads, "CPU threads (0: all cores)")
      ->capture_default_str();
  app->add_option("--weight-format", o.weight_format,
                  "weights for the CPU GEMMs: auto, f32, bf16, native (GGUF blocks as stored, "
                  "16-bit activations), native-q8 (the same blocks, llama.cpp's 8-bit activations)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "native", "native-q8"}))
      ->capture_default_str();
  app->add_option("--policy", o.policies,
                  "policies, comma-separated: full, hybrid (the scheduler, K = K_min), "
                  "hybrid:post / hybrid:pre (fixed K), hybrid:off, aog, aoc, h2o, streamingllm, "
                  "keyformer, infinigen; none: the full-attention reference alone")
      ->delimiter(',');
  app->add_option("--k", o.ks,
                  "offloaded tokens per KV head, comma-separated (hybrid: K_min; baselines: K; "
                  "streamingllm: its window grows by K - 4)")
      ->delimiter(',');
  app->add_option("--fraction", o.fractions,
                  "retained fractions of the evaluated tokens instead of --k: K = fraction * n - "
                  "window")
      ->delimiter(',');
  app->add_option("--window", o.window, "device window, tokens (-1: 10% of the context)")
      ->capture_default_str();
  app->add_option("--predictor", o.load.attention.predictor,
                  "hybrid's Pre-QKT predictor: heavy, sinks-recent, partial")
      ->capture_default_str();
  app->add_flag("--exact-query", o.exact_query,
                "the CPU stage uses the true query (no speculation)");
  app->add_option("--spec-min-cosine", o.load.attention.speculation_min_cosine,
                  "layers whose speculated query's measured cosine to the true one is below this "
                  "use the true query (0: speculate at every layer, as the paper)")
      ->capture_default_str();
  app->add_option("--cpu-logits", o.load.attention.cpu_logits,
                  "kept offloaded tokens' logits: exact-selected (device, true query), "
                  "speculative (the CPU stage's, the paper), default (the policy's)")
      ->check(CLI::IsMember({"default", "speculative", "exact-selected"}))
      ->capture_default_str();
  app->add_option("--recall-guard", o.load.attention.recall_guard,
                  "the scheduler never lowers K while the selection's recall is below this "
                  "(0: off)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app->add_option("--cpu-threads", o.load.attention.cpu_threads,
                  "threads of the CPU stage (0: half of -t)")
      ->capture_default_str();
  app->add_option("--seed", o.seed, "seed of random tokens, passkeys and few-shot draws")
      ->capture_default_str();
  app->add_option("--json", o.json_path, "write the rows as JSON to this file (-: stdout)");
  app->add_option("--csv", o.csv_path, "write the rows as CSV to this file (-: stdout)");
  app->add_flag("-q,--quiet", o.quiet, "no progress on stderr");
  app->add_option("--log-level", o.log_level, "trace, debug, info, warn, error, off");
}

void add_tokens(CLI::App* app, Options& o) {
  app->add_option("-f,--file", o.text_file, "text file to evaluate on");
  app->add_option("--random-tokens", o.random_tokens,
                  "seeded random token ids instead of a text (models without a tokenizer)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("-n,--n-tokens", o.n_tokens, "tokens evaluated (0: the context size)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--prefill", o.prefill,
                  "tokens prefilled exactly before the scored decode steps (-1: half)")
      ->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hybridgen-eval: accuracy of attention policies against full attention"};
  Options o;
  o.load.model_path = default_model_path();
  app.require_subcommand(1);
  CLI::App* ppl = app.add_subcommand("ppl", "perplexity of each policy vs full on a text");
  CLI::App* kl = app.add_subcommand(
      "kl", "KL divergence and top-1 agreement vs full (teacher-forced), greedy agreement length");
  CLI::App* passkey = app.add_subcommand("passkey", "passkey retrieval success per policy");
  CLI::App* mc = app.add_subcommand(
      "mc", "multiple choice by log-likelihood (PIQA, OpenBookQA, COPA, RTE JSONL layouts)");
  CLI::App* profile = app.add_subcommand(
      "profile", "sweep K for one policy, find the smallest K within tolerance, write K_min");
  for (CLI::App* s : {ppl, kl, passkey, mc, profile}) add_common(s, o);
  for (CLI::App* s : {ppl, kl, profile}) add_tokens(s, o);
  kl->add_option("--gen", o.gen, "greedy tokens generated after the prefill (0: off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  passkey->add_option("--lengths", o.lengths, "prompt lengths in tokens (default 1024)")
      ->delimiter(',');
  passkey->add_option("--depths", o.depths, "needle depths, 0 (start) .. 1 (end)")
      ->delimiter(',')
      ->capture_default_str();
  passkey->add_option("--trials", o.trials, "prompts per length and depth")->capture_default_str();
  passkey->add_option("--filler", o.filler, "filler text file (default: repeated sentences)");
  mc->add_option("--data", o.data, "JSONL file of items")->required();
  mc->add_option("--task", o.task, "layout: auto, piqa, openbookqa, copa, rte")
      ->capture_default_str();
  mc->add_option("--fewshot", o.fewshot, "examples before each item")->capture_default_str();
  mc->add_option("--fewshot-file", o.fewshot_file,
                 "JSONL file the examples come from (default: --data, without the item)");
  mc->add_option("--limit", o.limit, "first N items only (0: all)")->capture_default_str();
  mc->add_flag("--show-prompt", o.show_prompt, "print the first item's prompt and choices");
  mc->add_option("--mc-prefill", o.mc_prefill,
                 "exact prefix: fewshot (the examples), context (all but the answer), none")
      ->capture_default_str();
  profile->add_option("--metric", o.metric, "ppl (ratio - 1), kl (mean, nats), top1 (1 - agree)")
      ->check(CLI::IsMember({"ppl", "kl", "top1"}))
      ->capture_default_str();
  profile->add_option("--tolerance", o.tolerance, "largest error of --metric accepted")
      ->capture_default_str();
  profile->add_option("--profile-out", o.profile_out, "model profile to write (JSON with k_min)")
      ->required();
  CLI11_PARSE(app, argc, argv);

  try {
    if (!o.log_level.empty()) hybridgen::set_log_level(o.log_level);
    if (o.policies.empty()) {
      if (profile->parsed())
        o.policies = {"hybrid:post"};
      else
        o.policies = {"hybrid", "h2o", "streamingllm", "keyformer", "infinigen"};
    }
    if (o.ks.empty() && o.fractions.empty()) {
      if (profile->parsed())
        o.ks = {32, 64, 128, 256, 512};
      else
        o.ks = {128};
    }
    if (ppl->parsed()) return run_teacher_forced(o, "ppl");
    if (kl->parsed()) return run_teacher_forced(o, "kl");
    if (profile->parsed()) return run_teacher_forced(o, "profile");
    if (passkey->parsed()) return run_passkey(o);
    if (mc->parsed()) return run_mc(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
