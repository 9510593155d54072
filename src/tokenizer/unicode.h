// UTF-8 helpers for the tokenizer: validation and repair, code point iteration, Unicode NFC,
// and the whitespace classes that HF tokenizers and Jinja use.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace hybridgen::tok {

// Appends `cp` (must be a Unicode scalar value) as UTF-8.
void append_utf8(std::string& out, char32_t cp);

// Decodes the code point starting at s[i] and advances i past it; an invalid or truncated
// sequence reads as U+FFFD and advances by one byte.
char32_t next_code_point(std::string_view s, size_t& i);

bool is_valid_utf8(std::string_view s);

// Replaces each maximal invalid subsequence by U+FFFD, exactly as Python's
// bytes.decode("utf-8", "replace") does (Unicode's "maximal subpart" practice, Table 3-7 of
// the standard: surrogates, overlongs and code points past U+10FFFF are invalid).
std::string sanitize_utf8(std::string_view s);

// How many bytes at the end of `s` form the start of a UTF-8 sequence that more bytes could
// still complete (0 if none). Used by the streaming decoder to hold them back.
size_t incomplete_utf8_tail(std::string_view s);

// Unicode Normalization Form C. PRECOND: s is valid UTF-8. Text whose code points are all
// below U+0300 is returned unchanged without decoding (it is always in NFC).
std::string nfc(std::string_view s);

// Rust's char::is_whitespace (the White_Space property): HF's lstrip/rstrip.
bool is_white_space(char32_t c);
// Python's str.isspace: what Jinja's `trim` filter strips.
bool is_python_space(char32_t c);
// Python's str.strip() on UTF-8 text.
std::string python_strip(std::string_view s);

}  // namespace hybridgen::tok
