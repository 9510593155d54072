// hybridgen-server's request parsing and validation, stop strings across token boundaries, UTF-8
// hold-back and the constant-time key comparison (tools/server/api.h). No engine, no sockets:
// runs under ASan/UBSan and TSan.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "api.h"

namespace {

using namespace hybridgen::server;

RequestLimits limits() {
  RequestLimits l;
  l.model_id = "smol";
  l.max_tokens = 100;
  l.vocab_size = 1000;
  return l;
}

CompletionRequest completion(const std::string& body) {
  return parse_request(Endpoint::kCompletions, body, limits());
}
CompletionRequest chat(const std::string& body) {
  return parse_request(Endpoint::kChatCompletions, body, limits());
}

// The ApiError's status and field for a body that must be refused.
std::pair<int, std::string> refusal(Endpoint e, const std::string& body) {
  try {
    parse_request(e, body, limits());
  } catch (const ApiError& err) {
    EXPECT_NE(std::string(err.what()), "");
    return {err.status(), err.param()};
  }
  ADD_FAILURE() << "accepted: " << body;
  return {0, ""};
}

TEST(ServerApi, ParsesACompletionWithDefaults) {
  const CompletionRequest r = completion(R"({"prompt": "hello", "model": "smol"})");
  EXPECT_EQ(r.prompt, "hello");
  EXPECT_FALSE(r.prompt_is_ids);
  EXPECT_EQ(r.max_tokens, 100);  // the limit when absent
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.0f);
  EXPECT_FALSE(r.stream);
  EXPECT_TRUE(r.stop.empty());
}

TEST(ServerApi, ParsesEveryField) {
  const CompletionRequest r = completion(
      R"({"prompt": ["hi"], "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3,
          "min_p": 0.1, "seed": -4, "stop": ["a", "bc"], "stream": true, "n": 1,
          "stream_options": {"include_usage": true}, "ignore_eos": true,
          "logprobs": null, "user": "someone", "frequency_penalty": 0})");
  EXPECT_EQ(r.prompt, "hi");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 3);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.sampling.seed, static_cast<uint64_t>(int64_t{-4}));
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.ignore_eos);
}

TEST(ServerApi, TokenIdPromptsAndNullsAsAbsent) {
  const CompletionRequest r = completion(R"({"prompt": [1, 2, 999], "max_tokens": null})");
  EXPECT_TRUE(r.prompt_is_ids);
  EXPECT_EQ(r.prompt_ids, (std::vector<int32_t>{1, 2, 999}));
  EXPECT_EQ(r.max_tokens, 100);
}

TEST(ServerApi, ParsesChatMessages) {
  const CompletionRequest r = chat(
      R"({"messages": [{"role": "developer", "content": "be brief"},
                       {"role": "user", "content": [{"type": "text", "text": "a"},
                                                    {"type": "text", "text": "b"}]},
                       {"role": "assistant", "content": "ok"}],
          "max_completion_tokens": 5, "max_tokens": 9})");
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(r.messages[2].role, "assistant");
  EXPECT_EQ(r.max_tokens, 5);  // max_completion_tokens wins
}

TEST(ServerApi, RefusesBadInputNamingTheField) {
  const Endpoint C = Endpoint::kCompletions, H = Endpoint::kChatCompletions;
  const std::vector<std::tuple<Endpoint, std::string, std::string>> cases = {
      {C, R"({"prompt": "a", )", "body"},
      {C, "", "body"},
      {C, "[1]", "body"},
      {C, "\"just a string\"", "body"},
      {C, "{\"prompt\": \"\xff\"}", "body"},  // invalid UTF-8
      {C, R"({"prompt": "a", "max_tokens": 1e999})", "body"},
      {C, R"({"prompt": "a", "max_tokens": 0})", "max_tokens"},
      {C, R"({"prompt": "a", "max_tokens": -1})", "max_tokens"},
      {C, R"({"prompt": "a", "max_tokens": 101})", "max_tokens"},
      {C, R"({"prompt": "a", "max_tokens": 18446744073709551615})", "max_tokens"},
      {C, R"({"prompt": "a", "max_tokens": 99999999999999999999999})", "max_tokens"},
      {C, R"({"prompt": "a", "max_tokens": 2.5})", "max_tokens"},
      {C, R"({"prompt": "a", "max_tokens": true})", "max_tokens"},
      {C, R"({"prompt": "a", "temperature": 2.5})", "temperature"},
      {C, R"({"prompt": "a", "temperature": -0.1})", "temperature"},
      {C, R"({"prompt": "a", "temperature": "1"})", "temperature"},
      {C, R"({"prompt": "a", "top_p": 0})", "top_p"},
      {C, R"({"prompt": "a", "top_p": 1.5})", "top_p"},
      {C, R"({"prompt": "a", "top_k": -1})", "top_k"},
      {C, R"({"prompt": "a", "min_p": 2})", "min_p"},
      {C, R"({"prompt": "a", "seed": "x"})", "seed"},
      {C, R"({"prompt": "a", "n": 3})", "n"},
      {C, R"({"prompt": "a", "stream": 1})", "stream"},
      {C, R"({"prompt": "a", "stream_options": {"include_usage": true}})", "stream_options"},
      {C, R"({"prompt": "a", "stop": ["1", "2", "3", "4", "5"]})", "stop"},
      {C, R"({"prompt": "a", "stop": [""]})", "stop"},
      {C, R"({"prompt": "a", "stop": 3})", "stop"},
      {C, R"({"prompt": "a", "stop": ["ok", null]})", "stop[1]"},
      {C, R"({"prompt": "a", "model": "other"})", "model"},
      {C, R"({"prompt": "a", "model": 3})", "model"},
      {C, R"({"max_tokens": 3})", "prompt"},
      {C, R"({"prompt": ""})", "prompt"},
      {C, R"({"prompt": []})", "prompt"},
      {C, R"({"prompt": ["a", "b"]})", "prompt"},
      {C, R"({"prompt": [1, 1000]})", "prompt[1]"},
      {C, R"({"prompt": [1, -2]})", "prompt[1]"},
      {C, R"({"prompt": {"text": "a"}})", "prompt"},
      {H, R"({"prompt": "a"})", "messages"},
      {H, R"({"messages": {}})", "messages"},
      {H, R"({"messages": []})", "messages"},
      {H, R"({"messages": ["hi"]})", "messages[0]"},
      {H, R"({"messages": [{"content": "hi"}]})", "messages[0].role"},
      {H, R"({"messages": [{"role": "root", "content": "hi"}]})", "messages[0].role"},
      {H, R"({"messages": [{"role": "user"}]})", "messages[0].content"},
      {H, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content[0].type"},
      {H, R"({"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0})",
       "max_completion_tokens"},
  };
  for (const auto& [endpoint, body, field] : cases) {
    const auto [status, param] = refusal(endpoint, body);
    EXPECT_EQ(status, 400) << body;
    EXPECT_EQ(param, field) << body;
  }
}

TEST(ServerApi, ErrorBodyIsOpenAiShaped) {
  const json j = error_body(ApiError(400, "'max_tokens': must be >= 1", "max_tokens"));
  EXPECT_EQ(j["error"]["param"], "max_tokens");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["message"], "'max_tokens': must be >= 1");
  EXPECT_TRUE(j["error"]["code"].is_null());
  EXPECT_TRUE(error_body(ApiError(404, "x"))["error"]["param"].is_null());
}

// Feeds `pieces` (token texts) through a matcher; returns the emitted text.
std::string run_stops(const std::vector<std::string>& stops, const std::vector<std::string>& pieces,
                      bool* stopped = nullptr) {
  StopMatcher m(stops);
  std::string out;
  for (const std::string& p : pieces) {
    out += m.push(p);
    if (m.stopped()) break;
  }
  out += m.flush();
  if (stopped) *stopped = m.stopped();
  return out;
}

TEST(StopMatcher, MatchesAcrossTokenBoundaries) {
  bool stopped = false;
  EXPECT_EQ(run_stops({"END"}, {"Hello", " E", "N", "D", " more"}, &stopped), "Hello ");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(run_stops({"\n\n"}, {"a\n", "\nb"}, &stopped), "a");
  EXPECT_TRUE(stopped);
  // Within one token, and the earliest of several stop strings wins.
  EXPECT_EQ(run_stops({"xyz", "b"}, {"aaxyzb"}, &stopped), "aa");
  EXPECT_EQ(run_stops({"xyz", "b"}, {"abxyz"}, &stopped), "a");
}

TEST(StopMatcher, HoldsBackOnlyWhatCouldStillMatch) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.push("abc S"), "abc ");  // "S" may begin STOP
  EXPECT_EQ(m.push("T"), "");
  EXPECT_EQ(m.push("x"), "STx");  // it did not: released in order
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push("STO"), "");
  EXPECT_EQ(m.flush(), "STO");  // end of generation: the held text is output
  // A partial match followed by a real one.
  bool stopped = false;
  EXPECT_EQ(run_stops({"aab"}, {"a", "a", "a", "b", "c"}, &stopped), "a");
  EXPECT_TRUE(stopped);
}

TEST(StopMatcher, NoStopsPassesEverything) {
  bool stopped = true;
  EXPECT_EQ(run_stops({}, {"a", "b"}, &stopped), "ab");
  EXPECT_FALSE(stopped);
}

TEST(StopMatcher, AfterStopNothingMore) {
  StopMatcher m({"."});
  EXPECT_EQ(m.push("Hi. there"), "Hi");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(Utf8, IncompleteTail) {
  EXPECT_EQ(incomplete_utf8_tail(""), 0u);
  EXPECT_EQ(incomplete_utf8_tail("abc"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("a\xC3"), 1u);         // é's first byte
  EXPECT_EQ(incomplete_utf8_tail("a\xC3\xA9"), 0u);     // é complete
  EXPECT_EQ(incomplete_utf8_tail("\xE2\x82"), 2u);      // € missing its last byte
  EXPECT_EQ(incomplete_utf8_tail("\xF0\x9F\x98"), 3u);  // an emoji missing one byte
  EXPECT_EQ(incomplete_utf8_tail("\xF0\x9F\x98\x80"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("\x80"), 0u);  // a stray continuation byte
}

TEST(Responses, ShapesAndInvalidUtf8) {
  const ResponseId rid{"cmpl-1", 42, "smol"};
  const json c = completion_body(Endpoint::kCompletions, rid, "hi", "length", {3, 2});
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "hi");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c["usage"]["total_tokens"], 5);
  const json h = completion_body(Endpoint::kChatCompletions, rid, "yo", "stop", {1, 1});
  EXPECT_EQ(h["choices"][0]["message"]["content"], "yo");
  EXPECT_EQ(h["choices"][0]["message"]["role"], "assistant");
  const json first = stream_chunk(Endpoint::kChatCompletions, rid, "", std::nullopt, true);
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json last = stream_chunk(Endpoint::kChatCompletions, rid, "", "stop", false);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(stream_usage_chunk(Endpoint::kCompletions, rid, {2, 3})["usage"]["total_tokens"], 5);
  // A model's stray byte must not throw: it becomes U+FFFD.
  const std::string ev =
      sse_event(stream_chunk(Endpoint::kCompletions, rid, "a\xff", std::nullopt, false));
  EXPECT_EQ(ev.rfind("data: ", 0), 0u);
  EXPECT_NE(ev.find("a\xEF\xBF\xBD"), std::string::npos);
  EXPECT_EQ(ev.substr(ev.size() - 2), "\n\n");
}

TEST(ApiKey, ConstantTimeEqual) {
  EXPECT_TRUE(constant_time_equal("sk-abc", "sk-abc"));
  EXPECT_FALSE(constant_time_equal("sk-abd", "sk-abc"));
  EXPECT_FALSE(constant_time_equal("sk-ab", "sk-abc"));
  EXPECT_FALSE(constant_time_equal("sk-abcd", "sk-abc"));
  EXPECT_FALSE(constant_time_equal("", "sk-abc"));
  EXPECT_FALSE(constant_time_equal("x", ""));
}

}  // namespace
