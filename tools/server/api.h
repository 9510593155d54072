// The OpenAI API of hybridgen-server, without HTTP: request parsing and validation, stop
// strings across token boundaries, response and stream-chunk bodies, error bodies. Everything
// here is pure (no engine, no sockets) so that it is unit-tested, also under the sanitizers.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "hybridgen/chat.h"
#include "hybridgen/config.h"

namespace hybridgen::server {

using json = nlohmann::json;

// An error answered to the client: HTTP status, OpenAI error type and the request field at
// fault ("" when none), e.g. {400, "invalid_request_error", "max_tokens"}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = "",
           std::string type = "invalid_request_error")
      : std::runtime_error(std::move(message)),
        status_(status),
        param_(std::move(param)),
        type_(std::move(type)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }

 private:
  int status_;
  std::string param_, type_;
};

// {"error": {"message", "type", "param", "code"}} as the OpenAI API answers.
json error_body(const ApiError& e);

enum class Endpoint { kCompletions, kChatCompletions };

// What a request may ask, set by the server's flags.
struct RequestLimits {
  std::string model_id;      // the one model served; a request naming another is a 400
  int max_tokens = 2048;     // largest max_tokens accepted (and the default when absent)
  int max_stop = 4;          // stop strings per request (OpenAI: 4)
  int max_stop_bytes = 256;  // bytes per stop string
  int max_messages = 256;    // chat messages per request
  int vocab_size = 0;        // token-id prompts are checked against it (0: not checked)
};

// A parsed, validated request. Field ranges follow the OpenAI API where it has the field.
struct CompletionRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string prompt;               // completions: the prompt text
  std::vector<int32_t> prompt_ids;  // completions: a prompt given as token ids instead
  bool prompt_is_ids = false;
  std::vector<ChatMessage> messages;  // chat
  int max_tokens = 0;                 // >= 1; the limit's value when absent
  bool max_tokens_given = false;
  SamplingParams sampling;  // temperature 1, top_p 1, top_k off, min_p off by default
  bool seed_given = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // extension (llama.cpp's server has it): generate max_tokens
};

// Parses a request body. Throws ApiError (400, naming the field) on malformed JSON, a body that
// is not an object, wrong types, values out of range, a model that is not the one served, a
// missing prompt/messages, n != 1. Unknown fields are ignored, as the OpenAI API does.
CompletionRequest parse_request(Endpoint endpoint, std::string_view body,
                                const RequestLimits& limits);

// Bytes at the end of `s` that begin a UTF-8 sequence not yet complete (0-3): streamed text
// holds them back until the next token completes the character.
size_t incomplete_utf8_tail(std::string_view s);

// Stop strings matched over generated text as it streams, across token boundaries: push()
// returns the text that can no longer be part of a stop string; text that might still begin one
// is held back. When a stop string completes, the text before it is returned, stopped() turns
// true and everything after it is dropped.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  std::string push(std::string_view text);
  std::string flush();  // at the end of generation: whatever was held back
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};
json usage_json(const Usage& u);

// Identity of one response: "cmpl-..." / "chatcmpl-...", creation time, model.
struct ResponseId {
  std::string id;
  int64_t created = 0;
  std::string model;
};

// The whole (non-streamed) response body.
json completion_body(Endpoint endpoint, const ResponseId& rid, const std::string& text,
                     const std::string& finish_reason, const Usage& usage);
// One server-sent-event chunk: `text` as the delta; finish_reason set on the last one. The
// first chat chunk carries the role.
json stream_chunk(Endpoint endpoint, const ResponseId& rid, const std::string& text,
                  const std::optional<std::string>& finish_reason, bool first);
// The usage chunk of stream_options.include_usage: empty choices, usage set.
json stream_usage_chunk(Endpoint endpoint, const ResponseId& rid, const Usage& usage);

// "data: <json>\n\n". Invalid UTF-8 in generated text (a model can emit stray bytes) becomes
// U+FFFD rather than an exception.
std::string sse_event(const json& j);
std::string dump(const json& j);

// Constant-time comparison of a presented credential with the expected one: the time depends on
// the lengths only, never on where the bytes differ.
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace hybridgen::server
