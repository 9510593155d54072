// Fuzzes parse_hf_config (an HF config.json) and what the loader computes from an accepted
// config: validate(), rope_inv_freq() and n_params() (memory estimates).
#include <climits>

#include "fuzz_common.h"
#include "hybridgen/error.h"
#include "model/model_config.h"

using namespace hybridgen;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file("config.json");
  // Known issue 5 (README.md, "Findings"): deep JSON nesting overflows the stack.
  if (fuzz::skip_known() && fuzz::json_deeper_than(data, size, 1000)) return 0;
  file.set(data, size);
  try {
    const ModelConfig c = parse_hf_config(file.path());
    // What validate() promises.
    FUZZ_CHECK(c.n_layers > 0 && c.d_model > 0 && c.n_heads > 0 && c.n_kv_heads > 0 &&
                   c.head_dim > 0 && c.d_ff > 0 && c.vocab_size > 0 && c.max_positions > 0,
               "accepted a non-positive dimension");
    FUZZ_CHECK(c.n_heads % c.n_kv_heads == 0 && c.head_dim % 2 == 0, "accepted bad heads");
    FUZZ_CHECK(c.norm_eps > 0 && c.norm_eps < 1, "accepted norm_eps %g", c.norm_eps);
    c.validate("again");
    const auto inv = c.rope_inv_freq();
    FUZZ_CHECK(inv.size() == static_cast<size_t>(c.rope_dim / 2), "rope_inv_freq size");
    // Known issue 4 (README.md, "Findings"): n_params() computes max_positions +
    // position_offset in int, which overflows for OPT with max_position_embeddings near
    // INT32_MAX.
    if (!(fuzz::skip_known() && c.learned_positions &&
          c.max_positions > INT32_MAX - c.position_offset))
      FUZZ_CHECK(c.n_params() > 0, "n_params() = %lld", static_cast<long long>(c.n_params()));
  } catch (const hybridgen::Error&) {
  }
  return 0;
}
