// Byte-level BPE tokenizer (GPT-2 family: SmolLM, Llama-3, Qwen2, OPT), built from an HF
// tokenizer.json or from GGUF metadata, plus the chat templates of these families.
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
  std::string model;               // tokenizer.ggml.model: must be "gpt2" (byte-level BPE)
  std::string pre;                 // tokenizer.ggml.pre: "smollm", "llama-bpe", "qwen2", "gpt-2", ...
  std::vector<std::string> tokens; // tokenizer.ggml.tokens
  std::vector<int32_t> token_types;// tokenizer.ggml.token_type (1 normal, 3 control, 4 user-defined, ...)
  std::vector<std::string> merges; // tokenizer.ggml.merges: "a b"
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false;            // tokenizer.ggml.add_bos_token
  std::string chat_template;       // tokenizer.chat_template (may be empty)
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
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  // One token's bytes (may be an incomplete UTF-8 sequence).
  virtual std::string token_bytes(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 if none
  virtual int32_t eos_id() const = 0;  // -1 if none
  // End-of-generation: eos and the chat end markers (<|im_end|>, <|eot_id|>, <|endoftext|>...)
  virtual bool is_end_of_generation(int32_t id) const = 0;

  // Renders a conversation with the model's chat template. The family (ChatML, Llama-3) is
  // chosen from the template text found in the metadata; throws if there is none we know.
  virtual bool has_chat_template() const = 0;
  virtual std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt = true) const = 0;
};

// Streaming detokenizer: feeds tokens, returns only complete UTF-8 text, holding back a
// trailing incomplete sequence until the next token completes it (or flush()).
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
