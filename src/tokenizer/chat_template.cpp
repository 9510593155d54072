#include "tokenizer/chat_template.h"

#include <ctime>

#include "tokenizer/unicode.h"
#include "util/check.h"

namespace hybridgen::tok {

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Reads a quoted literal starting at t[i] (the quote); returns its unescaped contents and
// leaves i after the closing quote (or at the end if unterminated).
std::string read_literal(const std::string& t, size_t& i) {
  const char quote = t[i++];
  std::string out;
  while (i < t.size() && t[i] != quote) {
    char c = t[i++];
    if (c != '\\' || i >= t.size()) {
      out.push_back(c);
      continue;
    }
    char e = t[i++];
    switch (e) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case '\\':
        out.push_back('\\');
        break;
      case '\'':
        out.push_back('\'');
        break;
      case '"':
        out.push_back('"');
        break;
      case 'x':
      case 'u':
      case 'U': {
        const size_t digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        char32_t cp = 0;
        size_t k = 0;
        for (; k < digits && i + k < t.size() && hex_value(t[i + k]) >= 0; ++k)
          cp = cp * 16 + static_cast<char32_t>(hex_value(t[i + k]));
        if (k == digits && cp < 0x110000 && !(cp >= 0xD800 && cp < 0xE000)) {
          append_utf8(out, cp);
          i += k;
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
        break;
      }
      default:
        out.push_back('\\');
        out.push_back(e);
    }
  }
  if (i < t.size()) ++i;  // closing quote
  return out;
}

std::string today_string() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
  return buf;
}

// Python json.dumps(s, ensure_ascii=False) for a string: transformers' `tojson` filter.
std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          static const char* hex = "0123456789abcdef";
          out += "\\u00";
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 15]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

// Python's str.strip("\n") / lstrip / rstrip.
std::string strip_newlines(const std::string& s, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && s[b] == '\n') ++b;
  if (right)
    while (e > b && s[e - 1] == '\n') --e;
  return s.substr(b, e - b);
}

}  // namespace

std::vector<std::string> jinja_literals(const std::string& t) {
  std::vector<std::string> out;
  std::string raw;
  size_t i = 0;
  while (i < t.size()) {
    if (t[i] == '{' && i + 1 < t.size() &&
        (t[i + 1] == '{' || t[i + 1] == '%' || t[i + 1] == '#')) {
      if (!raw.empty()) out.push_back(std::move(raw));
      raw.clear();
      const char kind = t[i + 1];
      const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
      i += 2;
      if (kind == '#') {
        size_t end = t.find(close, i);
        i = end == std::string::npos ? t.size() : end + 2;
        continue;
      }
      while (i < t.size()) {
        if (t[i] == '\'' || t[i] == '"') {
          out.push_back(read_literal(t, i));
        } else if (t.compare(i, 2, close) == 0) {
          i += 2;
          break;
        } else {
          ++i;
        }
      }
    } else {
      raw.push_back(t[i++]);
    }
  }
  if (!raw.empty()) out.push_back(std::move(raw));
  return out;
}

ChatTemplate ChatTemplate::parse(const std::string& text, const std::string& bos_text) {
  ChatTemplate ct;
  ct.has_template_ = !text.empty();
  ct.bos_text_ = bos_text;
  if (text.find("<|im_start|>") != std::string::npos) {
    ct.family_ = Family::kChatMl;
    static const std::string kOpen = "<|im_start|>system\n", kClose = "<|im_end|>";
    for (const auto& lit : jinja_literals(text)) {
      const size_t p = lit.find(kOpen);
      if (p == std::string::npos) continue;
      const size_t q = lit.find(kClose, p + kOpen.size());
      if (q == std::string::npos || q == p + kOpen.size()) continue;
      ct.default_system_ = lit.substr(p + kOpen.size(), q - p - kOpen.size());
      break;
    }
    ct.qwen_roles_ = text.find("<tool_response>") != std::string::npos;
    ct.qwen3_think_ = ct.qwen_roles_ && text.find("</think>") != std::string::npos &&
                      text.find("last_query_index") != std::string::npos;
  } else if (text.find("<|start_header_id|>") != std::string::npos) {
    ct.family_ = Family::kLlama3;
    if (text.find("Cutting Knowledge Date") != std::string::npos) {
      ct.llama31_ = true;
      for (const auto& lit : jinja_literals(text)) {
        if (lit.rfind("Cutting Knowledge Date", 0) == 0) {
          ct.knowledge_line_ = lit;
          break;
        }
      }
      if (ct.knowledge_line_.empty())
        ct.knowledge_line_ = "Cutting Knowledge Date: December 2023\n";
      ct.date_from_clock_ = text.find("strftime_now") != std::string::npos;
      ct.fixed_date_ = "26 Jul 2024";
      // {%- set date_string = "26 Jul 2024" %}
      for (size_t p = text.find("set date_string"); p != std::string::npos;
           p = text.find("set date_string", p + 1)) {
        size_t q = text.find_first_of("'\"%", p);
        if (q == std::string::npos || text[q] == '%') continue;
        std::string lit = read_literal(text, q);
        if (!lit.empty()) {
          ct.fixed_date_ = lit;
          break;
        }
      }
    }
  }
  return ct;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  std::string out;
  switch (family_) {
    case Family::kNone:
      fail(has_template_
               ? "chat template: unknown template family (neither ChatML '<|im_start|>' nor "
                 "Llama-3 '<|start_header_id|>'); cannot render it without a Jinja engine"
               : "chat template: the model has no chat template (tokenizer_config.json "
                 "chat_template / GGUF tokenizer.chat_template)");
    case Family::kChatMl: {
      if (!default_system_.empty() && !messages.empty() && messages[0].role != "system")
        out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
      // Qwen3: the index of the last user turn that is not a tool response.
      const long n = static_cast<long>(messages.size());
      long last_query = n - 1;
      if (qwen3_think_) {
        for (long i = n - 1; i >= 0; --i) {
          const std::string& c = messages[i].content;
          const bool tool_response = c.rfind("<tool_response>", 0) == 0 && c.size() >= 16 &&
                                     c.compare(c.size() - 16, 16, "</tool_response>") == 0;
          if (messages[i].role == "user" && !tool_response) {
            last_query = i;
            break;
          }
        }
      }
      for (long i = 0; i < n; ++i) {
        const ChatMessage& m = messages[i];
        if (!qwen_roles_ || m.role == "user" || m.role == "system") {
          out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
        } else if (m.role == "assistant") {
          if (!qwen3_think_) {
            out += "<|im_start|>assistant\n" + m.content + "<|im_end|>\n";
            continue;
          }
          std::string content = m.content, reasoning;
          const size_t close = content.find("</think>");
          if (close != std::string::npos) {
            std::string before = strip_newlines(content.substr(0, close), false, true);
            const size_t open = before.rfind("<think>");
            if (open != std::string::npos) before = before.substr(open + 7);
            reasoning = strip_newlines(before, true, false);
            content = strip_newlines(content.substr(content.rfind("</think>") + 8), true, false);
          }
          if (i > last_query && (i == n - 1 || !reasoning.empty())) {
            out += "<|im_start|>assistant\n<think>\n" + strip_newlines(reasoning, true, true) +
                   "\n</think>\n\n" + strip_newlines(content, true, false);
          } else {
            out += "<|im_start|>assistant\n" + content;
          }
          out += "<|im_end|>\n";
        } else if (m.role == "tool") {
          if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
          out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
          if (i == n - 1 || messages[i + 1].role != "tool") out += "<|im_end|>\n";
        }
        // Other roles: Qwen's templates render nothing for them.
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    }
    case Family::kLlama3: {
      size_t first = 0;
      if (llama31_) {
        std::string system;
        if (!messages.empty() && messages[0].role == "system") {
          system = python_strip(messages[0].content);
          first = 1;
        }
        out += bos_text_;
        out += "<|start_header_id|>system<|end_header_id|>\n\n";
        out += knowledge_line_;
        out += "Today Date: " + (date_from_clock_ ? today_string() : fixed_date_) + "\n\n";
        out += system + "<|eot_id|>";
      } else if (!messages.empty()) {
        out += bos_text_;
      }
      for (size_t i = first; i < messages.size(); ++i) {
        const auto& m = messages[i];
        if (llama31_ && (m.role == "tool" || m.role == "ipython")) {
          // The template tests `content is iterable`, true for a string: it is JSON-quoted.
          out += "<|start_header_id|>ipython<|end_header_id|>\n\n" + json_quote(m.content) +
                 "<|eot_id|>";
        } else {
          out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" +
                 python_strip(m.content) + "<|eot_id|>";
        }
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    }
  }
  return out;
}

}  // namespace hybridgen::tok
