// JSON from files someone else made (config.json, tokenizer.json, safetensors headers), parsed
// with the limits hostile input needs.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace hybridgen {

// Real configs and tokenizers nest fewer than 10 levels. Deeper documents are refused: the
// parser itself is iterative, but copying, printing or destroying a deeply nested value
// recurses and can overflow the stack (found by the fuzzers in tests/fuzz/).
constexpr int kMaxJsonDepth = 64;

// Parses `text`; throws hybridgen::Error naming `what` (a file, or a file and a part of it) if
// it is not JSON, nests deeper than kMaxJsonDepth, or (reject_duplicate_keys) repeats a key
// inside one object, which nlohmann would otherwise resolve silently.
nlohmann::json parse_json(std::string_view text, const std::string& what,
                          bool reject_duplicate_keys = false);

}  // namespace hybridgen
