// The tokenizer description a GGUF file carries (tokenizer.ggml.* keys).
#pragma once
#include "model/gguf.h"
#include "tokenizer/tokenizer.h"

namespace hybridgen {

// Reads tokenizer.ggml.* (and tokenizer.chat_template); throws hybridgen::Error naming the file
// and the key when a value is missing or of the wrong type.
GgufVocab read_gguf_vocab(const GgufFile& gguf);

}  // namespace hybridgen
