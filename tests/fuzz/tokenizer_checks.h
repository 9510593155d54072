// Checks run on every tokenizer a harness manages to build (fuzz_gguf, fuzz_tokenizer_json,
// fuzz_chat_template).
#pragma once
#include <climits>
#include <span>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "hybridgen/error.h"
#include "tokenizer/tokenizer.h"

namespace fuzz {

// ids -> text through StreamDecoder must give decode(ids) exactly, chunk by chunk.
inline void check_stream_decode(const hybridgen::Tokenizer& tok, const std::vector<int32_t>& ids) {
  hybridgen::StreamDecoder sd(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.push(id);
  streamed += sd.flush();
  FUZZ_CHECK(streamed == tok.decode(ids, false), "StreamDecoder output differs from decode()");
}

inline void check_ids(const hybridgen::Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids)
    FUZZ_CHECK(id >= 0 && id < tok.vocab_size(), "encode gave id %d (vocab %d)", id,
               tok.vocab_size());
}

// A few fixed texts through every encode mode, decode of odd ids, and the chat template.
inline void exercise_tokenizer(const hybridgen::Tokenizer& tok) {
  static const char* const kTexts[] = {
      "Hello world! 123 4567 it's",
      "<|im_start|>user\nhi<|im_end|>\n<s> </s> <mask>",
      "<|begin_of_text|><|start_header_id|>x<|end_header_id|>",
      "  \t\n\r\n  ",
      "caf\xc3\xa9 cafe\xcc\x81 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 \xe1\x84\x80\xe1\x85\xa1",
      "bad \xff\xfe utf8 \xc3",
  };
  FUZZ_CHECK(tok.vocab_size() >= 0, "negative vocab_size");
  FUZZ_CHECK(tok.bos_id() >= -1 && tok.bos_id() < tok.vocab_size(), "bos_id %d", tok.bos_id());
  FUZZ_CHECK(tok.eos_id() >= -1 && tok.eos_id() < tok.vocab_size(), "eos_id %d", tok.eos_id());
  for (const char* text : kTexts) {
    for (int flags = 0; flags < 4; ++flags) {
      const auto ids = tok.encode(text, flags & 1, flags & 2);
      check_ids(tok, ids);
      (void)tok.decode(ids, true);
      check_stream_decode(tok, ids);
    }
  }
  const int32_t probe[] = {
      -1,        0,        1, tok.bos_id(), tok.eos_id(), tok.vocab_size() - 1, tok.vocab_size(),
      INT32_MAX, INT32_MIN};
  (void)tok.decode(std::span<const int32_t>(probe), false);
  for (int32_t id : probe) (void)tok.token_bytes(id), (void)tok.is_end_of_generation(id);
  if (tok.has_chat_template()) {
    const std::vector<hybridgen::ChatMessage> msgs = {
        {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
    try {
      check_ids(tok, tok.encode(tok.apply_chat_template(msgs, true), false, true));
    } catch (const hybridgen::Error&) {
    }
  }
}

}  // namespace fuzz
