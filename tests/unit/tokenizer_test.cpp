// Tokenizer tests: ids must equal HF `tokenizers` on the corpus (golden files made by
// tests/scripts/make_tokenizer_golden.py, see tests/data/tokenizers/README.md), chat templates
// must equal transformers' rendering, and malformed inputs must fail naming file and field.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "hybridgen/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/unicode.h"

namespace hybridgen {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kDir = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/tokenizers";

json read_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

std::string b64decode(const std::string& in) {
  static const std::string chars =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  int val = 0, bits = -8;
  for (char c : in) {
    if (c == '=') break;
    const auto p = chars.find(c);
    if (p == std::string::npos) continue;
    val = (val << 6) + static_cast<int>(p);
    bits += 6;
    if (bits >= 0) {
      out.push_back(static_cast<char>((val >> bits) & 0xFF));
      bits -= 8;
    }
  }
  return out;
}

struct CorpusText {
  std::string bytes;     // what is fed to encode
  std::string replaced;  // Python's bytes.decode("utf-8", "replace")
  std::string nfc;       // unicodedata.normalize("NFC", replaced)
  bool valid = true;
};

const std::vector<CorpusText>& corpus() {
  static const std::vector<CorpusText> c = [] {
    std::vector<CorpusText> out;
    for (const auto& e : read_json(kDir + "/corpus.json")) {
      CorpusText t;
      if (e.contains("b64")) {
        t.bytes = b64decode(e["b64"].get<std::string>());
        t.replaced = e["replaced"].get<std::string>();
        t.valid = false;
      } else {
        t.bytes = t.replaced = e["text"].get<std::string>();
      }
      t.nfc = e.contains("nfc") ? e["nfc"].get<std::string>() : t.replaced;
      out.push_back(std::move(t));
    }
    return out;
  }();
  return c;
}

std::string show(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out.size() > 120 ? out.substr(0, 120) + "..." : out;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  return out + "]";
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// Every corpus text, three ways: add_special on; off; off with special tokens as text.
void expect_golden(const Tokenizer& tk, const std::string& golden_path) {
  const json g = read_json(golden_path);
  const auto prefix = ids_of(g["prefix"]), suffix = ids_of(g["suffix"]);
  int checked = 0;
  for (const auto& c : g["cases"]) {
    const size_t i = c["i"].get<size_t>();
    ASSERT_LT(i, corpus().size());
    const std::string& text = corpus()[i].bytes;
    const auto ids = ids_of(c["ids"]);
    // Without "bare", add_special=false gives ids without the post-processor's prefix/suffix.
    std::vector<int32_t> bare;
    if (c.contains("bare")) {
      bare = ids_of(c["bare"]);
    } else {
      ASSERT_GE(ids.size(), prefix.size() + suffix.size()) << golden_path << " case " << i;
      ASSERT_TRUE(std::equal(prefix.begin(), prefix.end(), ids.begin()));
      ASSERT_TRUE(std::equal(suffix.rbegin(), suffix.rend(), ids.rbegin()));
      bare.assign(ids.begin() + prefix.size(), ids.end() - suffix.size());
    }
    const auto plain = c.contains("plain") ? ids_of(c["plain"]) : bare;
    auto got = tk.encode(text, true, true);
    EXPECT_EQ(got, ids) << golden_path << " case " << i << " \"" << show(text) << "\"\n got  "
                        << show(got) << "\n want " << show(ids);
    got = tk.encode(text, false, true);
    EXPECT_EQ(got, bare) << golden_path << " case " << i << " (add_special=false) \"" << show(text)
                         << "\"";
    got = tk.encode(text, false, false);
    EXPECT_EQ(got, plain) << golden_path << " case " << i << " (parse_special=false) \""
                          << show(text) << "\"";
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(corpus().size())) << golden_path;
}

std::unique_ptr<Tokenizer> load_hf(const std::string& name, bool with_config = true) {
  const std::string dir = kDir + "/" + name;
  return Tokenizer::from_hf_files(dir + "/tokenizer.json",
                                  with_config ? dir + "/tokenizer_config.json" : "");
}

// A GgufVocab with the same vocabulary as an HF tokenizer.json: ids kept (holes in the
// reduced vocabularies become unused tokens), added special tokens as control (3), other added
// tokens as user-defined (4).
GgufVocab gguf_from_json(const std::string& path, const std::string& pre) {
  const json j = read_json(path);
  GgufVocab v;
  v.model = "gpt2";
  v.pre = pre;
  int32_t n = 0;
  for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it)
    n = std::max(n, it.value().get<int32_t>() + 1);
  for (const auto& a : j["added_tokens"]) n = std::max(n, a["id"].get<int32_t>() + 1);
  v.tokens.resize(n);
  v.token_types.assign(n, 5);
  for (int32_t i = 0; i < n; ++i) v.tokens[i] = "<unused_hole_" + std::to_string(i) + ">";
  for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it) {
    v.tokens[it.value().get<int32_t>()] = it.key();
    v.token_types[it.value().get<int32_t>()] = 1;
  }
  for (const auto& a : j["added_tokens"]) {
    const int32_t id = a["id"].get<int32_t>();
    v.tokens[id] = a["content"].get<std::string>();
    v.token_types[id] = a["special"].get<bool>() ? 3 : 4;
  }
  for (const auto& m : j["model"]["merges"]) {
    v.merges.push_back(m.is_string() ? m.get<std::string>()
                                     : m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  return v;
}

int32_t token_id(const GgufVocab& v, const std::string& s) {
  for (size_t i = 0; i < v.tokens.size(); ++i)
    if (v.tokens[i] == s) return static_cast<int32_t>(i);
  throw std::runtime_error("no token " + s);
}

// ---- a minimal GGUF metadata reader (the test's own, independent of src/model) ------------

struct GgufReader {
  std::ifstream f;
  template <typename T>
  T pod() {
    T v{};
    f.read(reinterpret_cast<char*>(&v), sizeof(T));
    if (!f) throw std::runtime_error("GGUF: truncated");
    return v;
  }
  std::string str() {
    const auto n = pod<uint64_t>();
    if (n > (1u << 30)) throw std::runtime_error("GGUF: string too long");
    std::string s(n, '\0');
    f.read(s.data(), static_cast<std::streamsize>(n));
    if (!f) throw std::runtime_error("GGUF: truncated");
    return s;
  }
  // Reads a value of `type`; strings and integers are returned through the out-params.
  void value(uint32_t type, std::vector<std::string>* strs, std::vector<int64_t>* ints) {
    switch (type) {
      case 0:
        ints->push_back(pod<uint8_t>());
        break;
      case 1:
        ints->push_back(pod<int8_t>());
        break;
      case 2:
        ints->push_back(pod<uint16_t>());
        break;
      case 3:
        ints->push_back(pod<int16_t>());
        break;
      case 4:
        ints->push_back(pod<uint32_t>());
        break;
      case 5:
        ints->push_back(pod<int32_t>());
        break;
      case 6:
        pod<float>();
        break;
      case 7:
        ints->push_back(pod<uint8_t>());
        break;
      case 8:
        strs->push_back(str());
        break;
      case 9: {
        const auto et = pod<uint32_t>();
        const auto n = pod<uint64_t>();
        for (uint64_t i = 0; i < n; ++i) value(et, strs, ints);
        break;
      }
      case 10:
        ints->push_back(static_cast<int64_t>(pod<uint64_t>()));
        break;
      case 11:
        ints->push_back(pod<int64_t>());
        break;
      case 12:
        pod<double>();
        break;
      default:
        throw std::runtime_error("GGUF: unknown value type " + std::to_string(type));
    }
  }
};

GgufVocab read_gguf_vocab(const std::string& path) {
  GgufReader r{std::ifstream(path, std::ios::binary)};
  if (!r.f) throw std::runtime_error("cannot open " + path);
  if (r.pod<uint32_t>() != 0x46554747) throw std::runtime_error("not a GGUF file: " + path);
  r.pod<uint32_t>();  // version
  r.pod<uint64_t>();  // tensor count
  const auto n_kv = r.pod<uint64_t>();
  GgufVocab v;
  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string key = r.str();
    const auto type = r.pod<uint32_t>();
    std::vector<std::string> strs;
    std::vector<int64_t> ints;
    r.value(type, &strs, &ints);
    if (key == "tokenizer.ggml.model") v.model = strs.at(0);
    if (key == "tokenizer.ggml.pre") v.pre = strs.at(0);
    if (key == "tokenizer.ggml.tokens") v.tokens = strs;
    if (key == "tokenizer.ggml.merges") v.merges = strs;
    if (key == "tokenizer.ggml.token_type") v.token_types.assign(ints.begin(), ints.end());
    if (key == "tokenizer.ggml.bos_token_id") v.bos_id = static_cast<int32_t>(ints.at(0));
    if (key == "tokenizer.ggml.eos_token_id") v.eos_id = static_cast<int32_t>(ints.at(0));
    if (key == "tokenizer.ggml.unknown_token_id") v.unk_id = static_cast<int32_t>(ints.at(0));
    if (key == "tokenizer.ggml.padding_token_id") v.pad_id = static_cast<int32_t>(ints.at(0));
    if (key == "tokenizer.ggml.add_bos_token") v.add_bos = ints.at(0) != 0;
    if (key == "tokenizer.chat_template") v.chat_template = strs.at(0);
  }
  return v;
}

// The default model's GGUF: $HYBRIDGEN_SMOLLM2_GGUF, else the models/cache copy that
// models/fetch-default-model.sh makes ($HYBRIDGEN_MODEL_CACHE overrides the folder).
std::string smollm2_gguf_path() {
  const char* name = "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (const char* p = std::getenv("HYBRIDGEN_SMOLLM2_GGUF")) return p;
  if (const char* c = std::getenv("HYBRIDGEN_MODEL_CACHE")) {
    if (fs::exists(std::string(c) + "/" + name)) return std::string(c) + "/" + name;
  }
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/" + name;
}

// ---- HF tokenizer.json: reduced real tokenizers --------------------------------------------

TEST(TokenizerGolden, SmolLM2Reduced) {
  expect_golden(*load_hf("smollm2"), kDir + "/smollm2/golden.json");
}
TEST(TokenizerGolden, Llama3Reduced) {
  expect_golden(*load_hf("llama3"), kDir + "/llama3/golden.json");
}
TEST(TokenizerGolden, Qwen2Reduced) {
  expect_golden(*load_hf("qwen2"), kDir + "/qwen2/golden.json");
}

TEST(TokenizerGolden, Llama3ReducedWithoutIgnoreMerges) {
  json j = read_json(kDir + "/llama3/tokenizer.json");
  j["model"]["ignore_merges"] = false;
  const fs::path tmp =
      fs::temp_directory_path() / ("hg_tok_llama3_merges_" + std::to_string(::getpid()) + ".json");
  std::ofstream(tmp) << j.dump();
  auto tk = Tokenizer::from_hf_files(tmp.string(), "");
  fs::remove(tmp);
  expect_golden(*tk, kDir + "/llama3/golden_merges.json");
}

// Synthetic configurations: Split behaviors (Removed, MergedWithPrevious/Next, Contiguous,
// invert), String patterns, Digits, ByteLevel add_prefix_space, lstrip/rstrip/single_word/
// normalized added tokens, TemplateProcessing with BOS and EOS, RobertaProcessing, no decoder.
class TokenizerFeatures : public ::testing::TestWithParam<std::string> {};
TEST_P(TokenizerFeatures, MatchesHf) {
  const std::string base = kDir + "/features/" + GetParam();
  expect_golden(*Tokenizer::from_hf_files(base + ".json", ""), base + ".golden.json");
}
INSTANTIATE_TEST_SUITE_P(Configs, TokenizerFeatures,
                         ::testing::Values("features_a", "features_b", "features_c", "features_d"));

// ---- GGUF vocabularies ---------------------------------------------------------------------

TEST(TokenizerGguf, SmolLM2PreFromReducedVocab) {
  auto v = gguf_from_json(kDir + "/smollm2/tokenizer.json", "smollm");
  v.bos_id = 1;
  v.eos_id = 2;
  expect_golden(*Tokenizer::from_gguf_vocab(v), kDir + "/smollm2/golden.json");
}

TEST(TokenizerGguf, Llama3PreFromReducedVocab) {
  auto v = gguf_from_json(kDir + "/llama3/tokenizer.json", "llama-bpe");
  v.bos_id = token_id(v, "<|begin_of_text|>");
  v.eos_id = token_id(v, "<|eot_id|>");
  v.add_bos = true;
  expect_golden(*Tokenizer::from_gguf_vocab(v), kDir + "/llama3/golden.json");
}

TEST(TokenizerGguf, Qwen2PreFromReducedVocab) {
  auto v = gguf_from_json(kDir + "/qwen2/tokenizer.json", "qwen2");
  v.eos_id = token_id(v, "<|im_end|>");
  expect_golden(*Tokenizer::from_gguf_vocab(v), kDir + "/qwen2/golden.json");
}

TEST(TokenizerGguf, DefaultPreRoundTrips) {
  auto v = gguf_from_json(kDir + "/smollm2/tokenizer.json", "default");
  auto tk = Tokenizer::from_gguf_vocab(v);
  for (const auto& t : corpus()) {
    if (!t.valid) continue;
    const auto ids = tk->encode(t.bytes, false, false);
    EXPECT_EQ(tk->decode(ids), t.bytes);
  }
}

TEST(TokenizerFull, SmolLM2Gguf) {
  const std::string path = smollm2_gguf_path();
  if (!fs::exists(path)) GTEST_SKIP() << path << " is missing: run models/fetch-default-model.sh";
  const GgufVocab v = read_gguf_vocab(path);
  ASSERT_EQ(v.pre, "smollm");
  ASSERT_EQ(v.tokens.size(), 49152u);
  auto tk = Tokenizer::from_gguf_vocab(v);
  expect_golden(*tk, kDir + "/smollm2/golden_full.json");
  EXPECT_EQ(tk->vocab_size(), 49152);
  EXPECT_EQ(tk->bos_id(), 1);
  EXPECT_EQ(tk->eos_id(), 2);
  EXPECT_TRUE(tk->is_end_of_generation(2));  // <|im_end|>
  EXPECT_TRUE(tk->is_end_of_generation(0));  // <|endoftext|>
  EXPECT_FALSE(tk->is_end_of_generation(1));
  ASSERT_TRUE(tk->has_chat_template());
  EXPECT_EQ(tk->apply_chat_template({{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // The same vocabulary with the plain GPT-2 pre-tokenizer equals transformers' GGUF loader.
  GgufVocab g = v;
  g.pre = "gpt-2";
  expect_golden(*Tokenizer::from_gguf_vocab(g), kDir + "/smollm2/golden_full_gpt2.json");
}

TEST(TokenizerFull, Llama32Json) {
  const std::string dir = kDir + "/full/llama3.2";
  if (!fs::exists(dir + "/tokenizer.json"))
    GTEST_SKIP() << dir << " is missing: run tests/scripts/make_tokenizer_golden.py --fetch";
  auto tk = Tokenizer::from_hf_files(dir + "/tokenizer.json", dir + "/tokenizer_config.json");
  expect_golden(*tk, kDir + "/llama3/golden_full.json");
  EXPECT_EQ(tk->bos_id(), 128000);
  EXPECT_EQ(tk->eos_id(), 128001);
  EXPECT_TRUE(tk->is_end_of_generation(128009));
}

TEST(TokenizerFull, Qwen3Json) {
  const std::string dir = kDir + "/full/qwen3";
  if (!fs::exists(dir + "/tokenizer.json"))
    GTEST_SKIP() << dir << " is missing: run tests/scripts/make_tokenizer_golden.py --fetch";
  auto tk = Tokenizer::from_hf_files(dir + "/tokenizer.json", dir + "/tokenizer_config.json");
  expect_golden(*tk, kDir + "/qwen2/golden_full.json");
  EXPECT_EQ(tk->bos_id(), -1);
  EXPECT_EQ(tk->eos_id(), 151645);
}

// ---- decode, streaming ---------------------------------------------------------------------

TEST(TokenizerDecode, RoundTripsValidUtf8) {
  for (const char* name : {"smollm2", "llama3", "qwen2"}) {
    auto tk = load_hf(name);
    const bool nfc = std::string(name) == "qwen2";
    for (const auto& t : corpus()) {
      const auto ids = tk->encode(t.bytes, false, true);
      // Invalid input decodes to its replaced form; Qwen2 normalizes to NFC.
      EXPECT_EQ(tk->decode(ids), nfc ? t.nfc : t.replaced)
          << name << ": \"" << show(t.bytes) << "\"";
      std::string concat;
      for (int32_t id : ids) concat += tk->token_bytes(id);
      EXPECT_EQ(concat, tk->decode(ids));
    }
  }
}

TEST(TokenizerDecode, SkipSpecial) {
  auto tk = load_hf("llama3");
  const auto ids =
      tk->encode("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", true, true);
  ASSERT_EQ(ids.front(), tk->bos_id());
  EXPECT_EQ(tk->decode(ids),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
  EXPECT_EQ(tk->decode(ids, true), "user\n\nHi");
  // Ids that name no token decode to nothing (as HF does).
  const std::vector<int32_t> odd = {-5, 5000000, tk->vocab_size()};
  EXPECT_EQ(tk->decode(odd), "");
  EXPECT_EQ(tk->token_bytes(-1), "");
}

TEST(TokenizerDecode, StreamDecoderHoldsIncompleteSequences) {
  auto tk = load_hf("smollm2");
  // The reduced vocabulary has no whole token for these characters: they become byte tokens,
  // so tokens end mid-code-point.
  const auto ids = tk->encode("a😀b€日", false, true);
  ASSERT_GT(ids.size(), 6u);
  StreamDecoder sd(*tk);
  std::string out;
  int held = 0;
  for (int32_t id : ids) {
    const std::string c = sd.push(id);
    EXPECT_TRUE(tok::is_valid_utf8(c)) << show(c);
    held += c.empty();
    out += c;
  }
  EXPECT_GT(held, 0);  // some pushes held their bytes back
  EXPECT_EQ(sd.flush(), "");
  EXPECT_EQ(out, "a😀b€日");

  // A sequence that stops mid-code-point: held back until flush, which returns it verbatim.
  auto emoji = tk->encode("x😀", false, true);
  ASSERT_GE(emoji.size(), 3u);
  emoji.pop_back();
  StreamDecoder sd2(*tk);
  std::string got;
  for (int32_t id : emoji) got += sd2.push(id);
  EXPECT_EQ(got, "x");
  EXPECT_EQ(sd2.flush(), tk->decode(emoji).substr(1));
  EXPECT_EQ(tok::incomplete_utf8_tail(tk->decode(emoji)), tk->decode(emoji).size() - 1);
}

TEST(TokenizerDecode, StreamDecoderOnCorpus) {
  auto tk = load_hf("llama3");
  for (const auto& t : corpus()) {
    const auto ids = tk->encode(t.bytes, false, true);
    StreamDecoder sd(*tk);
    std::string out;
    for (int32_t id : ids) {
      const std::string c = sd.push(id);
      EXPECT_EQ(tok::incomplete_utf8_tail(c), 0u);
      EXPECT_TRUE(tok::is_valid_utf8(c)) << show(c);
      out += c;
    }
    out += sd.flush();
    EXPECT_EQ(out, tk->decode(ids));
  }
}

// ---- Unicode helpers ------------------------------------------------------------------------

TEST(TokenizerUnicode, SanitizeMatchesPythonReplace) {
  for (const auto& t : corpus())
    EXPECT_EQ(tok::sanitize_utf8(t.bytes), t.replaced) << show(t.bytes);
  EXPECT_EQ(tok::sanitize_utf8("\xF0\x9F\x98"), "\xEF\xBF\xBD");  // one maximal subpart
  EXPECT_EQ(tok::sanitize_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(TokenizerUnicode, NfcMatchesPython) {
  for (const auto& t : corpus()) EXPECT_EQ(tok::nfc(t.replaced), t.nfc) << show(t.replaced);
  EXPECT_EQ(tok::nfc("e\xCC\x81"), "\xC3\xA9");                      // e + U+0301 -> é
  EXPECT_EQ(tok::nfc("\xE1\x84\x80\xE1\x85\xA1"), "가");             // Hangul L+V
  EXPECT_EQ(tok::nfc("\xE2\x84\xAB"), "\xC3\x85");                   // Angstrom sign -> Å
  EXPECT_EQ(tok::nfc("a\xCC\xA3\xCC\x87"), "\xE1\xBA\xA1\xCC\x87");  // reordering + compose
}

TEST(TokenizerUnicode, IncompleteTail) {
  EXPECT_EQ(tok::incomplete_utf8_tail("abc"), 0u);
  EXPECT_EQ(tok::incomplete_utf8_tail("a\xE2\x82"), 2u);
  EXPECT_EQ(tok::incomplete_utf8_tail("a\xE2\x82\xAC"), 0u);
  EXPECT_EQ(tok::incomplete_utf8_tail("\xF0"), 1u);
  EXPECT_EQ(tok::incomplete_utf8_tail("\xE0\x80"), 0u);  // can never become valid
  EXPECT_EQ(tok::incomplete_utf8_tail("\xFF"), 0u);
}

// ---- special ids, end of generation ----------------------------------------------------------

TEST(TokenizerSpecial, BosEosAndEndOfGeneration) {
  auto s = load_hf("smollm2");
  EXPECT_EQ(s->bos_id(), 1);
  EXPECT_EQ(s->eos_id(), 2);
  EXPECT_TRUE(s->is_end_of_generation(2));
  EXPECT_TRUE(s->is_end_of_generation(0));
  EXPECT_FALSE(s->is_end_of_generation(100));
  EXPECT_EQ(s->encode("Hi", true, true), s->encode("Hi", false, true));  // no BOS for SmolLM2

  // The reduced Llama-3 and Qwen2 files number their tokens contiguously (README.md).
  auto l = load_hf("llama3");
  auto id = [](const Tokenizer& t, const std::string& s) {
    const auto ids = t.encode(s, false, true);
    EXPECT_EQ(ids.size(), 1u) << s;
    return ids.empty() ? -1 : ids[0];
  };
  EXPECT_EQ(l->bos_id(), id(*l, "<|begin_of_text|>"));
  EXPECT_EQ(l->eos_id(), id(*l, "<|eot_id|>"));
  for (const char* s : {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"})
    EXPECT_TRUE(l->is_end_of_generation(id(*l, s))) << s;
  EXPECT_FALSE(l->is_end_of_generation(l->bos_id()));
  EXPECT_FALSE(l->is_end_of_generation(id(*l, "<|start_header_id|>")));
  EXPECT_EQ(l->vocab_size(), id(*l, "<|image|>") + 1);
  EXPECT_EQ(l->encode("Hi", true, true).front(), l->bos_id());

  auto q = load_hf("qwen2");
  EXPECT_EQ(q->bos_id(), -1);
  EXPECT_EQ(q->eos_id(), id(*q, "<|im_end|>"));
  EXPECT_TRUE(q->is_end_of_generation(id(*q, "<|endoftext|>")));
  EXPECT_TRUE(q->is_end_of_generation(id(*q, "<|im_end|>")));
  EXPECT_FALSE(q->is_end_of_generation(id(*q, "<|im_start|>")));

  // Without a tokenizer_config.json: bos from the post-processor, eos by name.
  auto l2 = load_hf("llama3", false);
  EXPECT_EQ(l2->bos_id(), l->bos_id());
  EXPECT_EQ(l2->eos_id(), id(*l, "<|end_of_text|>"));
  EXPECT_FALSE(l2->has_chat_template());
}

// ---- chat templates -------------------------------------------------------------------------

std::string today() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
  return buf;
}

TEST(TokenizerChat, MatchesTransformers) {
  const json g = read_json(kDir + "/chat_golden.json");
  const GgufVocab base = gguf_from_json(kDir + "/llama3/tokenizer.json", "llama-bpe");
  int n = 0;
  for (const auto& c : g["cases"]) {
    const std::string name = c["template"].get<std::string>();
    GgufVocab v = base;
    v.bos_id = token_id(v, "<|begin_of_text|>");  // the bos_token of the golden rendering
    v.chat_template = g["templates"][name].get<std::string>();
    auto tk = Tokenizer::from_gguf_vocab(v);
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"])
      msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    std::string want = c["rendered"].get<std::string>();
    if (v.chat_template.find("strftime_now") != std::string::npos) {
      // Rendered with date_string="26 Jul 2024"; we render today's date as transformers does.
      const auto p = want.find("26 Jul 2024");
      ASSERT_NE(p, std::string::npos);
      want.replace(p, 11, today());
    }
    ASSERT_TRUE(tk->has_chat_template()) << name;
    EXPECT_EQ(tk->apply_chat_template(msgs, c["add_generation_prompt"].get<bool>()), want)
        << name << " / " << c["conversation"].get<std::string>();
    ++n;
  }
  EXPECT_GE(n, 30);
}

TEST(TokenizerChat, FromConfigFiles) {
  auto s = load_hf("smollm2");
  EXPECT_EQ(s->apply_chat_template({{"system", "Be brief."}, {"user", "Hi"}}, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  auto q = load_hf("qwen2");
  EXPECT_EQ(q->apply_chat_template({{"user", "Hi"}}, false),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
  auto l = load_hf("llama3");
  const std::string r = l->apply_chat_template({{"user", " Hi "}}, true);
  EXPECT_EQ(r,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
            "Date: December 2023\nToday Date: " +
                today() +
                "\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // The rendered prompt carries its BOS: encode it without add_special.
  const auto ids = l->encode(r, false, true);
  EXPECT_EQ(ids.front(), l->bos_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), l->bos_id()), 1);
}

TEST(TokenizerChat, DefaultSystemExtraction) {
  EXPECT_EQ(tok::ChatTemplate::parse("{{ '<|im_start|>system\\nBe nice.<|im_end|>\\n' }}{% for m "
                                     "in messages %}<|im_start|>{% endfor %}",
                                     "")
                .default_system(),
            "Be nice.");
  EXPECT_EQ(tok::ChatTemplate::parse(
                "{% for m in messages %}{{'<|im_start|>' + m['role']}}{% endfor %}", "")
                .default_system(),
            "");
}

TEST(TokenizerChat, UnknownOrMissingTemplateThrows) {
  auto v = gguf_from_json(kDir + "/smollm2/tokenizer.json", "smollm");
  v.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}";
  auto tk = Tokenizer::from_gguf_vocab(v);
  EXPECT_FALSE(tk->has_chat_template());
  EXPECT_THROW(tk->apply_chat_template({{"user", "x"}}, true), Error);
  v.chat_template.clear();
  auto tk2 = Tokenizer::from_gguf_vocab(v);
  EXPECT_FALSE(tk2->has_chat_template());
  try {
    tk2->apply_chat_template({{"user", "x"}}, true);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no chat template"), std::string::npos) << e.what();
  }
}

// ---- errors ---------------------------------------------------------------------------------

class TokenizerErrors : public ::testing::Test {
 protected:
  fs::path dir_;
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hg_tok_errors_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  // Loads and expects an Error whose message contains every fragment.
  void expect_error(const std::string& json_path, const std::string& config_path,
                    std::vector<std::string> fragments) {
    try {
      Tokenizer::from_hf_files(json_path, config_path);
      FAIL() << "expected an Error for " << json_path;
    } catch (const Error& e) {
      for (const auto& f : fragments)
        EXPECT_NE(std::string(e.what()).find(f), std::string::npos)
            << "message \"" << e.what() << "\" lacks \"" << f << "\"";
    }
  }
  json minimal() {
    json j = read_json(kDir + "/features/features_d.json");
    return j;
  }
};

TEST_F(TokenizerErrors, NotJson) {
  const auto p = write("bad.json", "{\"model\": [1, 2,");
  expect_error(p, "", {p, "not valid JSON"});
}

TEST_F(TokenizerErrors, MissingFile) {
  const std::string p = (dir_ / "nope.json").string();
  expect_error(p, "", {p, "cannot open"});
}

TEST_F(TokenizerErrors, MissingVocab) {
  json j = minimal();
  j["model"].erase("vocab");
  const auto p = write("novocab.json", j.dump());
  expect_error(p, "", {p, "model.vocab", "missing"});
}

TEST_F(TokenizerErrors, MergeWithUnknownToken) {
  json j = minimal();
  j["model"]["merges"][0] = "Ġ zzzunknown";
  const auto p = write("merge.json", j.dump());
  expect_error(p, "", {p, "model.merges[0]", "zzzunknown", "not in model.vocab"});
}

TEST_F(TokenizerErrors, MergedTokenNotInVocab) {
  json j = minimal();
  j["model"]["merges"].push_back(json::array({"Q", "Z"}));
  const auto p = write("merge2.json", j.dump());
  expect_error(p, "", {p, "model.merges[", "QZ"});
}

TEST_F(TokenizerErrors, UnsupportedModelType) {
  json j = minimal();
  j["model"]["type"] = "WordPiece";
  const auto p = write("wp.json", j.dump());
  expect_error(p, "", {p, "model.type", "WordPiece"});
}

TEST_F(TokenizerErrors, UnsupportedPreTokenizerAndNormalizer) {
  json j = minimal();
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  auto p = write("meta.json", j.dump());
  expect_error(p, "", {p, "pre_tokenizer.type", "Metaspace"});
  j = minimal();
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "[a-"}}}, {"behavior", "Isolated"}};
  p = write("regex.json", j.dump());
  expect_error(p, "", {p, "pre_tokenizer.pattern.Regex", "does not compile"});
  j = minimal();
  j["normalizer"] = {{"type", "Lowercase"}};
  p = write("lower.json", j.dump());
  expect_error(p, "", {p, "normalizer.type", "Lowercase"});
}

TEST_F(TokenizerErrors, BadVocabIdAndAddedToken) {
  json j = minimal();
  j["model"]["vocab"]["Ġ"] = -3;
  auto p = write("negid.json", j.dump());
  expect_error(p, "", {p, "model.vocab"});
  j = minimal();
  j["added_tokens"][0].erase("content");
  p = write("added.json", j.dump());
  expect_error(p, "", {p, "added_tokens[0].content", "missing"});
}

TEST_F(TokenizerErrors, ConfigErrorsNameTheConfig) {
  const std::string tj = kDir + "/smollm2/tokenizer.json";
  auto c = write("cfg.json", "{\"bos_token\": \"<no-such-token>\"}");
  expect_error(tj, c, {c, "bos_token", "<no-such-token>"});
  c = write("cfg2.json", "not json");
  expect_error(tj, c, {c, "not valid JSON"});
  c = write("cfg3.json", "{\"chat_template\": 5}");
  expect_error(tj, c, {c, "chat_template"});
}

TEST_F(TokenizerErrors, ConfigForms) {
  // bos_token as an AddedToken object, chat_template as a list (the "default" one is used),
  // add_bos_token overriding the post-processor.
  const std::string tj = kDir + "/smollm2/tokenizer.json";
  json cfg = {
      {"bos_token", {{"__type", "AddedToken"}, {"content", "<|im_start|>"}}},
      {"eos_token", "<|im_end|>"},
      {"add_bos_token", true},
      {"chat_template", json::array({{{"name", "tool_use"}, {"template", "{{ 'x' }}"}},
                                     {{"name", "default"},
                                      {"template",
                                       "{% for m in messages %}{{'<|im_start|>' + m['role'] + "
                                       "'\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}"}}})}};
  auto p = write("cfg_forms.json", cfg.dump());
  auto tk = Tokenizer::from_hf_files(tj, p);
  EXPECT_EQ(tk->bos_id(), 1);
  EXPECT_EQ(tk->eos_id(), 2);
  const auto ids = tk->encode("Hi", true, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);  // add_bos_token: true adds BOS although the post-processor does not
  EXPECT_EQ(std::vector<int32_t>(ids.begin() + 1, ids.end()), tk->encode("Hi", false, true));
  EXPECT_TRUE(tk->has_chat_template());
  EXPECT_EQ(tk->apply_chat_template({{"user", "Hi"}}, true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");

  // add_bos_token: false removes the BOS a TemplateProcessing would add.
  const std::string lj = kDir + "/llama3/tokenizer.json";
  p = write("cfg_nobos.json", R"({"bos_token": "<|begin_of_text|>", "add_bos_token": false})");
  auto l = Tokenizer::from_hf_files(lj, p);
  EXPECT_EQ(l->encode("Hi", true, true), l->encode("Hi", false, true));
}

TEST(TokenizerGgufErrors, NameTheKey) {
  auto v = gguf_from_json(kDir + "/smollm2/tokenizer.json", "smollm");
  auto expect = [](const GgufVocab& g, const std::string& fragment) {
    try {
      Tokenizer::from_gguf_vocab(g);
      FAIL() << "expected an Error mentioning " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  GgufVocab g = v;
  g.model = "llama";
  expect(g, "tokenizer.ggml.model");
  g = v;
  g.pre = "klingon";
  expect(g, "tokenizer.ggml.pre");
  g = v;
  g.merges[3] = "Ġ zzznope";
  expect(g, "tokenizer.ggml.merges[3]");
  g = v;
  g.token_types.pop_back();
  expect(g, "tokenizer.ggml.token_type");
  g = v;
  g.eos_id = 1 << 20;
  expect(g, "tokenizer.ggml.eos_token_id");
  g = v;
  g.add_bos = true;
  g.bos_id = -1;
  expect(g, "add_bos_token");
}

// ---- concurrency ----------------------------------------------------------------------------

TEST(TokenizerThreads, ConcurrentEncodeIsConsistent) {
  auto tk = load_hf("llama3");
  std::vector<std::vector<int32_t>> want;
  for (const auto& t : corpus()) want.push_back(tk->encode(t.bytes, true, true));
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int r = 0; r < 5; ++r)
        for (size_t i = 0; i < corpus().size(); ++i)
          if (tk->encode(corpus()[i].bytes, true, true) != want[i]) ++bad;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace hybridgen
