// Byte-level BPE tokenizer (GPT-2 family: SmolLM, Llama-3, Qwen2, OPT), built from an HF
// tokenizer.json or from GGUF metadata, plus the chat templates of these families.
//
// Ids equal HF `tokenizers`' encode(text).ids (tests/unit/tokenizer_test.cpp compares them on
// a 68-text corpus for real SmolLM2, Llama-3.2 and Qwen2 tokenizers and synthetic configs).
// What is supported from tokenizer.json:
//   model: BPE with byte-level symbols; merges as "a b" strings or ["a", "b"] pairs;
//     ignore_merges; unk_token/fuse_unk. Not: dropout, byte_fallback, subword prefix/suffix.
//   added_tokens: special, lstrip, rstrip, single_word, normalized, as HF matches them
//     (leftmost-longest; normalized ones on the normalized text). The stored ids are used.
//   normalizer: null, NFC (own tables, Unicode 14 from Python's unicodedata; HF's tables may
//     be of another Unicode version, which only matters for characters assigned in between),
//     Sequence. Likewise \p{L}/\p{N} in the regexes follow PCRE2's Unicode tables.
//   pre_tokenizer: ByteLevel (add_prefix_space, use_regex = GPT-2's regex), Split (Regex or
//     String pattern, every behavior, invert), Digits, Sequence; regexes run in PCRE2
//     (UTF + UCP, JIT).
//   post_processor: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence.
//   decoder: ByteLevel (or none), Sequence of ByteLevel.
// tokenizer_config.json: bos_token/eos_token (string, {"content": ...} or null: no token),
//   add_bos_token (overrides whether the post-processor's BOS is added, as transformers'
//   Llama tokenizers do), chat_template (string, or a list of {name, template}: "default",
//   else the first). Without a config, bos is the post-processor's single prefix token or an
//   added token named <|begin_of_text|>/<s>/...; eos an added token named <|end_of_text|>,
//   <|endoftext|>, </s>, ...
// GGUF (tokenizer.ggml.*): model "gpt2"; pre "smollm" (digits split, then GPT-2's regex),
//   "llama-bpe"/"llama3" (Llama-3 regex, ignore_merges as llama.cpp sets it), "qwen2" (Qwen2
//   regex, plus NFC as Qwen2's tokenizer.json does; llama.cpp skips NFC), "gpt-2", "default"
//   (llama.cpp's default regexes) and llama.cpp's aliases of these. Control tokens (type 3)
//   are special added tokens, user-defined ones (type 4) plain added tokens.
// Thread-safety: every const method may be called from several threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hybridgen/chat.h"

namespace hybridgen {

// The tokenizer description GGUF files carry (tokenizer.ggml.* keys), decoupled from the GGUF
// parser. Token strings are in the byte-level alphabet (e.g. "Ġthe").
struct GgufVocab {
  std::string model;  // tokenizer.ggml.model: must be "gpt2" (byte-level BPE)
  std::string pre;    // tokenizer.ggml.pre: "smollm", "llama-bpe", "qwen2", "gpt-2", ...
  std::vector<std::string> tokens;  // tokenizer.ggml.tokens
  std::vector<int32_t>
      token_types;  // tokenizer.ggml.token_type (1 normal, 3 control, 4 user-defined, ...)
  std::vector<std::string> merges;  // tokenizer.ggml.merges: "a b"
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false;       // tokenizer.ggml.add_bos_token
  std::string chat_template;  // tokenizer.chat_template (may be empty)
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // tokenizer_config_json may be empty (then bos/eos come from tokenizer.json's added tokens
  // where they can be recognised, and there is no chat template). Throws hybridgen::Error
  // naming the file and the field on malformed input.
  static std::unique_ptr<Tokenizer> from_hf_files(const std::string& tokenizer_json_path,
                                                  const std::string& tokenizer_config_json_path);
  static std::unique_ptr<Tokenizer> from_gguf_vocab(const GgufVocab& vocab);

  // Text -> ids, as HF `tokenizers` does with `tokenizer.encode(text).ids`:
  //  - add_special: prepend BOS where the model's tokenizer does (HF post-processor /
  //    tokenizer.ggml.add_bos_token);
  //  - parse_special: special/added tokens written in the text (e.g. "<|im_start|>") become
  //    their ids (HF's default); when false they are tokenized as plain text.
  // Invalid UTF-8 in `text` is replaced by U+FFFD per maximal invalid subsequence (as
  // Python's bytes.decode("utf-8", "replace") does) before tokenizing.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special = true,
                                      bool parse_special = true) const = 0;

  // ids -> the exact bytes (special tokens rendered as their text unless skip_special).
  // Ids that name no token (negative, past vocab_size(), or a gap in the vocabulary) decode to
  // nothing, as HF's decode skips them.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  // One token's bytes (may be an incomplete UTF-8 sequence; empty for an id naming no token).
  virtual std::string token_bytes(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 if none
  virtual int32_t eos_id() const = 0;  // -1 if none
  // End-of-generation: eos and the chat end markers (<|im_end|>, <|eot_id|>, <|endoftext|>...)
  virtual bool is_end_of_generation(int32_t id) const = 0;

  // Renders a conversation with the model's chat template. The family (ChatML, Llama-3) is
  // chosen from the template text found in the metadata; throws if there is none we know.
  // What is rendered, and what is not (tools), is listed in tokenizer/chat_template.h. The
  // text carries the BOS token where the template writes it (Llama-3): encode it with
  // add_special = false, as transformers' apply_chat_template(tokenize=True) does.
  // True when the metadata has a chat template of a family we render (an unknown template
  // counts as none; apply_chat_template then throws saying so).
  virtual bool has_chat_template() const = 0;
  virtual std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt = true) const = 0;
};

// Streaming detokenizer: feeds tokens, returns only complete UTF-8 text, holding back a
// trailing incomplete sequence until the next token completes it (or flush()). Bytes that can
// never become valid UTF-8 (e.g. a lone continuation byte) are passed through as they are.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  std::string flush();  // whatever is held back (possibly invalid UTF-8 bytes, verbatim)

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
};

}  // namespace hybridgen
