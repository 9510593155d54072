// Byte-level BPE tokenizer: loading (HF tokenizer.json + tokenizer_config.json, GGUF vocab),
// added/special tokens, the encode pipeline of HF `tokenizers` and decoding.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "tokenizer/bpe.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"
#include "util/check.h"
#include "util/json.h"

namespace hybridgen {

namespace {

using json = nlohmann::json;
using tok::BpeModel;
using tok::ChatTemplate;
using tok::PreTokenizer;
using tok::PreTokenizerStep;
using tok::SplitBehavior;

// Ids above this are rejected: they would only serve to make us allocate huge tables.
constexpr int64_t kMaxTokenId = (1 << 24) - 1;

// Names that end a generation turn in the families we serve, besides eos.
const char* const kEndOfGenerationNames[] = {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>",
                                             "<|endoftext|>", "<|eom_id|>"};

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool single_word = false;
};

// Byte trie over added-token contents: leftmost-longest matching, as HF's Aho-Corasick
// automaton (MatchKind::LeftmostLongest) does.
class TokenTrie {
 public:
  TokenTrie() : nodes_(1) {}
  bool empty() const { return nodes_.size() == 1; }
  void insert(const std::string& s, int value) {
    if (s.empty()) return;
    int n = 0;
    for (unsigned char c : s) {
      auto& ch = nodes_[n].children;
      auto it = std::lower_bound(
          ch.begin(), ch.end(), c,
          [](const std::pair<unsigned char, int>& e, unsigned char v) { return e.first < v; });
      if (it != ch.end() && it->first == c) {
        n = it->second;
      } else {
        const int next = static_cast<int>(nodes_.size());
        ch.insert(it, {c, next});
        nodes_.emplace_back();
        n = next;
      }
    }
    nodes_[n].value = value;
  }
  // The longest entry that starts at text[pos]: (value, length), or (-1, 0).
  std::pair<int, size_t> longest_at(std::string_view text, size_t pos) const {
    int n = 0;
    std::pair<int, size_t> best{-1, 0};
    for (size_t i = pos; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      const auto& ch = nodes_[n].children;
      auto it = std::lower_bound(
          ch.begin(), ch.end(), c,
          [](const std::pair<unsigned char, int>& e, unsigned char v) { return e.first < v; });
      if (it == ch.end() || it->first != c) break;
      n = it->second;
      if (nodes_[n].value >= 0) best = {nodes_[n].value, i - pos + 1};
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int>> children;
    int value = -1;
  };
  std::vector<Node> nodes_;
};

// Rust regex's \w (Unicode word character), used by HF's single_word check.
bool is_word_char(char32_t c) {
  static const auto re = tok::compiled_regex(
      R"(^[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]\z)", "tokenizer: word class");
  if (c < 0x80)
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  std::string s;
  tok::append_utf8(s, c);
  return re->search(s);
}

char32_t last_code_point(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  size_t j = i;
  return tok::next_code_point(s, j);
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open " + what);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(path + ": read error on " + what);
  return ss.str();
}

std::string squote(const std::string& s) { return "'" + s + "'"; }

class BpeTokenizer final : public Tokenizer {
 public:
  // ---- construction ------------------------------------------------------------------------
  static std::unique_ptr<BpeTokenizer> from_json(const std::string& path,
                                                 const std::string& config_path);
  static std::unique_ptr<BpeTokenizer> from_gguf(const GgufVocab& v);

  // ---- Tokenizer ---------------------------------------------------------------------------
  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override;
  std::string token_bytes(int32_t id) const override {
    if (id < 0 || id >= vocab_size() || !valid_[id]) return {};
    return bytes_[id];
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(bytes_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  bool is_end_of_generation(int32_t id) const override {
    return std::find(eog_.begin(), eog_.end(), id) != eog_.end();
  }
  bool has_chat_template() const override { return chat_.family() != ChatTemplate::Family::kNone; }
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt) const override {
    return chat_.render(messages, add_generation_prompt);
  }

 private:
  struct Segment {
    std::string_view text;
    int32_t id;  // -1: text to tokenize
  };

  int32_t token_to_id(const std::string& content) const {
    auto it = added_by_content_.find(content);
    if (it != added_by_content_.end()) return it->second;
    auto v = model_.vocab.find(content);
    return v == model_.vocab.end() ? -1 : v->second;
  }
  void add_token_slot(int32_t id) {
    if (id >= vocab_size()) {
      bytes_.resize(id + 1);
      valid_.resize(id + 1, 0);
      special_.resize(id + 1, 0);
    }
  }
  // After vocab, added tokens, bos/eos are known.
  void finish(const std::string& chat_template, const std::string& bos_text);
  void split_added(std::string_view text, const TokenTrie& trie, bool parse_special,
                   std::vector<Segment>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;

  BpeModel model_;
  std::vector<std::string> bytes_;  // per id: the bytes it decodes to
  std::vector<uint8_t> valid_;      // per id: the id names a token
  std::vector<uint8_t> special_;    // per id: a special added token (skip_special drops it)
  std::vector<AddedToken> added_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  TokenTrie raw_trie_;   // added tokens matched on the raw text (normalized == false)
  TokenTrie norm_trie_;  // added tokens matched on normalized text (normalized == true)
  bool nfc_ = false;
  PreTokenizer pre_;
  std::vector<int32_t> prefix_, suffix_;  // what the post-processor adds around a sequence
  int32_t bos_ = -1, eos_ = -1;
  std::vector<int32_t> eog_;
  ChatTemplate chat_;
};

// ---- encode --------------------------------------------------------------------------------

void BpeTokenizer::split_added(std::string_view s, const TokenTrie& trie, bool parse_special,
                               std::vector<Segment>& out) const {
  if (trie.empty() || s.empty()) {
    if (!s.empty()) out.push_back({s, -1});
    return;
  }
  // HF AddedVocabulary::find_matches.
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    auto [index, len] = trie.longest_at(s, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the automaton resumes after the match, whatever we do with it
    const AddedToken& t = added_[index];
    if (!parse_special && t.special) continue;
    if (t.single_word) {
      const bool start_space = start == 0 || !is_word_char(last_code_point(s.substr(0, start)));
      size_t k = stop;
      const bool stop_space = stop == s.size() || !is_word_char(tok::next_code_point(s, k));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t b = start;
      while (b > 0) {
        size_t p = b - 1;
        while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!tok::is_white_space(tok::next_code_point(s, q))) break;
        b = p;
      }
      start = std::max(b, start_offset);
    }
    if (t.rstrip) {
      while (stop < s.size()) {
        size_t q = stop;
        if (!tok::is_white_space(tok::next_code_point(s, q))) break;
        stop = q;
      }
    }
    if (start_offset < start) out.push_back({s.substr(start_offset, start - start_offset), -1});
    out.push_back({s.substr(start, stop - start), t.id});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back({s.substr(start_offset), -1});
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<std::string> words;
  pre_.run(text, words);
  for (const auto& w : words) model_.tokenize(w, out);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special,
                                          bool parse_special) const {
  const std::string clean = tok::sanitize_utf8(text);
  std::vector<int32_t> ids;
  if (add_special) ids = prefix_;
  std::vector<Segment> raw;
  split_added(clean, raw_trie_, parse_special, raw);
  std::vector<Segment> segs;
  for (const auto& seg : raw) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    const std::string normalized = nfc_ ? tok::nfc(seg.text) : std::string(seg.text);
    segs.clear();
    split_added(normalized, norm_trie_, parse_special, segs);
    for (const auto& s : segs) {
      if (s.id >= 0) {
        ids.push_back(s.id);
      } else {
        encode_text(s.text, ids);
      }
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || !valid_[id]) continue;
    if (skip_special && special_[id]) continue;
    out += bytes_[id];
  }
  return out;
}

void BpeTokenizer::finish(const std::string& chat_template, const std::string& bos_text) {
  model_.index_bytes();
  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& t = added_[i];
    add_token_slot(t.id);
    valid_[t.id] = 1;
    if (!tok::from_byte_level(t.content, bytes_[t.id])) bytes_[t.id] = t.content;
    special_[t.id] = t.special;
    added_by_content_[t.content] = t.id;
    if (t.normalized) {
      norm_trie_.insert(nfc_ ? tok::nfc(t.content) : t.content, static_cast<int>(i));
    } else {
      raw_trie_.insert(t.content, static_cast<int>(i));
    }
  }
  if (eos_ >= 0) eog_.push_back(eos_);
  // Only added/special tokens count: a plain vocabulary entry spelled "<|im_end|>" would be
  // ordinary text.
  for (const char* name : kEndOfGenerationNames) {
    auto it = added_by_content_.find(name);
    if (it != added_by_content_.end() &&
        std::find(eog_.begin(), eog_.end(), it->second) == eog_.end())
      eog_.push_back(it->second);
  }
  chat_ = ChatTemplate::parse(chat_template, bos_text);
}

// ---- tokenizer.json ------------------------------------------------------------------------

struct JsonCtx {
  const std::string& path;
  // Ids above this are refused. Vocabularies are dense (ids 0..n-1, a few gaps at most), so a
  // file's ids stay below its token count plus some slack; a sparse id would make the per-id
  // tables absurdly large (found by fuzz_tokenizer_json).
  int64_t max_id = kMaxTokenId;
  [[noreturn]] void error(const std::string& field, const std::string& what) const {
    fail(path + ": " + field + ": " + what);
  }
  const json& need(const json& obj, const char* key, const std::string& field) const {
    if (!obj.is_object()) error(field, "expected an object");
    auto it = obj.find(key);
    if (it == obj.end()) error(field + "." + key, "is missing");
    return *it;
  }
  bool get_bool(const json& obj, const char* key, const std::string& field, bool def) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return def;
    if (!it->is_boolean()) error(field + "." + key, "expected true or false");
    return it->get<bool>();
  }
  std::string get_string(const json& obj, const char* key, const std::string& field) const {
    const json& v = need(obj, key, field);
    if (!v.is_string()) error(field + "." + key, "expected a string");
    return v.get<std::string>();
  }
  int32_t get_id(const json& v, const std::string& field) const {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > max_id)
      error(field, "expected a token id (an integer in [0, " + std::to_string(max_id) +
                       "]: the file's token count plus 1024)");
    return static_cast<int32_t>(v.get<int64_t>());
  }
};

std::string check_utf8(const JsonCtx& c, const std::string& s, const std::string& field) {
  if (!tok::is_valid_utf8(s)) c.error(field, "is not valid UTF-8");
  return s;
}

SplitBehavior parse_behavior(const JsonCtx& c, const json& v, const std::string& field) {
  if (!v.is_string()) c.error(field, "expected a string");
  const std::string b = v.get<std::string>();
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  c.error(field, "unknown behavior " + squote(b) +
                     " (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or "
                     "Contiguous)");
}

void parse_pre_tokenizer(const JsonCtx& c, const json& p, const std::string& field,
                         PreTokenizer& out, bool& byte_level) {
  if (p.is_null()) return;
  const std::string type = c.get_string(p, "type", field);
  if (type == "Sequence") {
    const json& list = c.need(p, "pretokenizers", field);
    if (!list.is_array()) c.error(field + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      parse_pre_tokenizer(c, list[i], field + ".pretokenizers[" + std::to_string(i) + "]", out,
                          byte_level);
  } else if (type == "ByteLevel") {
    PreTokenizerStep s;
    s.kind = PreTokenizerStep::Kind::kByteLevel;
    s.add_prefix_space = c.get_bool(p, "add_prefix_space", field, true);
    if (c.get_bool(p, "use_regex", field, true))
      s.regex = tok::compiled_regex(tok::kGpt2Pattern, c.path + ": " + field);
    out.steps.push_back(std::move(s));
    byte_level = true;
  } else if (type == "Split") {
    PreTokenizerStep s;
    const json& pat = c.need(p, "pattern", field);
    if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
      s.regex = tok::compiled_regex(
          check_utf8(c, pat["Regex"].get<std::string>(), field + ".pattern.Regex"),
          c.path + ": " + field + ".pattern.Regex");
    } else if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
      s.literal = check_utf8(c, pat["String"].get<std::string>(), field + ".pattern.String");
    } else {
      c.error(field + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    s.behavior = parse_behavior(c, c.need(p, "behavior", field), field + ".behavior");
    s.invert = c.get_bool(p, "invert", field, false);
    out.steps.push_back(std::move(s));
  } else if (type == "Digits") {
    PreTokenizerStep s;
    // Rust's char::is_numeric is the N categories: each digit alone, or runs of them.
    const bool individual = c.get_bool(p, "individual_digits", field, false);
    s.regex = tok::compiled_regex(individual ? R"(\p{N})" : R"(\p{N}+)", c.path + ": " + field);
    out.steps.push_back(std::move(s));
  } else {
    c.error(field + ".type", "pre-tokenizer " + squote(type) +
                                 " is not supported (supported: ByteLevel, Split, Digits, "
                                 "Sequence)");
  }
}

void parse_normalizer(const JsonCtx& c, const json& n, const std::string& field, bool& nfc) {
  if (n.is_null()) return;
  const std::string type = c.get_string(n, "type", field);
  if (type == "NFC") {
    nfc = true;
  } else if (type == "Sequence") {
    const json& list = c.need(n, "normalizers", field);
    if (!list.is_array()) c.error(field + ".normalizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      parse_normalizer(c, list[i], field + ".normalizers[" + std::to_string(i) + "]", nfc);
  } else {
    c.error(field + ".type",
            "normalizer " + squote(type) + " is not supported (supported: NFC, Sequence)");
  }
}

// Ids the post-processor puts before and after a single sequence.
void parse_post_processor(const JsonCtx& c, const json& p, const std::string& field,
                          std::vector<int32_t>& prefix, std::vector<int32_t>& suffix) {
  if (p.is_null()) return;
  const std::string type = c.get_string(p, "type", field);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    const json& list = c.need(p, "processors", field);
    if (!list.is_array()) c.error(field + ".processors", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      parse_post_processor(c, list[i], field + ".processors[" + std::to_string(i) + "]", prefix,
                           suffix);
    return;
  }
  if (type == "TemplateProcessing") {
    const json& single = c.need(p, "single", field);
    if (!single.is_array()) c.error(field + ".single", "expected an array");
    const json& specials = c.need(p, "special_tokens", field);
    bool seen_sequence = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const std::string f = field + ".single[" + std::to_string(i) + "]";
      const json& item = single[i];
      if (item.is_object() && item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      if (!item.is_object() || !item.contains("SpecialToken"))
        c.error(f, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      const std::string name = c.get_string(item["SpecialToken"], "id", f + ".SpecialToken");
      if (!specials.is_object() || !specials.contains(name))
        c.error(field + ".special_tokens", "has no entry " + squote(name) + " used by " + f);
      const json& ids = c.need(specials[name], "ids", field + ".special_tokens." + name);
      if (!ids.is_array()) c.error(field + ".special_tokens." + name + ".ids", "expected an array");
      for (const auto& id : ids) {
        (seen_sequence ? suffix : prefix)
            .push_back(c.get_id(id, field + ".special_tokens." + name + ".ids"));
      }
    }
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    for (const char* key : {"cls", "sep"}) {
      const json& v = c.need(p, key, field);
      if (!v.is_array() || v.size() != 2) c.error(field + "." + key, "expected [token, id]");
      (std::string(key) == "cls" ? prefix : suffix).push_back(c.get_id(v[1], field + "." + key));
    }
    return;
  }
  c.error(field + ".type", "post-processor " + squote(type) +
                               " is not supported (supported: TemplateProcessing, ByteLevel, "
                               "RobertaProcessing, BertProcessing, Sequence)");
}

void check_decoder(const JsonCtx& c, const json& d, const std::string& field) {
  if (d.is_null()) return;
  const std::string type = c.get_string(d, "type", field);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const json& list = c.need(d, "decoders", field);
    if (!list.is_array()) c.error(field + ".decoders", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      check_decoder(c, list[i], field + ".decoders[" + std::to_string(i) + "]");
    return;
  }
  c.error(field + ".type",
          "decoder " + squote(type) + " is not supported (byte-level BPE decodes with ByteLevel)");
}

// bos_token / eos_token of tokenizer_config.json: a string, {"content": ...} or null.
std::string config_token(const JsonCtx& c, const json& cfg, const char* key, bool& present) {
  present = false;
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return {};
  present = true;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  c.error(key, "expected a string or an object with \"content\"");
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_json(const std::string& path,
                                                      const std::string& config_path) {
  auto t = std::make_unique<BpeTokenizer>();
  json j;
  {
    const std::string text = read_file(path, "tokenizer.json");
    j = parse_json(text, path);
  }
  JsonCtx c{path};
  if (!j.is_object()) c.error("(top level)", "expected a JSON object");
  const json& m = c.need(j, "model", "(top level)");
  if (!m.is_object()) c.error("model", "expected an object");
  {
    int64_t n_tokens = 1024;
    if (m.contains("vocab")) n_tokens += static_cast<int64_t>(m["vocab"].size());
    if (j.contains("added_tokens")) n_tokens += static_cast<int64_t>(j["added_tokens"].size());
    c.max_id = std::min(kMaxTokenId, n_tokens);
  }
  std::string type = "BPE";
  if (m.contains("type")) {
    if (!m["type"].is_string()) c.error("model.type", "expected a string");
    type = m["type"].get<std::string>();
  }
  if (type != "BPE")
    c.error("model.type", squote(type) + " is not supported (only byte-level \"BPE\")");
  if (m.contains("dropout") && !m["dropout"].is_null() &&
      !(m["dropout"].is_number() && m["dropout"].get<double>() == 0.0))
    c.error("model.dropout", "BPE dropout is not supported for inference (expected null)");
  if (c.get_bool(m, "byte_fallback", "model", false))
    c.error("model.byte_fallback", "byte_fallback (SentencePiece-style BPE) is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() &&
        !(m[key].is_string() && m[key].get<std::string>().empty()))
      c.error(std::string("model.") + key, "must be null or empty for byte-level BPE");
  }
  t->model_.ignore_merges = c.get_bool(m, "ignore_merges", "model", false);
  t->model_.fuse_unk = c.get_bool(m, "fuse_unk", "model", false);

  // vocab
  const json& vocab = c.need(m, "vocab", "model");
  if (!vocab.is_object()) c.error("model.vocab", "expected an object {token: id}");
  std::vector<std::string> token_of;  // id -> byte-level spelling
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = c.get_id(it.value(), "model.vocab[" + squote(it.key()) + "]");
    check_utf8(c, it.key(), "model.vocab key");
    t->model_.vocab[it.key()] = id;
    t->add_token_slot(id);
    if (!t->valid_[id]) {
      t->valid_[id] = 1;
      if (!tok::from_byte_level(it.key(), t->bytes_[id])) t->bytes_[id] = it.key();
      if (token_of.size() <= static_cast<size_t>(id)) token_of.resize(id + 1);
      token_of[id] = it.key();
    }
  }
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    if (!m["unk_token"].is_string()) c.error("model.unk_token", "expected a string or null");
    auto u = t->model_.vocab.find(m["unk_token"].get<std::string>());
    if (u == t->model_.vocab.end())
      c.error("model.unk_token",
              squote(m["unk_token"].get<std::string>()) + " is not in model.vocab");
    t->model_.unk_id = u->second;
  }

  // merges: "a b" strings or [a, b] pairs
  const json& merges = c.need(m, "merges", "model");
  if (!merges.is_array()) c.error("model.merges", "expected an array");
  t->model_.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string f = "model.merges[" + std::to_string(i) + "]";
    std::string a, b;
    const json& e = merges[i];
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos) c.error(f, squote(s) + " is not of the form \"a b\"");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      c.error(f, "expected \"a b\" or [\"a\", \"b\"]");
    }
    auto ia = t->model_.vocab.find(a), ib = t->model_.vocab.find(b);
    if (ia == t->model_.vocab.end()) c.error(f, "token " + squote(a) + " is not in model.vocab");
    if (ib == t->model_.vocab.end()) c.error(f, "token " + squote(b) + " is not in model.vocab");
    auto in = t->model_.vocab.find(a + b);
    if (in == t->model_.vocab.end())
      c.error(f, "merged token " + squote(a + b) + " is not in model.vocab");
    // Later duplicates win, as in HF's HashMap.
    t->model_.merges[BpeModel::key(ia->second, ib->second)] = {static_cast<int32_t>(i), in->second};
  }

  // added tokens
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    const json& added = j["added_tokens"];
    if (!added.is_array()) c.error("added_tokens", "expected an array");
    for (size_t i = 0; i < added.size(); ++i) {
      const std::string f = "added_tokens[" + std::to_string(i) + "]";
      AddedToken a;
      a.id = c.get_id(c.need(added[i], "id", f), f + ".id");
      a.content = check_utf8(c, c.get_string(added[i], "content", f), f + ".content");
      if (a.content.empty()) c.error(f + ".content", "is empty");
      a.special = c.get_bool(added[i], "special", f, false);
      a.lstrip = c.get_bool(added[i], "lstrip", f, false);
      a.rstrip = c.get_bool(added[i], "rstrip", f, false);
      a.normalized = c.get_bool(added[i], "normalized", f, !a.special);
      a.single_word = c.get_bool(added[i], "single_word", f, false);
      t->added_.push_back(std::move(a));
    }
  }

  bool byte_level = false;
  parse_normalizer(c, j.contains("normalizer") ? j["normalizer"] : json(), "normalizer", t->nfc_);
  parse_pre_tokenizer(c, j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), "pre_tokenizer",
                      t->pre_, byte_level);
  if (!byte_level)
    c.error("pre_tokenizer", "has no ByteLevel step: only byte-level BPE is supported");
  parse_post_processor(c, j.contains("post_processor") ? j["post_processor"] : json(),
                       "post_processor", t->prefix_, t->suffix_);
  check_decoder(c, j.contains("decoder") ? j["decoder"] : json(), "decoder");
  for (int32_t id : t->prefix_) t->add_token_slot(id);
  for (int32_t id : t->suffix_) t->add_token_slot(id);

  // Register added tokens now so that token_to_id sees them.
  for (const auto& a : t->added_) t->added_by_content_[a.content] = a.id;

  // tokenizer_config.json
  std::string chat_template, bos_text;
  bool have_bos = false, have_eos = false, have_add_bos = false, add_bos = false;
  bool bos_null = false, eos_null = false;  // the config says null
  if (!config_path.empty()) {
    json cfg;
    const std::string text = read_file(config_path, "tokenizer_config.json");
    cfg = parse_json(text, config_path);
    const JsonCtx cc{config_path};
    if (!cfg.is_object()) cc.error("(top level)", "expected a JSON object");
    bos_null = cfg.contains("bos_token") && cfg["bos_token"].is_null();
    eos_null = cfg.contains("eos_token") && cfg["eos_token"].is_null();
    bos_text = config_token(cc, cfg, "bos_token", have_bos);
    if (have_bos) {
      t->bos_ = t->token_to_id(bos_text);
      if (t->bos_ < 0) cc.error("bos_token", squote(bos_text) + " is not a token of " + path);
    }
    const std::string eos_text = config_token(cc, cfg, "eos_token", have_eos);
    if (have_eos) {
      t->eos_ = t->token_to_id(eos_text);
      if (t->eos_ < 0) cc.error("eos_token", squote(eos_text) + " is not a token of " + path);
    }
    if (cfg.contains("add_bos_token") && !cfg["add_bos_token"].is_null()) {
      if (!cfg["add_bos_token"].is_boolean()) cc.error("add_bos_token", "expected true or false");
      have_add_bos = true;
      add_bos = cfg["add_bos_token"].get<bool>();
    }
    if (cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
      const json& ct = cfg["chat_template"];
      if (ct.is_string()) {
        chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {
        for (size_t i = 0; i < ct.size(); ++i) {
          const std::string f = "chat_template[" + std::to_string(i) + "]";
          const std::string name = cc.get_string(ct[i], "name", f);
          const std::string body = cc.get_string(ct[i], "template", f);
          if (name == "default" || (i == 0)) chat_template = body;
          if (name == "default") break;
        }
      } else {
        cc.error("chat_template", "expected a string or a list of {name, template}");
      }
    }
  }
  // Not named by a config (an explicit null means none): bos from the post-processor, then
  // bos/eos by the added-token names of the families we know.
  auto added_id = [&](const char* name) {
    auto it = t->added_by_content_.find(name);
    return it == t->added_by_content_.end() ? -1 : it->second;
  };
  if (!have_bos && !bos_null) {
    if (t->prefix_.size() == 1) t->bos_ = t->prefix_[0];
    for (const char* name : {"<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>"}) {
      if (t->bos_ >= 0) break;
      t->bos_ = added_id(name);
    }
  }
  if (!have_eos && !eos_null) {
    for (const char* name :
         {"<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>", "<|eot_id|>"}) {
      if (t->eos_ >= 0) break;
      t->eos_ = added_id(name);
    }
  }
  // The chat template's bos_token is the config's bos_token only: without one, transformers
  // renders no BOS text either (this line used to guess it from the vocabulary, before the
  // added tokens had their bytes, and rendered "" anyway: fuzz_chat_template's cross-check).
  // add_bos_token in the config overrides the post-processor's BOS (as transformers' Llama
  // tokenizers rebuild their post-processor from it).
  if (have_add_bos) {
    const bool has = !t->prefix_.empty() && t->prefix_[0] == t->bos_ && t->bos_ >= 0;
    if (add_bos && !has) {
      if (t->bos_ < 0) fail(config_path + ": add_bos_token is true but there is no bos_token");
      t->prefix_.insert(t->prefix_.begin(), t->bos_);
    } else if (!add_bos && has) {
      t->prefix_.erase(t->prefix_.begin());
    }
  }
  t->finish(chat_template, bos_text);
  for (int32_t id : t->prefix_)
    if (!t->valid_[id])
      c.error("post_processor", "adds id " + std::to_string(id) + " which names no token");
  for (int32_t id : t->suffix_)
    if (!t->valid_[id])
      c.error("post_processor", "adds id " + std::to_string(id) + " which names no token");
  return t;
}

// ---- GGUF ----------------------------------------------------------------------------------

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_gguf(const GgufVocab& v) {
  auto t = std::make_unique<BpeTokenizer>();
  if (v.model != "gpt2")
    fail("GGUF tokenizer.ggml.model: " + squote(v.model) +
         " is not supported (only \"gpt2\", byte-level BPE)");
  if (v.tokens.empty()) fail("GGUF tokenizer.ggml.tokens: is empty");
  if (v.tokens.size() > static_cast<size_t>(kMaxTokenId))
    fail("GGUF tokenizer.ggml.tokens: too many tokens (" + std::to_string(v.tokens.size()) + ")");
  if (!v.token_types.empty() && v.token_types.size() != v.tokens.size())
    fail("GGUF tokenizer.ggml.token_type: has " + std::to_string(v.token_types.size()) +
         " entries for " + std::to_string(v.tokens.size()) + " tokens");
  const int32_t n = static_cast<int32_t>(v.tokens.size());
  for (auto [name, id] : {std::pair<const char*, int32_t>{"bos_token_id", v.bos_id},
                          {"eos_token_id", v.eos_id},
                          {"unknown_token_id", v.unk_id},
                          {"padding_token_id", v.pad_id}}) {
    if (id < -1 || id >= n)
      fail(std::string("GGUF tokenizer.ggml.") + name + ": " + std::to_string(id) +
           " is not a token id (vocabulary of " + std::to_string(n) + ")");
  }

  t->add_token_slot(n - 1);
  for (int32_t id = 0; id < n; ++id) {
    const std::string& s = v.tokens[id];
    if (!tok::is_valid_utf8(s))
      fail("GGUF tokenizer.ggml.tokens[" + std::to_string(id) + "]: is not valid UTF-8");
    t->model_.vocab[s] = id;  // later duplicates win, as in llama.cpp's token_to_id
    t->valid_[id] = 1;
    if (!tok::from_byte_level(s, t->bytes_[id])) t->bytes_[id] = s;
    const int32_t type = v.token_types.empty() ? 1 : v.token_types[id];
    if ((type == 3 || type == 4) && !s.empty()) {
      AddedToken a;
      a.content = s;
      a.id = id;
      a.special = type == 3;  // control: special; user-defined: a plain added token
      a.normalized = false;
      t->added_.push_back(std::move(a));
    }
  }
  t->model_.merges.reserve(v.merges.size());
  for (size_t i = 0; i < v.merges.size(); ++i) {
    const std::string f = "GGUF tokenizer.ggml.merges[" + std::to_string(i) + "]";
    const std::string& s = v.merges[i];
    const size_t sp = s.find(' ', 1);  // as llama.cpp: a token may start with a space
    if (sp == std::string::npos) fail(f + ": " + squote(s) + " is not of the form \"a b\"");
    const std::string a = s.substr(0, sp), b = s.substr(sp + 1);
    auto ia = t->model_.vocab.find(a), ib = t->model_.vocab.find(b);
    if (ia == t->model_.vocab.end())
      fail(f + ": token " + squote(a) + " is not in tokenizer.ggml.tokens");
    if (ib == t->model_.vocab.end())
      fail(f + ": token " + squote(b) + " is not in tokenizer.ggml.tokens");
    auto in = t->model_.vocab.find(a + b);
    if (in == t->model_.vocab.end())
      fail(f + ": merged token " + squote(a + b) + " is not in tokenizer.ggml.tokens");
    // First occurrence wins, as llama.cpp's bpe_ranks.emplace.
    t->model_.merges.emplace(BpeModel::key(ia->second, ib->second),
                             BpeModel::Merge{static_cast<int32_t>(i), in->second});
  }

  // Pre-tokenizer by llama.cpp pre type (HF's spelling of the same regexes).
  const std::string& pre = v.pre;
  const std::string where = "GGUF tokenizer.ggml.pre " + squote(pre);
  auto split = [&](const char* pattern) {
    PreTokenizerStep s;
    s.regex = tok::compiled_regex(pattern, where);
    t->pre_.steps.push_back(std::move(s));
  };
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" ||
      pre == "codeshell" || pre == "exaone" || pre == "minerva") {
    split(R"(\p{N})");
    split(tok::kGpt2Pattern);
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "dbrx" ||
             pre == "smaug-bpe" || pre == "falcon3") {
    split(tok::kLlama3Pattern);
    t->model_.ignore_merges = true;  // llama.cpp sets it for the LLAMA3 pre type
  } else if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "stablelm2") {
    split(tok::kQwen2Pattern);
    // Qwen2's tokenizer.json normalizes to NFC; so do we, to give the ids the model was
    // trained on (llama.cpp does not; it differs only on text that is not in NFC).
    t->nfc_ = pre == "qwen2" || pre == "deepseek-r1-qwen";
  } else if (pre == "gpt-2" || pre == "gpt2" || pre == "mpt" || pre == "olmo" || pre == "jais") {
    split(tok::kGpt2Pattern);
  } else if (pre == "default" || pre.empty()) {
    // llama.cpp's default BPE pre-tokenization.
    split(R"([\p{P}\$\+<=>\^~\|]+)");
    split(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))");
    split(R"(\p{N}+)");
    split(R"([0-9][0-9][0-9])");
  } else {
    fail("GGUF tokenizer.ggml.pre: " + squote(pre) +
         " is not supported (supported: smollm, llama-bpe/llama3, qwen2, gpt-2, default and "
         "their llama.cpp aliases)");
  }
  // The BPE words are byte-level symbols in every case.
  PreTokenizerStep bl;
  bl.kind = PreTokenizerStep::Kind::kByteLevel;
  t->pre_.steps.push_back(std::move(bl));

  t->bos_ = v.bos_id;
  t->eos_ = v.eos_id;
  if (v.add_bos) {
    if (v.bos_id < 0) fail("GGUF tokenizer.ggml.add_bos_token is true but bos_token_id is not set");
    t->prefix_.push_back(v.bos_id);
  }
  for (const auto& a : t->added_) t->added_by_content_[a.content] = a.id;
  const std::string bos_text = v.bos_id >= 0 ? v.tokens[v.bos_id] : std::string();
  t->finish(v.chat_template, bos_text);
  return t;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_hf_files(const std::string& tokenizer_json_path,
                                                    const std::string& tokenizer_config_json_path) {
  return BpeTokenizer::from_json(tokenizer_json_path, tokenizer_config_json_path);
}

std::unique_ptr<Tokenizer> Tokenizer::from_gguf_vocab(const GgufVocab& vocab) {
  return BpeTokenizer::from_gguf(vocab);
}

std::string StreamDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_bytes(id);
  const size_t hold = tok::incomplete_utf8_tail(pending_);
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StreamDecoder::flush() { return std::exchange(pending_, std::string()); }

}  // namespace hybridgen
