#include "model/gguf_vocab.h"

namespace hybridgen {

GgufVocab read_gguf_vocab(const GgufFile& g) {
  GgufVocab v;
  v.model = g.get_string("tokenizer.ggml.model", "");
  v.pre = g.get_string("tokenizer.ggml.pre", "default");
  v.tokens = g.get_string_array("tokenizer.ggml.tokens");
  if (g.get("tokenizer.ggml.token_type")) {
    for (int64_t t : g.get_int_array("tokenizer.ggml.token_type"))
      v.token_types.push_back(static_cast<int32_t>(t));
  }
  if (g.get("tokenizer.ggml.merges")) v.merges = g.get_string_array("tokenizer.ggml.merges");
  auto id = [&](const char* key) {
    return g.get(key) ? static_cast<int32_t>(g.get_uint(key)) : -1;
  };
  v.bos_id = id("tokenizer.ggml.bos_token_id");
  v.eos_id = id("tokenizer.ggml.eos_token_id");
  v.unk_id = id("tokenizer.ggml.unknown_token_id");
  v.pad_id = id("tokenizer.ggml.padding_token_id");
  // Without the key, llama.cpp adds BOS for Llama-3's tokenizer ("llama-bpe") and not for the
  // other byte-level BPE vocabularies; do the same.
  v.add_bos = g.get_bool("tokenizer.ggml.add_bos_token", v.pre == "llama-bpe" || v.pre == "llama3");
  v.chat_template = g.get_string("tokenizer.chat_template", "");
  return v;
}

}  // namespace hybridgen
