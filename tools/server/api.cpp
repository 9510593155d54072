#include "api.h"

#include <cmath>
#include <limits>

namespace hybridgen::server {

namespace {

std::string type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

[[noreturn]] void bad(const std::string& field, const std::string& message) {
  throw ApiError(400, "'" + field + "': " + message, field);
}

// A field that is absent or null counts as not given (the OpenAI clients send nulls).
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer in [lo, hi]. JSON numbers too large for int64 arrive as floats: "must be an
// integer" would mislead, so a float that is integral says "out of range" instead.
int64_t get_int(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        static_cast<int64_t>(u) > hi)
      bad(name, "must be <= " + std::to_string(hi) + ", got " + std::to_string(u));
    if (static_cast<int64_t>(u) < lo)
      bad(name, "must be >= " + std::to_string(lo) + ", got " + std::to_string(u));
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < lo || i > hi)
      bad(name, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                    std::to_string(i));
    return i;
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d))
      bad(name, "must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                    "], got " + v.dump());
  }
  bad(name, "must be an integer, got " + type_name(v));
}

double get_number(const json& v, const std::string& name, double lo, double hi, bool lo_open) {
  if (!v.is_number()) bad(name, "must be a number, got " + type_name(v));
  const double d = v.get<double>();
  if (!std::isfinite(d) || (lo_open ? d <= lo : d < lo) || d > hi) {
    char range[64];
    std::snprintf(range, sizeof range, "%c%g, %g]", lo_open ? '(' : '[', lo, hi);
    bad(name, std::string("must be in ") + range + ", got " + v.dump());
  }
  return d;
}

bool get_bool(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad(name, "must be a boolean, got " + type_name(v));
  return v.get<bool>();
}

std::string chat_content(const json& c, const std::string& name) {
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {  // content parts: only text parts are understood
    std::string text;
    for (size_t i = 0; i < c.size(); ++i) {
      const std::string part = name + "[" + std::to_string(i) + "]";
      if (!c[i].is_object()) bad(part, "must be an object, got " + type_name(c[i]));
      const json* type = field(c[i], "type");
      if (!type || !type->is_string() || type->get<std::string>() != "text")
        bad(part + ".type", "only \"text\" content parts are supported");
      const json* t = field(c[i], "text");
      if (!t || !t->is_string()) bad(part + ".text", "must be a string");
      text += t->get<std::string>();
    }
    return text;
  }
  bad(name, "must be a string or an array of text parts, got " + type_name(c));
}

}  // namespace

json error_body(const ApiError& e) {
  json err = {{"message", e.what()},
              {"type", e.type()},
              {"param", e.param().empty() ? json(nullptr) : json(e.param())},
              {"code", nullptr}};
  return json{{"error", err}};
}

CompletionRequest parse_request(Endpoint endpoint, std::string_view body,
                                const RequestLimits& limits) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what(), "body");
  }
  if (!j.is_object())
    throw ApiError(400, "the request body must be a JSON object, got " + type_name(j), "body");

  CompletionRequest r;
  r.endpoint = endpoint;
  // OpenAI's defaults: temperature 1, top_p 1; the extensions top_k and min_p are off unless
  // asked for.
  r.sampling.temperature = 1.0f;
  r.sampling.top_p = 1.0f;
  r.sampling.top_k = 0;
  r.sampling.min_p = 0.0f;
  r.sampling.repeat_penalty = 1.0f;

  if (const json* m = field(j, "model")) {
    if (!m->is_string()) bad("model", "must be a string, got " + type_name(*m));
    const std::string name = m->get<std::string>();
    if (!name.empty() && name != limits.model_id)
      bad("model", "unknown model '" + name + "' (this server serves '" + limits.model_id + "')");
  }

  if (endpoint == Endpoint::kCompletions) {
    const json* p = field(j, "prompt");
    if (!p) bad("prompt", "is required");
    if (p->is_string()) {
      r.prompt = p->get<std::string>();
    } else if (p->is_array()) {
      if (p->empty()) bad("prompt", "must not be empty");
      if ((*p)[0].is_string()) {
        if (p->size() != 1)
          bad("prompt", "one prompt per request (got " + std::to_string(p->size()) + " strings)");
        r.prompt = (*p)[0].get<std::string>();
      } else {  // token ids
        r.prompt_is_ids = true;
        const int64_t hi =
            limits.vocab_size > 0 ? limits.vocab_size - 1 : std::numeric_limits<int32_t>::max();
        for (size_t i = 0; i < p->size(); ++i)
          r.prompt_ids.push_back(
              static_cast<int32_t>(get_int((*p)[i], "prompt[" + std::to_string(i) + "]", 0, hi)));
      }
    } else {
      bad("prompt", "must be a string, an array of one string or an array of token ids, got " +
                        type_name(*p));
    }
    if (!r.prompt_is_ids && r.prompt.empty()) bad("prompt", "must not be empty");
  } else {
    const json* ms = field(j, "messages");
    if (!ms) bad("messages", "is required");
    if (!ms->is_array()) bad("messages", "must be an array, got " + type_name(*ms));
    if (ms->empty()) bad("messages", "must not be empty");
    if (static_cast<int>(ms->size()) > limits.max_messages)
      bad("messages", "at most " + std::to_string(limits.max_messages) + " messages, got " +
                          std::to_string(ms->size()));
    for (size_t i = 0; i < ms->size(); ++i) {
      const std::string name = "messages[" + std::to_string(i) + "]";
      const json& m = (*ms)[i];
      if (!m.is_object()) bad(name, "must be an object, got " + type_name(m));
      const json* role = field(m, "role");
      if (!role || !role->is_string()) bad(name + ".role", "must be a string");
      std::string rs = role->get<std::string>();
      if (rs == "developer") rs = "system";  // OpenAI's newer name for the system role
      if (rs != "system" && rs != "user" && rs != "assistant")
        bad(name + ".role", "must be system, developer, user or assistant, got '" + rs + "'");
      const json* content = field(m, "content");
      if (!content) bad(name + ".content", "is required");
      r.messages.push_back({rs, chat_content(*content, name + ".content")});
    }
  }

  // max_tokens (chat: max_completion_tokens, its newer name, wins when both are given).
  const char* mt_name = "max_tokens";
  const json* mt = field(j, "max_tokens");
  if (endpoint == Endpoint::kChatCompletions)
    if (const json* mct = field(j, "max_completion_tokens")) {
      mt = mct;
      mt_name = "max_completion_tokens";
    }
  if (mt) {
    r.max_tokens = static_cast<int>(get_int(*mt, mt_name, 1, limits.max_tokens));
    r.max_tokens_given = true;
  } else {
    r.max_tokens = limits.max_tokens;
  }
  if (const json* v = field(j, "temperature"))
    r.sampling.temperature = static_cast<float>(get_number(*v, "temperature", 0, 2, false));
  if (const json* v = field(j, "top_p"))
    r.sampling.top_p = static_cast<float>(get_number(*v, "top_p", 0, 1, true));
  if (const json* v = field(j, "top_k"))
    r.sampling.top_k = static_cast<int>(
        get_int(*v, "top_k", 0, limits.vocab_size > 0 ? limits.vocab_size : 1 << 30));
  if (const json* v = field(j, "min_p"))
    r.sampling.min_p = static_cast<float>(get_number(*v, "min_p", 0, 1, false));
  if (const json* v = field(j, "seed")) {
    r.sampling.seed = static_cast<uint64_t>(get_int(*v, "seed", std::numeric_limits<int64_t>::min(),
                                                    std::numeric_limits<int64_t>::max()));
    r.seed_given = true;
  }
  if (const json* v = field(j, "n")) {
    if (get_int(*v, "n", 1, 1 << 30) != 1) bad("n", "only n = 1 is supported");
  }
  if (const json* v = field(j, "stream")) r.stream = get_bool(*v, "stream");
  if (const json* v = field(j, "ignore_eos")) r.ignore_eos = get_bool(*v, "ignore_eos");
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object()) bad("stream_options", "must be an object, got " + type_name(*v));
    if (!r.stream) bad("stream_options", "is only allowed with stream: true");
    if (const json* u = field(*v, "include_usage"))
      r.include_usage = get_bool(*u, "stream_options.include_usage");
  }
  if (const json* v = field(j, "stop")) {
    std::vector<std::string> stops;
    if (v->is_string()) {
      stops.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (static_cast<int>(v->size()) > limits.max_stop)
        bad("stop", "at most " + std::to_string(limits.max_stop) + " stop strings, got " +
                        std::to_string(v->size()));
      for (size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string())
          bad("stop[" + std::to_string(i) + "]", "must be a string, got " + type_name((*v)[i]));
        stops.push_back((*v)[i].get<std::string>());
      }
    } else {
      bad("stop", "must be a string or an array of strings, got " + type_name(*v));
    }
    for (const std::string& s : stops) {
      if (s.empty()) bad("stop", "stop strings must not be empty");
      if (static_cast<int>(s.size()) > limits.max_stop_bytes)
        bad("stop", "stop strings are at most " + std::to_string(limits.max_stop_bytes) +
                        " bytes, got one of " + std::to_string(s.size()));
    }
    r.stop = std::move(stops);
  }
  try {
    r.sampling.validate();
  } catch (const std::exception& e) {  // belt and braces: the ranges above are stricter
    throw ApiError(400, e.what(), "sampling");
  }
  return r;
}

size_t incomplete_utf8_tail(std::string_view s) {
  // Look back at most 3 bytes for a lead byte whose sequence runs past the end.
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = 0;
    if ((c & 0xE0) == 0xC0)
      need = 2;
    else if ((c & 0xF0) == 0xE0)
      need = 3;
    else if ((c & 0xF8) == 0xF0)
      need = 4;
    return need > back ? back : 0;  // ASCII or an invalid lead: nothing to wait for
  }
  return 0;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return "";
  held_.append(text);
  if (stops_.empty()) return std::exchange(held_, std::string());
  // The earliest complete stop string wins.
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > hold; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  if (stopped_) return "";
  return std::exchange(held_, std::string());
}

json usage_json(const Usage& u) {
  return json{{"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json completion_body(Endpoint endpoint, const ResponseId& rid, const std::string& text,
                     const std::string& finish_reason, const Usage& usage) {
  json choice;
  if (endpoint == Endpoint::kCompletions) {
    choice = {
        {"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  } else {
    choice = {{"index", 0},
              {"message", {{"role", "assistant"}, {"content", text}}},
              {"logprobs", nullptr},
              {"finish_reason", finish_reason}};
  }
  return json{
      {"id", rid.id},
      {"object", endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion"},
      {"created", rid.created},
      {"model", rid.model},
      {"choices", json::array({choice})},
      {"usage", usage_json(usage)}};
}

json stream_chunk(Endpoint endpoint, const ResponseId& rid, const std::string& text,
                  const std::optional<std::string>& finish_reason, bool first) {
  json fr = finish_reason ? json(*finish_reason) : json(nullptr);
  json choice;
  if (endpoint == Endpoint::kCompletions) {
    choice = {{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", fr}};
  } else {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice = {{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", fr}};
  }
  return json{
      {"id", rid.id},
      {"object", endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion.chunk"},
      {"created", rid.created},
      {"model", rid.model},
      {"choices", json::array({choice})}};
}

json stream_usage_chunk(Endpoint endpoint, const ResponseId& rid, const Usage& usage) {
  return json{
      {"id", rid.id},
      {"object", endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion.chunk"},
      {"created", rid.created},
      {"model", rid.model},
      {"choices", json::array()},
      {"usage", usage_json(usage)}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump(j) + "\n\n"; }

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Every byte of the presented value is visited; a length mismatch is folded into the result
  // instead of returning early.
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    const unsigned char x = static_cast<unsigned char>(a[i]);
    const unsigned char y = b.empty() ? 0 : static_cast<unsigned char>(b[i % b.size()]);
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

}  // namespace hybridgen::server
