// hybridgen-eval: what each attention policy costs in accuracy against `full` on the same model
// and input. Shared pieces of the modes (main.cpp): run configurations, teacher-forced scoring,
// the task builders (passkey, multiple choice) and the report writer.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "hybridgen/hybridgen.h"

namespace hgeval {

using Json = nlohmann::ordered_json;  // rows keep their column order in JSON and CSV

// ---- Run configurations ---------------------------------------------------------------------

// One attention configuration to evaluate. Every selective row attends to the same number of
// past tokens, its budget = window + K, so that policies are compared at equal cost:
//   hybrid        the scheduler (Algorithm 1, adaptive selection); K is its K_min (a floor: the
//                 scheduler raises K while the CPU stage has slack, see mean_k)
//   hybrid:post   fixed K, Post-QKT top-K (the floor the scheduler never goes below)
//   hybrid:pre    fixed K, Pre-QKT with --predictor
//   hybrid:off    every offloaded token (exact up to bf16 storage and the speculative query)
//   h2o, keyformer, infinigen   fixed K (the runtime's baselines)
//   streamingllm  4 sinks + a window of budget - 4 tokens (the window grows with K)
//   full, aog, aoc              every token; no K
struct RunConfig {
  std::string label;      // as given in --policy (e.g. "hybrid:post")
  std::string policy;     // runtime policy name
  std::string selection;  // hybrid: adaptive, post, pre, off
  int window = 0;         // device window, tokens
  int k = 0;              // offloaded tokens per KV head (hybrid: K_min); 0: not applicable
  int budget = 0;         // past tokens attended per query: window + K (0: all of them)
  double fraction = 0;    // the --fraction this row came from (0: from --k)
};

// Expands --policy x (--k or --fraction) into configurations. window: the resolved device
// window; n_tokens: the evaluated sequence length (fractions are of it). Throws naming the
// flag for an unknown policy or a K that leaves nothing to select.
std::vector<RunConfig> expand_configs(const std::vector<std::string>& policies,
                                      const std::vector<int>& ks,
                                      const std::vector<double>& fractions, int window,
                                      int n_tokens);

// The engine options of one configuration on top of the base options from the flags.
hybridgen::LoadOptions load_options(const hybridgen::LoadOptions& base, const RunConfig& c);

// Base row fields every mode reports for a configuration.
Json config_row(const RunConfig& c);

// ---- Teacher-forced scoring -----------------------------------------------------------------

// Log-softmax of one logits row, in double for stable sums.
void log_softmax(std::span<const float> logits, std::vector<double>& out);

// Full attention's log-probabilities at the scored rows of one token sequence: rows
// [first_row, n-2] of Engine::evaluate, each predicting token row+1.
struct Reference {
  int first_row = 0;
  int vocab = 0;
  std::vector<float> logp;      // [n_scored, vocab]
  std::vector<int32_t> argmax;  // [n_scored]
  double nll_sum = 0;           // of the true next tokens
  int n_scored() const { return static_cast<int>(argmax.size()); }
};

Reference make_reference(std::span<const float> logits, std::span<const int32_t> tokens,
                         int first_row, int vocab);

// A policy's rows against the reference: perplexity, mean and max KL(full || policy) of the
// next-token distributions, top-1 agreement.
struct Agreement {
  int n_scored = 0;
  double nll_sum = 0;
  double kl_sum = 0, kl_max = 0;
  int top1_same = 0;
  double ppl() const;
  double kl_mean() const { return n_scored > 0 ? kl_sum / n_scored : 0; }
  double top1() const { return n_scored > 0 ? double(top1_same) / n_scored : 0; }
};

Agreement compare(std::span<const float> logits, std::span<const int32_t> tokens,
                  const Reference& ref);

// Greedy continuation of `prompt` for n tokens (end-of-generation tokens do not stop it).
std::vector<int32_t> greedy(hybridgen::Engine& e, std::span<const int32_t> prompt, int n);
// Length of the common prefix of two generations.
int common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

// ---- Passkey retrieval ----------------------------------------------------------------------

struct PasskeyPrompt {
  std::vector<int32_t> tokens;  // context + question + answer
  int n_context = 0;            // tokens before the question (prefilled exactly)
  int n_answer = 0;             // the key's digit tokens at the end (checked)
  std::string key;              // five digits
  double depth = 0;             // where the needle sits in the filler, 0 (start) .. 1 (end)
  int needle_token = 0;         // the needle's first token position
};

// Filler units (sentences) from a text file, or the classic repeated sentences when path is
// empty. Throws naming --filler for a missing or empty file.
std::vector<std::string> filler_sentences(const std::string& path);

// A prompt of about `length` tokens: header, filler with "The pass key is NNNNN. Remember it."
// at `depth`, the question, and the key as the answer.
PasskeyPrompt make_passkey_prompt(const hybridgen::Engine& e,
                                  const std::vector<std::string>& filler, int length, double depth,
                                  std::mt19937_64& rng);

// ---- Multiple choice (lm-evaluation-harness layouts) ----------------------------------------

struct McItem {
  std::string text;                  // doc_to_text
  std::vector<std::string> choices;  // doc_to_choice (without the target delimiter)
  int label = 0;                     // index of the right choice
  int line = 0;                      // line in the JSONL file
};

// Reads a JSONL file in the PIQA, OpenBookQA, COPA or RTE layout (task "auto": from the fields
// of the first item). Errors name FILE:LINE and the field.
std::vector<McItem> read_mc_jsonl(const std::string& path, std::string& task);

// lm-evaluation-harness's few-shot context: each shot "text + ' ' + answer", joined and ended by
// "\n\n", then the item's text.
std::string mc_context(const std::vector<McItem>& shots, const McItem& item);

// ---- Report ---------------------------------------------------------------------------------

struct Column {
  std::string key;     // field of the row
  std::string header;  // markdown header
  std::string format;  // printf format of a number ("%.4f"), or "" for strings / integers
};

// Markdown table of the columns; a missing or null field prints "-".
std::string markdown(const std::vector<Column>& columns, const std::vector<Json>& rows);
// CSV of every scalar field of the rows (header: the union of their keys, in order).
std::string csv(const std::vector<Json>& rows);
// Writes text to a file ("-": stdout); throws naming the flag if the file cannot be written.
void write_output(const std::string& path, const std::string& text, const std::string& flag);

std::string read_text_file(const std::string& path, const std::string& flag);

}  // namespace hgeval
