// format_attention_stats: the memory and timing report of hybridgen-run -v and the benchmarks.
#include <cstdio>
#include <string>

#include "hybridgen/engine.h"

namespace hybridgen {

namespace {
std::string mb(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MB", bytes / 1e6);
  return buf;
}
}  // namespace

std::string format_attention_stats(const AttentionStats& s, bool verbose) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "attention: policy %s, window %d tokens%s%s\n", s.policy.c_str(),
                s.window, s.cpu_logits.empty() ? "" : ", cpu-logits ", s.cpu_logits.c_str());
  out += line;
  if (s.policy == "full") return out;
  std::snprintf(line, sizeof line,
                "  decode steps %lld: passes %lld (all %lld, post-qkt %lld, pre-qkt %lld), mean K "
                "%.1f, now K %d %s\n",
                (long long)s.decode_steps, (long long)s.layer_passes, (long long)s.passes_all,
                (long long)s.passes_post_qkt, (long long)s.passes_pre_qkt, s.mean_k, s.k_now,
                s.mode_now.c_str());
  out += line;
  const double n = s.decode_steps > 0 ? double(s.decode_steps) : 1.0;
  std::snprintf(line, sizeof line,
                "  per step: device %.3f ms, CPU stage %.3f ms, V transfer %.3f ms, device "
                "waiting %.3f ms; CPU read %s of keys, moved %s of V and %s of K\n",
                1e3 * s.t_device / n, 1e3 * s.t_cpu / n, 1e3 * s.t_tx / n, 1e3 * s.t_wait / n,
                mb(s.key_bytes_read).c_str(), mb(s.value_bytes_moved).c_str(),
                mb(s.key_bytes_moved).c_str());
  out += line;
  if (s.recall > 0) {
    std::snprintf(line, sizeof line,
                  "  selection recall (Post-QKT, kept mass of the CPU-stage softmax): mean %.4f, "
                  "lowest step %.4f; scheduler held K for low recall in %lld steps\n",
                  s.recall, s.recall_min_step, (long long)s.recall_guard_holds);
    out += line;
    if (verbose) {
      out += "  recall per layer:";
      for (double r : s.recall_per_layer) {
        std::snprintf(line, sizeof line, " %.3f", r);
        out += line;
      }
      out += "\n";
    }
  }
  std::snprintf(line, sizeof line,
                "  memory (used / reserved): device window %s / %s, key store %s / %s, value "
                "store %s / %s, staging %s (allocator %s)\n",
                mb(s.window_used).c_str(), mb(s.window_reserved).c_str(),
                mb(s.key_store_used).c_str(), mb(s.key_store_reserved).c_str(),
                mb(s.value_store_used).c_str(), mb(s.value_store_reserved).c_str(),
                mb(s.staging_bytes).c_str(), s.allocator.c_str());
  out += line;
  if (s.speculation_cosine != 0) {  // may be negative: 0 means no speculation
    std::snprintf(line, sizeof line, "  speculated query vs true: mean cosine %.4f (layers >= 1)\n",
                  s.speculation_cosine);
    out += line;
    if (verbose) {
      out += "  per layer:";
      for (double c : s.speculation_cosine_per_layer) {
        std::snprintf(line, sizeof line, " %.3f", c);
        out += line;
      }
      out += "\n";
    }
  }
  if (!s.placement.empty()) out += s.placement;
  if (verbose)
    for (const std::string& d : s.scheduler_trace) out += "  scheduler: " + d + "\n";
  return out;
}

}  // namespace hybridgen
