// The attention flags of the tools (hybridgen-run, hybridgen-bench, hybridgen-server): one
// definition of each flag's name, help text and check, so the tools cannot drift apart.
#pragma once
#include <CLI/CLI.hpp>

#include "hybridgen/config.h"

namespace hybridgen::tools {

// Values that need converting after parsing (MB -> bytes, a negated flag).
struct AttentionFlagExtras {
  double fast_key_budget_mb = 0;
  bool exact_query = false;
};

enum class AttentionFlagScope {
  kAll,           // every flag, one value each (hybridgen-run, hybridgen-server)
  kExceptSweeps,  // all but --policy, --window, --k, --k-min, --selection, which
                  // hybridgen-bench takes as lists to sweep over
};

// Registers the flags on `app`, writing into `a` and `x`.
void add_attention_flags(CLI::App& app, AttentionOptions& a, AttentionFlagExtras& x,
                         AttentionFlagScope scope = AttentionFlagScope::kAll);

// After parsing: checks the extras (throws hybridgen::Error naming the flag) and stores them
// into `a`.
void apply_attention_flags(AttentionOptions& a, const AttentionFlagExtras& x);

}  // namespace hybridgen::tools
