// Fuzzes encode/decode of arbitrary bytes with fixed, valid tokenizers (the reduced SmolLM2,
// Llama-3 and Qwen2 tokenizers and the four feature tokenizers of tests/data/tokenizers).
// Input: byte 0 picks the tokenizer (bits 0-2) and the flags (bit 3 add_special, bit 4
// parse_special, bit 5 skip_special); the rest is the text.
// Checks: ids in range; StreamDecoder == decode(); and for the byte-level tokenizers without
// lossy steps and with all 256 byte tokens (Llama-3, Qwen2), decode(encode(text)) == text
// with invalid UTF-8 replaced (and NFC for Qwen2), with add_special and parse_special off. The
// text's bytes are also decoded as raw ids.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "hybridgen/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer_checks.h"

namespace {

using hybridgen::Tokenizer;

enum class RoundTrip { kNone, kExact, kNfc };

struct Loaded {
  std::unique_ptr<Tokenizer> tok;
  RoundTrip round_trip;
};

std::vector<Loaded> load_all() {
  const std::string d = fuzz::data_dir() + "/tokenizers/";
  struct Spec {
    const char* json;
    const char* config;
    RoundTrip rt;
  };
  const Spec specs[] = {
      // The reduced SmolLM2 vocabulary lacks 21 byte tokens (0x04, 0x1d, 0xf5-0xff, ...),
      // which encode drops as HF does without an unk token: no round trip to check.
      {"smollm2/tokenizer.json", "smollm2/tokenizer_config.json", RoundTrip::kNone},
      {"llama3/tokenizer.json", "llama3/tokenizer_config.json", RoundTrip::kExact},
      {"qwen2/tokenizer.json", "qwen2/tokenizer_config.json", RoundTrip::kNfc},
      // Removed/Contiguous splits, prefix spaces and strips: no round trip to check.
      {"features/features_a.json", nullptr, RoundTrip::kNone},
      {"features/features_b.json", nullptr, RoundTrip::kNone},
      {"features/features_c.json", nullptr, RoundTrip::kNone},
      {"features/features_d.json", nullptr, RoundTrip::kNone},
  };
  std::vector<Loaded> out;
  for (const Spec& s : specs) {
    try {
      out.push_back({Tokenizer::from_hf_files(d + s.json, s.config ? d + s.config : ""), s.rt});
    } catch (const hybridgen::Error& e) {
      std::fprintf(stderr, "fuzz_tokenizer_encode: cannot load %s%s: %s\n", d.c_str(), s.json,
                   e.what());
      std::fprintf(stderr, "  (set HYBRIDGEN_FUZZ_DATA_DIR to the repository's tests/data)\n");
      std::abort();
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<Loaded> toks = load_all();
  if (size == 0) return 0;
  const uint8_t sel = data[0];
  const Loaded& t = toks[(sel & 7) % toks.size()];
  const bool add_special = sel & 8, parse_special = sel & 16, skip_special = sel & 32;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    const std::vector<int32_t> ids = t.tok->encode(text, add_special, parse_special);
    fuzz::check_ids(*t.tok, ids);
    const std::string decoded = t.tok->decode(ids, skip_special);
    fuzz::check_stream_decode(*t.tok, ids);
    if (t.round_trip != RoundTrip::kNone && !add_special && !parse_special) {
      std::string want = hybridgen::tok::sanitize_utf8(text);
      if (t.round_trip == RoundTrip::kNfc) want = hybridgen::tok::nfc(want);
      FUZZ_CHECK(decoded == want, "decode(encode(text)) != text (tokenizer %d, %zu ids)",
                 (sel & 7) % static_cast<int>(toks.size()), ids.size());
    }
    // The text's bytes as raw ids.
    std::vector<int32_t> raw((size - 1) / 4);
    if (!raw.empty()) std::memcpy(raw.data(), data + 1, raw.size() * 4);
    (void)t.tok->decode(raw, skip_special);
    fuzz::check_stream_decode(*t.tok, raw);
    for (int32_t id : raw) (void)t.tok->is_end_of_generation(id);
  } catch (const hybridgen::Error&) {
  }
  return 0;
}
