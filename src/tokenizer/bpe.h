// The byte-level BPE model: GPT-2's byte-to-unicode alphabet and the merge loop of HF
// `tokenizers` (models/bpe/word.rs: lowest merge rank first, leftmost on ties).
#pragma once
#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace hybridgen::tok {

// GPT-2's bytes_to_unicode(): printable bytes stand for themselves, the others for U+0100...
// Returns the UTF-8 spelling of byte b's symbol.
const std::string& byte_symbol(uint8_t b);
// Raw bytes -> byte-level string ("Ġthe" for " the").
std::string to_byte_level(std::string_view raw);
// Byte-level string -> raw bytes. Returns false (out untouched) if a code point of `s` is not
// one of the 256 symbols; HF's ByteLevel decoder then uses the token's own UTF-8 bytes.
bool from_byte_level(std::string_view s, std::string& out);

struct BpeModel {
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };

  std::unordered_map<std::string, int32_t> vocab;  // byte-level spelling -> id
  std::array<int32_t, 256> byte_ids{};             // id of each single-byte token, -1 if none
  std::unordered_map<uint64_t, Merge> merges;      // (left id << 32 | right id) -> merge
  bool ignore_merges = false;  // a word that is itself in the vocab is emitted whole
  int32_t unk_id = -1;         // HF drops bytes with no token when there is no unk token
  bool fuse_unk = false;

  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // Fills byte_ids from vocab; call after vocab is complete.
  void index_bytes();
  // Tokenizes one pre-tokenized word given as raw bytes; appends the ids.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  // Word cache: words repeat a lot in real text. Bounded; cleared when full.
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace hybridgen::tok
