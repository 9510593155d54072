// Chat templates without a Jinja engine: the family is recognised from the template text and
// rendered by hand, reproducing what transformers' apply_chat_template renders for the
// templates these models ship (checked by tests against jinja2 renderings of the real ones).
//
// ChatML (template mentions "<|im_start|>": SmolLM2, Qwen2/2.5/3):
//   [<|im_start|>system\n{default}<|im_end|>\n]   when the template has a default system
//                                                 prompt and messages[0] is not "system"
//   <|im_start|>{role}\n{content}<|im_end|>\n      per message
//   <|im_start|>assistant\n                        with add_generation_prompt
//   The default system prompt is the text between "<|im_start|>system\n" and "<|im_end|>"
//   inside one string literal of the template (SmolLM2's "You are a helpful AI assistant
//   named SmolLM, ...", Qwen2.5's "You are Qwen, created by Alibaba Cloud. ...").
//   Qwen templates (they mention "<tool_response>"): "tool" turns are wrapped as Qwen does
//   (<|im_start|>user\n<tool_response>\n...\n</tool_response><|im_end|>, consecutive ones in
//   one user turn), roles other than system/user/assistant/tool are dropped, and with Qwen3's
//   template ("</think>" and "last_query_index") assistant turns after the last user query get
//   their <think> block as Qwen3 renders it (reasoning split out of "<think>...</think>").
//   Not rendered: tool definitions, tool calls, Qwen3's enable_thinking=false switch.
//
// Llama-3 (template mentions "<|start_header_id|>"):
//   Llama-3.0: {bos} once before the first message, then per message
//     <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>
//   Llama-3.1/3.2/3.3 (template mentions "Cutting Knowledge Date"): {bos}, then always a system
//     block "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December
//     2023\nToday Date: {date}\n\n{system content|trim}<|eot_id|>" (messages[0] is taken as the
//     system content when its role is "system"), then the other messages as above ("tool" and
//     "ipython" messages under an ipython header, untrimmed). {date} is today's date
//     ("%d %b %Y", local time) when the template calls strftime_now (3.2), else the template's
//     default date_string ("26 Jul 2024" in 3.1/3.3).
//   Generation prompt: <|start_header_id|>assistant<|end_header_id|>\n\n
//   Not rendered: tools and tool calls.
//
// The rendered text contains the BOS token's text where the template writes it, so encode it
// with add_special = false (as apply_chat_template(tokenize=True) does).
#pragma once
#include <string>
#include <vector>

#include "hybridgen/chat.h"

namespace hybridgen::tok {

class ChatTemplate {
 public:
  enum class Family { kNone, kChatMl, kLlama3 };

  ChatTemplate() = default;
  // `bos_text` is what the template's bos_token renders to (Llama-3 families).
  static ChatTemplate parse(const std::string& template_text, const std::string& bos_text);

  Family family() const { return family_; }
  const std::string& default_system() const { return default_system_; }
  // Throws hybridgen::Error if the family is kNone.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

 private:
  Family family_ = Family::kNone;
  bool has_template_ = false;
  std::string default_system_;  // ChatML; empty if none
  bool qwen_roles_ = false;     // ChatML with Qwen's tool-turn handling
  bool qwen3_think_ = false;    // ChatML with Qwen3's <think> handling
  // Llama-3.1+
  bool llama31_ = false;
  std::string knowledge_line_;  // "Cutting Knowledge Date: December 2023\n"
  bool date_from_clock_ = false;
  std::string fixed_date_;  // "26 Jul 2024"
  std::string bos_text_;
};

// The contents of the string literals inside {{ }} / {% %} tags plus the raw text outside
// tags, unescaped, in order. Exposed for tests.
std::vector<std::string> jinja_literals(const std::string& template_text);

}  // namespace hybridgen::tok
