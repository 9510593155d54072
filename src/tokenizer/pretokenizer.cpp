#include "tokenizer/pretokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <map>
#include <mutex>

#include "util/check.h"

namespace hybridgen::tok {

// GPT-2's pattern, as HF's ByteLevel pre-tokenizer spells it.
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama-3's Split pattern from its tokenizer.json (llama.cpp's LLAMA3 pre type).
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2's Split pattern (single digits) from its tokenizer.json (llama.cpp's QWEN2 pre type).
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

// Per-thread match context with a JIT stack larger than PCRE2's 32 KiB default, so that long
// runs of whitespace or letters never hit the JIT stack limit.
struct MatchScratch {
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchScratch() {
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (context && stack) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    if (stack) pcre2_jit_stack_free(stack);
    if (context) pcre2_match_context_free(context);
  }
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

size_t utf8_len(unsigned char b) { return b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2; }

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) : pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (!code) {
    fail(where + ": regex does not compile at offset " + std::to_string(err_off) + " (" +
         pcre2_message(err) + "): " + pattern);
  }
  // JIT is an optimisation: without it (unsupported CPU) the interpreter still matches.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  HG_CHECK(md, "tokenizer: out of memory for regex match data");
  MatchScratch& s = scratch();
  size_t off = 0;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  while (off < text.size()) {
    int rc = pcre2_match(code, subject, text.size(), off, PCRE2_NO_UTF_CHECK, md, s.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      fail("tokenizer: regex match failed (" + pcre2_message(rc) + ") for pattern " + pattern_);
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (e == b) {  // empty match: step over one code point
      if (b >= text.size()) break;
      off = b + utf8_len(static_cast<unsigned char>(text[b]));
      continue;
    }
    out.emplace_back(b, e);
    off = e;
  }
  pcre2_match_data_free(md);
}

bool Regex::search(std::string_view text) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  HG_CHECK(md, "tokenizer: out of memory for regex match data");
  int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                       PCRE2_NO_UTF_CHECK, md, scratch().context);
  pcre2_match_data_free(md);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail("tokenizer: regex match failed (" + pcre2_message(rc) + ") for " + pattern_);
  return true;
}

std::shared_ptr<const Regex> compiled_regex(const std::string& pattern, const std::string& where) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<const Regex>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[pattern];
  if (auto p = slot.lock()) return p;
  auto p = std::make_shared<const Regex>(pattern, where);
  slot = p;
  return p;
}

namespace {

struct Piece {
  size_t begin, end;
  bool is_match;
};

// HF NormalizedString::split: pieces covering `text`, then the behavior, then empties dropped.
void split_text(const PreTokenizerStep& step, const std::string& text,
                std::vector<std::string>& out) {
  std::vector<std::pair<size_t, size_t>> matches;
  if (step.regex) {
    step.regex->find_all(text, matches);
  } else if (!step.literal.empty()) {
    for (size_t pos = text.find(step.literal); pos != std::string::npos;
         pos = text.find(step.literal, pos + step.literal.size())) {
      matches.emplace_back(pos, pos + step.literal.size());
    }
  }
  std::vector<Piece> pieces;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) pieces.push_back({prev, b, false});
    pieces.push_back({b, e, true});
    prev = e;
  }
  if (prev != text.size()) pieces.push_back({prev, text.size(), false});
  if (step.invert)
    for (auto& p : pieces) p.is_match = !p.is_match;

  std::vector<Piece> res;  // is_match here means "remove"
  switch (step.behavior) {
    case SplitBehavior::kRemoved:
      for (const auto& p : pieces) res.push_back({p.begin, p.end, p.is_match});
      break;
    case SplitBehavior::kIsolated:
      for (const auto& p : pieces) res.push_back({p.begin, p.end, false});
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& p : pieces) {
        if (p.is_match && !previous_match && !res.empty()) {
          res.back().end = p.end;
        } else {
          res.push_back({p.begin, p.end, false});
        }
        previous_match = p.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
        if (it->is_match && !previous_match && !res.empty()) {
          res.back().begin = it->begin;
        } else {
          res.push_back({it->begin, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& p : pieces) {
        if (p.is_match == previous_match && !res.empty()) {
          res.back().end = p.end;
        } else {
          res.push_back({p.begin, p.end, false});
        }
        previous_match = p.is_match;
      }
      break;
    }
  }
  for (const auto& p : res) {
    if (!p.is_match && p.end > p.begin) out.emplace_back(text.substr(p.begin, p.end - p.begin));
  }
}

}  // namespace

void PreTokenizer::run(std::string_view text, std::vector<std::string>& words) const {
  if (text.empty()) return;
  std::vector<std::string> cur{std::string(text)}, next;
  for (const auto& step : steps) {
    next.clear();
    for (auto& piece : cur) {
      if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
        if (step.add_prefix_space && piece[0] != ' ') piece.insert(piece.begin(), ' ');
        if (step.regex) {
          PreTokenizerStep iso;
          iso.regex = step.regex;
          split_text(iso, piece, next);
        } else {
          next.push_back(std::move(piece));
        }
      } else {
        split_text(step, piece, next);
      }
    }
    cur.swap(next);
  }
  for (auto& w : cur) words.push_back(std::move(w));
}

}  // namespace hybridgen::tok
