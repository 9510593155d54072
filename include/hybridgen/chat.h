// Chat messages, rendered into a prompt by the model's chat template.
#pragma once
#include <string>

namespace hybridgen {

struct ChatMessage {
  std::string role;     // "system", "user" or "assistant"
  std::string content;  // UTF-8 text
};

}  // namespace hybridgen
