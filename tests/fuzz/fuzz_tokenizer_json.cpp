// Fuzzes Tokenizer::from_hf_files on a tokenizer.json (no tokenizer_config.json: the chat
// template harness covers that file). An accepted tokenizer goes through
// fuzz::exercise_tokenizer: fixed texts in every encode mode, ids in range, StreamDecoder
// equal to decode(), odd ids, its chat template.
#include <memory>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "hybridgen/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_checks.h"

namespace {

// Tokenizers kept alive keep their compiled PCRE2 regexes (GPT-2, Llama-3, Qwen2 patterns,
// digits) in the library's cache, so that runs do not compile and JIT them again.
std::vector<std::unique_ptr<hybridgen::Tokenizer>> keep_regexes_alive() {
  std::vector<std::unique_ptr<hybridgen::Tokenizer>> out;
  const std::string d = fuzz::data_dir() + "/tokenizers/";
  for (const char* name : {"smollm2", "llama3", "qwen2"}) {
    try {
      out.push_back(hybridgen::Tokenizer::from_hf_files(d + name + "/tokenizer.json", ""));
    } catch (const hybridgen::Error&) {
      // Only a speed-up: fuzzing works without it.
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto keepalive = keep_regexes_alive();
  (void)keepalive;
  static fuzz::MemFile file("tokenizer.json");
  // Known issue 5 (README.md, "Findings"): deep JSON nesting overflows the stack.
  if (fuzz::skip_known() && fuzz::json_deeper_than(data, size, 1000)) return 0;
  file.set(data, size);
  try {
    auto tok = hybridgen::Tokenizer::from_hf_files(file.path(), "");
    fuzz::exercise_tokenizer(*tok);
  } catch (const hybridgen::Error&) {
  }
  return 0;
}
