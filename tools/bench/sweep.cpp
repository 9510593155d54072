#include "sweep.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "util/check.h"

namespace hybridgen::bench {

namespace {

// A sweep that expands to more items than this is a typo (e.g. "1-100000"), not a benchmark.
constexpr size_t kMaxItems = 4096;

std::vector<std::string> split(const std::string& flag, const std::string& text) {
  HG_CHECK(!text.empty(), flag + ": empty list (give at least one value)");
  std::vector<std::string> items;
  size_t begin = 0;
  while (true) {
    const size_t comma = text.find(',', begin);
    const std::string item =
        text.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
    HG_CHECK(!item.empty(), flag + ": empty item in the list '" + text + "'");
    items.push_back(item);
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return items;
}

// The whole of `s` as an integer, or an error naming the flag.
int to_int(const std::string& flag, const std::string& item, const std::string& s) {
  int v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  HG_CHECK(ec == std::errc() && end == s.data() + s.size() && !s.empty(),
           flag + ": '" + item + "' is not an integer, a range A-B, A-B+STEP or A-B*FACTOR");
  return v;
}

std::string fmt_g(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

std::vector<int> parse_int_list(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  for (const std::string& item : split(flag, text)) {
    // A leading '-' is a negative number (window -1), never a range.
    const size_t dash = item.find('-', 1);
    if (item[0] == '-' || dash == std::string::npos) {
      out.push_back(to_int(flag, item, item));
    } else {
      const int a = to_int(flag, item, item.substr(0, dash));
      std::string rest = item.substr(dash + 1);
      char op = '+';
      int step = 1;
      const size_t op_at = rest.find_first_of("+*");
      if (op_at != std::string::npos) {
        op = rest[op_at];
        step = to_int(flag, item, rest.substr(op_at + 1));
        rest = rest.substr(0, op_at);
      }
      const int b = to_int(flag, item, rest);
      HG_CHECK(a <= b, flag + ": range '" + item + "' runs backwards");
      HG_CHECK(op == '+' ? step >= 1 : step >= 2 && a >= 1,
               flag + ": range '" + item +
                   "' never ends (the step must be >= 1, the factor >= 2 from a start >= 1)");
      for (int64_t v = a; v <= b; v = op == '+' ? v + step : v * step) {
        out.push_back(static_cast<int>(v));
        HG_CHECK(out.size() <= kMaxItems, flag + ": '" + text + "' expands to more than " +
                                              std::to_string(kMaxItems) + " values");
      }
    }
    HG_CHECK(out.size() <= kMaxItems,
             flag + ": more than " + std::to_string(kMaxItems) + " values");
  }
  return out;
}

std::vector<double> parse_double_list(const std::string& flag, const std::string& text) {
  std::vector<double> out;
  for (const std::string& item : split(flag, text)) {
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    HG_CHECK(end == item.c_str() + item.size() && std::isfinite(v),
             flag + ": '" + item + "' is not a number");
    out.push_back(v);
  }
  return out;
}

std::vector<std::string> parse_name_list(const std::string& flag, const std::string& text,
                                         const std::vector<std::string>& allowed) {
  std::vector<std::string> out = split(flag, text);
  for (const std::string& item : out)
    if (std::find(allowed.begin(), allowed.end(), item) == allowed.end()) {
      std::string names;
      for (const std::string& a : allowed) names += (names.empty() ? "" : ", ") + a;
      fail(flag + ": unknown value '" + item + "' (one of: " + names + ")");
    }
  return out;
}

const std::vector<std::string>& policy_names() {
  static const std::vector<std::string> kNames = {"full", "hybrid",       "aog",       "aoc",
                                                  "h2o",  "streamingllm", "keyformer", "infinigen"};
  return kNames;
}

bool policy_uses_window(const std::string& p) { return p != "full" && p != "aog" && p != "aoc"; }
bool policy_uses_k(const std::string& p) {
  return p == "hybrid" || p == "h2o" || p == "keyformer" || p == "infinigen";
}
bool policy_uses_selection(const std::string& p) { return p == "hybrid"; }

std::string BenchConfig::label() const {
  std::string s = policy + " p=" + std::to_string(n_prompt) + " b=" + std::to_string(batch);
  if (window >= 0) s += " w=" + std::to_string(window);
  if (k >= 0) s += " k=" + std::to_string(k);
  if (!selection.empty()) s += " sel=" + selection;
  return s;
}

std::vector<BenchConfig> expand(const SweepSpec& s) {
  HG_CHECK(!s.policies.empty(), "--policy: empty list");
  HG_CHECK(!s.n_prompt.empty(), "-p/--n-prompt: empty list");
  HG_CHECK(!s.batch.empty(), "-b/--batch: empty list");
  HG_CHECK(!s.ks.empty(), "--k: empty list");
  HG_CHECK(!s.selections.empty(), "--selection: empty list");
  HG_CHECK(!s.windows.empty() || !s.window_fracs.empty(), "--window: empty list");
  HG_CHECK(s.repetitions >= 1,
           "-r/--repetitions must be >= 1, got " + std::to_string(s.repetitions));
  HG_CHECK(s.warmup >= 0, "--warmup must be >= 0, got " + std::to_string(s.warmup));
  HG_CHECK(s.n_gen >= 0, "-n/--n-gen must be >= 0, got " + std::to_string(s.n_gen));
  HG_CHECK(s.n_ctx >= 0, "-c/--ctx-size must be >= 0, got " + std::to_string(s.n_ctx));
  HG_CHECK(s.k_min >= 1, "--k-min must be >= 1, got " + std::to_string(s.k_min));
  for (int p : s.n_prompt)
    HG_CHECK(p >= 1, "-p/--n-prompt: prompt lengths must be >= 1, got " + std::to_string(p));
  for (int b : s.batch)
    HG_CHECK(b >= 1 && b <= 1024,
             "-b/--batch: batch sizes must be in [1, 1024], got " + std::to_string(b));
  for (int w : s.windows)
    HG_CHECK(w >= -1, "--window: windows must be >= 0 tokens (or -1: 10% of the context), got " +
                          std::to_string(w));
  for (double f : s.window_fracs)
    HG_CHECK(f >= 0 && f <= 1,
             "--window-frac: fractions of the context must be in [0, 1], got " + fmt_g(f));
  for (int k : s.ks) HG_CHECK(k >= 0, "--k: K must be >= 0 (0: K_min), got " + std::to_string(k));
  if (s.device != "cpu")
    for (const std::string& p : s.policies)
      HG_CHECK(p == "full", "--policy " + p + ": the " + s.device +
                                " backend runs policy full only in this build (use --device cpu)");

  std::vector<BenchConfig> out;
  for (int p : s.n_prompt) {
    // The engine's context: the prompt and the generated tokens, unless -c fixes it.
    const int need = p + s.n_gen;
    const int n_ctx = s.n_ctx > 0 ? s.n_ctx : need;
    HG_CHECK(n_ctx >= need, "-c/--ctx-size " + std::to_string(s.n_ctx) + " is smaller than -p " +
                                std::to_string(p) + " + -n " + std::to_string(s.n_gen) + " = " +
                                std::to_string(need));
    const std::string ctx_text =
        std::to_string(n_ctx) + " tokens" +
        (s.n_ctx > 0 ? " (-c)" : " = -p " + std::to_string(p) + " + -n " + std::to_string(s.n_gen));
    // The window sweep resolved to tokens for this context (the engine would clamp a window over
    // the context with a warning; a benchmark that asked for it is wrong, so it is an error).
    std::vector<std::pair<int, double>> windows;  // (tokens, fraction or -1)
    for (int w : s.windows) {
      HG_CHECK(w <= n_ctx,
               "--window " + std::to_string(w) + " is larger than the context (" + ctx_text + ")");
      windows.push_back({w < 0 ? n_ctx / 10 : w, -1});
    }
    for (double f : s.window_fracs) windows.push_back({static_cast<int>(std::floor(f * n_ctx)), f});
    HG_CHECK(!s.k_min_given || s.k_min <= n_ctx, "--k-min " + std::to_string(s.k_min) +
                                                     " is larger than the context (" + ctx_text +
                                                     "): the scheduler would never select");
    for (int k : s.ks)
      HG_CHECK(k <= n_ctx,
               "--k " + std::to_string(k) + " is larger than the context (" + ctx_text + ")");

    for (int b : s.batch)
      for (const std::string& policy : s.policies) {
        BenchConfig c;
        c.policy = policy;
        c.n_prompt = p;
        c.batch = b;
        c.n_ctx = n_ctx;
        // Parameters a policy ignores are not swept for it (one run, shown as "-").
        const std::vector<std::pair<int, double>> ws =
            policy_uses_window(policy) ? windows : std::vector<std::pair<int, double>>{{-1, -1}};
        const std::vector<std::string> sels =
            policy_uses_selection(policy) ? s.selections : std::vector<std::string>{""};
        for (const auto& [w, f] : ws)
          for (const std::string& sel : sels) {
            // hybrid with selection off uses every offloaded token: K means nothing.
            const bool uses_k = policy_uses_k(policy) && sel != "off";
            const std::vector<int> ks = uses_k ? s.ks : std::vector<int>{-1};
            for (int k : ks) {
              c.window = w;
              c.window_frac = f;
              c.selection = sel;
              c.k = k;
              out.push_back(c);
            }
          }
      }
  }
  return out;
}

}  // namespace hybridgen::bench
