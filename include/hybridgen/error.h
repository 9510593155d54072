// Errors thrown across the public API.
#pragma once
#include <stdexcept>
#include <string>

namespace hybridgen {

// Every error the library reports to its user: the message names the file, field or flag and
// says what is wrong (and, where there is one, what to do about it).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace hybridgen
