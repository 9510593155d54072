// Run configurations and teacher-forced scoring against full attention.
#include <algorithm>
#include <cmath>
#include <limits>

#include "eval.h"

namespace hgeval {

using hybridgen::Error;

namespace {

bool uses_k(const std::string& policy, const std::string& selection) {
  if (policy == "hybrid") return selection != "off";
  return policy == "h2o" || policy == "keyformer" || policy == "infinigen" ||
         policy == "streamingllm";
}

constexpr int kStreamingSinks = 4;  // the runtime's StreamingLLM keeps 4 attention sinks

}  // namespace

std::vector<RunConfig> expand_configs(const std::vector<std::string>& policies,
                                      const std::vector<int>& ks,
                                      const std::vector<double>& fractions, int window,
                                      int n_tokens) {
  static const char* kPolicies[] = {"full", "hybrid",       "aog",       "aoc",
                                    "h2o",  "streamingllm", "keyformer", "infinigen"};
  // The K values (and where each came from) shared by every selective policy.
  std::vector<std::pair<int, double>> k_list;
  for (int k : ks) {
    if (k < 1) throw Error("--k values must be >= 1, got " + std::to_string(k));
    k_list.push_back({k, 0.0});
  }
  for (double f : fractions) {
    if (!(f > 0 && f <= 1))
      throw Error("--fraction values must be in (0, 1], got " + std::to_string(f));
    const int budget = static_cast<int>(std::lround(f * n_tokens));
    if (budget - window < 1)
      throw Error("--fraction " + std::to_string(f) + " of " + std::to_string(n_tokens) +
                  " tokens is a budget of " + std::to_string(budget) +
                  " tokens, not more than the device window of " + std::to_string(window) +
                  " (lower --window or raise the fraction)");
    k_list.push_back({budget - window, f});
  }

  std::vector<RunConfig> out;
  for (const std::string& spec : policies) {
    RunConfig base;
    base.label = spec;
    const size_t colon = spec.find(':');
    base.policy = spec.substr(0, colon);
    if (std::find_if(std::begin(kPolicies), std::end(kPolicies),
                     [&](const char* p) { return base.policy == p; }) == std::end(kPolicies))
      throw Error("unknown policy '" + spec +
                  "' (the --policy flag: full, hybrid, hybrid:post, hybrid:pre, hybrid:off, aog, "
                  "aoc, h2o, streamingllm, keyformer, infinigen)");
    if (colon != std::string::npos) {
      base.selection = spec.substr(colon + 1);
      if (base.policy != "hybrid" || (base.selection != "adaptive" && base.selection != "post" &&
                                      base.selection != "pre" && base.selection != "off"))
        throw Error("unknown policy '" + spec +
                    "' (the --policy flag: a selection suffix is for hybrid only: hybrid:adaptive, "
                    "hybrid:post, hybrid:pre, hybrid:off)");
    } else if (base.policy == "hybrid") {
      base.selection = "adaptive";
    }
    base.window = base.policy == "aog" || base.policy == "aoc" ? 0 : window;
    if (base.policy == "full") base.window = 0;
    if (!uses_k(base.policy, base.selection)) {
      out.push_back(base);
      continue;
    }
    if (k_list.empty()) throw Error("policy '" + spec + "' needs a K: give --k or --fraction");
    for (const auto& [k, f] : k_list) {
      RunConfig c = base;
      c.k = k;
      c.fraction = f;
      if (c.policy == "streamingllm") {
        // Same budget as the others: the sinks take 4 of it, the window the rest.
        c.window = std::max(0, window + k - kStreamingSinks);
        c.budget = c.window + kStreamingSinks;
      } else {
        c.budget = window + k;
      }
      out.push_back(c);
    }
  }
  return out;
}

hybridgen::LoadOptions load_options(const hybridgen::LoadOptions& base, const RunConfig& c) {
  hybridgen::LoadOptions o = base;
  hybridgen::AttentionOptions& a = o.attention;
  a.policy = c.policy;
  a.window = c.window;
  a.selection = c.selection.empty() ? "adaptive" : c.selection;
  a.k = 0;
  if (c.k > 0) {
    a.k_min = c.k;
    // hybrid (adaptive) keeps k = 0 so that the scheduler owns K above K_min.
    if (!(c.policy == "hybrid" && a.selection == "adaptive")) a.k = c.k;
  }
  return o;
}

Json config_row(const RunConfig& c) {
  Json r;
  r["policy"] = c.label;
  r["window"] = c.window;
  r["k"] = c.k > 0 ? Json(c.k) : Json(nullptr);
  r["budget"] = c.budget > 0 ? Json(c.budget) : Json(nullptr);
  if (c.fraction > 0) r["fraction"] = c.fraction;
  return r;
}

void log_softmax(std::span<const float> logits, std::vector<double>& out) {
  out.resize(logits.size());
  double mx = -std::numeric_limits<double>::infinity();
  for (float v : logits) mx = std::max(mx, double(v));
  double sum = 0;
  for (float v : logits) sum += std::exp(double(v) - mx);
  const double lse = mx + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i) out[i] = double(logits[i]) - lse;
}

namespace {
int32_t argmax(std::span<const float> row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}
}  // namespace

Reference make_reference(std::span<const float> logits, std::span<const int32_t> tokens,
                         int first_row, int vocab) {
  const int n = static_cast<int>(tokens.size());
  if (first_row < 0 || first_row > n - 2)
    throw Error("nothing to score: " + std::to_string(n) + " tokens with the first scored row " +
                std::to_string(first_row) + " (lower --prefill or raise -n)");
  Reference ref;
  ref.first_row = first_row;
  ref.vocab = vocab;
  const int n_scored = n - 1 - first_row;
  ref.logp.resize(size_t(n_scored) * vocab);
  std::vector<double> lp;
  for (int i = 0; i < n_scored; ++i) {
    const int row = first_row + i;
    std::span<const float> l = logits.subspan(size_t(row) * vocab, vocab);
    log_softmax(l, lp);
    std::copy(lp.begin(), lp.end(), ref.logp.begin() + size_t(i) * vocab);
    ref.argmax.push_back(argmax(l));
    ref.nll_sum -= lp[tokens[row + 1]];
  }
  return ref;
}

double Agreement::ppl() const { return n_scored > 0 ? std::exp(nll_sum / n_scored) : 0; }

Agreement compare(std::span<const float> logits, std::span<const int32_t> tokens,
                  const Reference& ref) {
  Agreement a;
  const int vocab = ref.vocab;
  std::vector<double> lp;
  for (int i = 0; i < ref.n_scored(); ++i) {
    const int row = ref.first_row + i;
    std::span<const float> l = logits.subspan(size_t(row) * vocab, vocab);
    log_softmax(l, lp);
    const float* lq = &ref.logp[size_t(i) * vocab];
    // KL(full || policy): how much of full's next-token distribution the policy loses. The
    // policy's log-probs are rounded to float like the stored reference's, so that identical
    // logits give exactly 0.
    double kl = 0;
    for (int v = 0; v < vocab; ++v)
      kl += std::exp(double(lq[v])) * (double(lq[v]) - double(float(lp[v])));
    kl = std::max(kl, 0.0);
    a.kl_sum += kl;
    a.kl_max = std::max(a.kl_max, kl);
    a.top1_same += argmax(l) == ref.argmax[i];
    a.nll_sum -= lp[tokens[row + 1]];
    ++a.n_scored;
  }
  return a;
}

std::vector<int32_t> greedy(hybridgen::Engine& e, std::span<const int32_t> prompt, int n) {
  hybridgen::GenerateOptions g;
  g.n_predict = n;
  g.sampling.temperature = 0;
  g.stop_at_eog = false;
  return e.generate(prompt, g).tokens;
}

int common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return static_cast<int>(i);
}

}  // namespace hgeval
