// Pre-tokenizers: how text is cut into words before BPE, as HF `tokenizers` does it (Split,
// Digits, ByteLevel, Sequence) and as llama.cpp does it for GGUF `tokenizer.ggml.pre` types.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hybridgen::tok {

// A PCRE2 pattern compiled with UTF + UCP (Unicode properties for \s, \w, \d, case folding)
// and JIT. Thread-safe: matching allocates its match data per call.
class Regex {
 public:
  // Throws hybridgen::Error with `where` and the PCRE2 message if the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches, left to right, as [begin, end) byte offsets. Empty matches are
  // skipped. PRECOND: text is valid UTF-8.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
  // True if the pattern matches somewhere in text.
  bool search(std::string_view text) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  std::string pattern_;
};

// HF SplitDelimiterBehavior.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// One step of a pre-tokenizer sequence.
struct PreTokenizerStep {
  enum class Kind {
    kSplit,      // regex (or literal) split with a behavior, optionally inverted
    kByteLevel,  // optional prefix space, then the GPT-2 regex split when use_regex
  };
  Kind kind = Kind::kSplit;
  std::shared_ptr<const Regex> regex;  // kSplit with a regex; kByteLevel with use_regex
  std::string literal;                 // kSplit with a String pattern (regex == nullptr)
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel
};

class PreTokenizer {
 public:
  std::vector<PreTokenizerStep> steps;

  // Cuts `text` (valid UTF-8) into words, appended to `words` (never empty strings).
  void run(std::string_view text, std::vector<std::string>& words) const;
};

// The regexes HF and llama.cpp use.
extern const char* const kGpt2Pattern;    // GPT-2, SmolLM (ByteLevel use_regex)
extern const char* const kLlama3Pattern;  // Llama-3
extern const char* const kQwen2Pattern;   // Qwen2 / Qwen2.5 / Qwen3

// Shared compiled instance of a pattern (compiled once per process).
std::shared_ptr<const Regex> compiled_regex(const std::string& pattern, const std::string& where);

}  // namespace hybridgen::tok
