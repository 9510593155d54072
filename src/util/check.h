// Error helpers and checked arithmetic used everywhere inside the library.
#pragma once
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "hybridgen/error.h"

namespace hybridgen {

[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

#define HG_CHECK(cond, msg)              \
  do {                                   \
    if (!(cond)) ::hybridgen::fail(msg); \
  } while (0)

// Checked size arithmetic: nullopt on overflow. Every size or offset read from a file goes
// through these before it is used.
inline std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

}  // namespace hybridgen
