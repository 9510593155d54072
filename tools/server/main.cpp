// hybridgen-server: an OpenAI-compatible HTTP server on the HybridGen library, with continuous
// batching (batcher.h). Endpoints: POST /v1/completions, POST /v1/chat/completions (streaming
// with server-sent events, or not), GET /v1/models, GET /health, GET /metrics (Prometheus).
//
//   hybridgen-server -m model.gguf --parallel 4 --port 8080
//   curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json'
//        -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'
#include <httplib.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "api.h"
#include "batcher.h"
#include "common/attention_flags.h"
#include "hybridgen/hybridgen.h"
#include "util/log.h"

namespace {

using namespace hybridgen;
using namespace hybridgen::server;
using Clock = std::chrono::steady_clock;

std::string default_model_path() {
  if (const char* env = std::getenv("HYBRIDGEN_DEFAULT_MODEL")) return env;
  return std::string(HYBRIDGEN_SOURCE_DIR) + "/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::string read_key_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open the key file (--api-key-file)");
  std::string key;
  std::getline(in, key);
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ')) key.pop_back();
  if (key.empty()) throw Error(path + ": the key file (--api-key-file) is empty");
  return key;
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(dump(error_body(e)), "application/json");
}

struct ServerConfig {
  std::string api_key;
  size_t max_body_bytes = 2 << 20;
  int max_prompt_tokens = 0;  // 0: the context size - 1
  RequestLimits limits;
  int n_ctx = 0;
};

// Counts answers by status code for /metrics.
class StatusCounter {
 public:
  void add(int status) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counts_[status];
  }
  std::map<int, int64_t> get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return counts_;
  }

 private:
  mutable std::mutex mu_;
  std::map<int, int64_t> counts_;
};

std::string new_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%016llx%06llx", prefix, static_cast<unsigned long long>(salt),
                static_cast<unsigned long long>(counter.fetch_add(1)));
  return buf;
}

std::string metrics_text(const BatcherMetrics& m, const std::map<int, int64_t>& statuses,
                         int parallel) {
  std::ostringstream o;
  auto metric = [&](const char* name, const char* type, const char* help, auto value,
                    const std::string& labels = "") {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
      << name << labels << ' ' << value << '\n';
  };
  o << "# HELP hybridgen_http_responses_total HTTP responses by status code\n"
    << "# TYPE hybridgen_http_responses_total counter\n";
  for (const auto& [code, n] : statuses)
    o << "hybridgen_http_responses_total{code=\"" << code << "\"} " << n << '\n';
  o << "# HELP hybridgen_requests_finished_total completion requests that ended, by finish "
       "reason\n# TYPE hybridgen_requests_finished_total counter\n";
  o << "hybridgen_requests_finished_total{reason=\"stop\"} " << m.finished_stop << '\n'
    << "hybridgen_requests_finished_total{reason=\"length\"} " << m.finished_length << '\n'
    << "hybridgen_requests_finished_total{reason=\"cancelled\"} " << m.finished_cancelled << '\n'
    << "hybridgen_requests_finished_total{reason=\"error\"} " << m.finished_error << '\n';
  metric("hybridgen_requests_rejected_queue_full_total", "counter",
         "requests refused with 429 because the queue was full", m.rejected_queue_full);
  metric("hybridgen_prompt_tokens_total", "counter", "prompt tokens prefilled", m.prompt_tokens);
  metric("hybridgen_generated_tokens_total", "counter", "tokens generated", m.generated_tokens);
  metric("hybridgen_prefill_seconds_total", "counter", "seconds in prefill forward passes",
         m.prefill_seconds);
  metric("hybridgen_decode_seconds_total", "counter",
         "seconds in decode steps (forward + sampling)", m.decode_seconds);
  metric("hybridgen_decode_steps_total", "counter", "decode steps (all live sequences at once)",
         m.decode_steps);
  metric("hybridgen_prefill_tokens_per_second", "gauge",
         "prompt tokens per second of prefill, since start",
         m.prefill_seconds > 0 ? m.prompt_tokens / m.prefill_seconds : 0.0);
  metric("hybridgen_decode_tokens_per_second", "gauge",
         "tokens per second of decode steps (all sequences), since start",
         m.decode_seconds > 0 ? m.decode_tokens / m.decode_seconds : 0.0);
  metric("hybridgen_queue_depth", "gauge", "requests waiting for a sequence slot", m.queue_depth);
  metric("hybridgen_active_sequences", "gauge", "sequences being prefilled or decoded",
         m.active_sequences);
  metric("hybridgen_parallel_sequences", "gauge", "sequence slots (--parallel)", parallel);
  const AttentionStats& a = m.attention;
  o << "# HELP hybridgen_kv_bytes K+V bytes held by open sequences, by tier\n"
    << "# TYPE hybridgen_kv_bytes gauge\n";
  if (a.policy.empty() || a.policy == "full") {
    o << "hybridgen_kv_bytes{tier=\"device\"} " << m.kv_bytes << '\n';
  } else {
    o << "hybridgen_kv_bytes{tier=\"device_window\"} " << a.window_used << '\n'
      << "hybridgen_kv_bytes{tier=\"host_keys\"} " << a.key_store_used << '\n'
      << "hybridgen_kv_bytes{tier=\"host_values\"} " << a.value_store_used << '\n';
  }
  // The CPU stage's overlap: the share of its time hidden behind the device stage (1 - the
  // device stage's waits for it over the CPU stage's time); 0 when it did not run.
  metric("hybridgen_cpu_stage_overlap", "gauge",
         "share of the CPU stage's time hidden behind the device stage (policy hybrid)",
         a.t_cpu > 0 ? std::max(0.0, 1.0 - a.t_wait / a.t_cpu) : 0.0);
  metric("hybridgen_scheduler_mean_k", "gauge",
         "mean offloaded tokens used per KV head and attention pass (policy != full)", a.mean_k);
  metric("hybridgen_scheduler_k", "gauge", "the scheduler's current K", a.k_now);
  return o.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hybridgen-server: an OpenAI-compatible HTTP server with continuous batching"};
  LoadOptions load;
  load.model_path = default_model_path();
  std::string host = "127.0.0.1", api_key, api_key_file, alias, weight_format = "auto", log_level;
  int port = 8080, http_threads = 0;
  double grace_seconds = 30;
  bool verbose = false;
  BatcherOptions bopt;
  ServerConfig cfg;
  tools::AttentionFlagExtras attention_extras;

  app.add_option("-m,--model", load.model_path, "HF model directory or .gguf file")
      ->capture_default_str();
  app.add_option("--alias", alias, "model id clients use (default: the file name)");
  app.add_option("--device", load.device, "where the model runs: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("-c,--ctx-size", load.n_ctx,
                 "context size per sequence in tokens (0: min(model, 4096))")
      ->capture_default_str();
  app.add_option("-t,--threads", load.n_threads, "CPU threads (0: all cores)")
      ->capture_default_str();
  app.add_option("--weight-format", weight_format,
                 "weights for the CPU GEMMs: auto, f32, bf16, native (GGUF blocks as stored, "
                 "16-bit activations), native-q8 (the same blocks, llama.cpp's 8-bit activations)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "native", "native-q8"}))
      ->capture_default_str();
  tools::add_attention_flags(app, load.attention, attention_extras);
  app.add_option("--parallel", bopt.parallel, "sequences decoded together at most")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--queue", bopt.max_queue,
                 "requests that may wait for a free sequence; beyond, 429")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--prefill-chunk", bopt.prefill_chunk,
                 "prompt tokens per prefill pass of a newcomer (smaller: running sequences "
                 "stall less, prefill is slower)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--decode-rows", bopt.max_decode_rows,
                 "sequences per decode forward pass (0: all). The CPU backend's GEMV takes up "
                 "to 4 rows with the arithmetic of one (answers bitwise independent of who "
                 "else is served); more go to oneDNN's GEMM: faster, rounded differently")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--host", host, "address to bind (0.0.0.0: every interface)")
      ->capture_default_str();
  app.add_option("--port", port, "TCP port (0: any free port, printed at start)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  auto* key_opt = app.add_option("--api-key", api_key,
                                 "require 'Authorization: Bearer KEY' (all endpoints but /health)");
  app.add_option("--api-key-file", api_key_file, "read the API key from the first line of a file")
      ->excludes(key_opt);
  app.add_option("--max-body-bytes", cfg.max_body_bytes, "largest request body accepted (413)")
      ->check(CLI::Range(size_t{1024}, size_t{1} << 30))
      ->capture_default_str();
  app.add_option("--max-tokens", cfg.limits.max_tokens,
                 "largest max_tokens a request may ask (and the default when it asks none)")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  app.add_option("--max-prompt-tokens", cfg.max_prompt_tokens,
                 "longest prompt accepted, tokens (0: the context size - 1)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--http-threads", http_threads,
                 "HTTP worker threads (0: parallel + queue + 8; streams hold one each)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--grace-seconds", grace_seconds,
                 "on SIGTERM/SIGINT: how long running requests may finish before they are "
                 "cancelled")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("-v,--verbose", verbose, "log requests and details to stderr");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off (default warn)");
  CLI11_PARSE(app, argc, argv);

  // SIGTERM/SIGINT go to one thread (sigwait below), blocked everywhere else: the mask is
  // inherited by every thread created from here on.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not a signal

  try {
    if (verbose) set_log_level("info");
    if (!log_level.empty()) set_log_level(log_level);
    tools::apply_attention_flags(load.attention, attention_extras);
    load.weight_format = weight_format == "f32"         ? WeightFormat::kF32
                         : weight_format == "bf16"      ? WeightFormat::kBF16
                         : weight_format == "native"    ? WeightFormat::kNative
                         : weight_format == "native-q8" ? WeightFormat::kNativeQ8
                                                        : WeightFormat::kAuto;
    load.max_sequences = bopt.parallel;
    if (!api_key_file.empty()) api_key = read_key_file(api_key_file);
    cfg.api_key = api_key;
    if (!std::filesystem::exists(load.model_path))
      throw Error(load.model_path + (load.model_path == default_model_path()
                                         ? ": the default model is not downloaded yet; run "
                                           "models/fetch-default-model.sh or pass -m"
                                         : ": no such file or directory (the -m flag)"));

    Batcher batcher([&] { return Engine::load(load); }, bopt);
    Engine* engine = &batcher.engine();
    if (!engine->has_tokenizer())
      throw Error(engine->info().source +
                  " has no tokenizer; the server needs one (text in, "
                  "text out)");
    const ModelInfo& info = engine->info();
    cfg.n_ctx = info.n_ctx;
    cfg.limits.vocab_size = info.vocab_size;
    cfg.limits.model_id =
        !alias.empty() ? alias : std::filesystem::path(load.model_path).filename().string();
    if (cfg.limits.model_id.size() > 5 && cfg.limits.model_id.ends_with(".gguf"))
      cfg.limits.model_id.resize(cfg.limits.model_id.size() - 5);
    if (cfg.max_prompt_tokens <= 0 || cfg.max_prompt_tokens > info.n_ctx - 1)
      cfg.max_prompt_tokens = info.n_ctx - 1;
    const int64_t model_created = std::chrono::duration_cast<std::chrono::seconds>(
                                      std::chrono::system_clock::now().time_since_epoch())
                                      .count();

    StatusCounter statuses;
    std::atomic<int> open_streams{0};
    httplib::Server svr;
    const size_t n_http =
        http_threads > 0 ? size_t(http_threads) : size_t(bopt.parallel + bopt.max_queue + 8);
    svr.new_task_queue = [n_http] { return new httplib::ThreadPool(n_http); };
    svr.set_payload_max_length(cfg.max_body_bytes);
    svr.set_tcp_nodelay(true);  // one small write per token: no Nagle delay behind it
    svr.set_keep_alive_timeout(2);
    svr.set_read_timeout(10);
    svr.set_write_timeout(10);

    svr.set_logger([&](const httplib::Request& req, const httplib::Response& res) {
      statuses.add(res.status);
      log().info("{} {} -> {}", req.method, req.path, res.status);
    });
    // Errors httplib answers itself (404, 413, a malformed request line...) get a JSON body too.
    svr.set_error_handler(httplib::Server::HandlerWithResponse(
        [&](const httplib::Request& req, httplib::Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          std::string msg, param;
          if (res.status == 404) {
            msg = "no such endpoint: " + req.method + " " + req.path;
          } else if (res.status == 413) {
            msg = "the request body is larger than the limit of " +
                  std::to_string(cfg.max_body_bytes) + " bytes (--max-body-bytes)";
            param = "body";
          } else {
            msg = "HTTP error " + std::to_string(res.status);
          }
          const ApiError e(res.status, msg, param);
          res.set_content(dump(error_body(e)), "application/json");
          return httplib::Server::HandlerResponse::Handled;
        }));
    svr.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "unknown error";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          send_error(res, ApiError(500, "internal error: " + what, "", "server_error"));
        });
    // Who may use it: every endpoint but /health needs the key when one is set.
    svr.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
      if (cfg.api_key.empty() || req.path == "/health")
        return httplib::Server::HandlerResponse::Unhandled;
      const std::string auth = req.get_header_value("Authorization");
      const std::string prefix = "Bearer ";
      const bool ok =
          auth.size() > prefix.size() && auth.compare(0, prefix.size(), prefix) == 0 &&
          constant_time_equal(std::string_view(auth).substr(prefix.size()), cfg.api_key);
      if (ok) return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, ApiError(401,
                               auth.empty() ? "missing API key: send 'Authorization: Bearer KEY'"
                                            : "invalid API key",
                               "Authorization", "authentication_error"));
      return httplib::Server::HandlerResponse::Handled;
    });

    svr.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
      if (batcher.draining()) {
        res.status = 503;
        res.set_content(R"({"status":"draining"})", "application/json");
      } else {
        res.set_content(R"({"status":"ok"})", "application/json");
      }
    });
    svr.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(batcher.metrics(), statuses.get(), bopt.parallel),
                      "text/plain; version=0.0.4");
    });
    svr.Get("/v1/models", [&](const httplib::Request&, httplib::Response& res) {
      json model = {{"id", cfg.limits.model_id},
                    {"object", "model"},
                    {"created", model_created},
                    {"owned_by", "hybridgen"},
                    {"meta",
                     {{"n_ctx", info.n_ctx},
                      {"architecture", info.architecture},
                      {"n_params", info.n_params},
                      {"parallel", bopt.parallel},
                      {"policy", load.attention.policy}}}};
      res.set_content(dump(json{{"object", "list"}, {"data", json::array({model})}}),
                      "application/json");
    });

    auto completion = [&](Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
      try {
        const std::string ctype = req.get_header_value("Content-Type");
        if (!ctype.empty() && ctype.find("json") == std::string::npos)
          throw ApiError(415, "Content-Type must be application/json, got '" + ctype + "'",
                         "Content-Type");
        CompletionRequest r = parse_request(endpoint, req.body, cfg.limits);
        auto job = std::make_shared<Job>();
        if (endpoint == Endpoint::kCompletions) {
          job->prompt = r.prompt_is_ids ? r.prompt_ids : engine->tokenize(r.prompt, true, true);
        } else {
          std::string text;
          try {
            text = engine->apply_chat_template(r.messages, true);
          } catch (const std::exception& e) {
            throw ApiError(400, std::string("'messages': ") + e.what(), "messages");
          }
          // The template holds the BOS it wants (as hybridgen-run --chat tokenizes).
          job->prompt = engine->tokenize(text, false, true);
        }
        const char* pfield = endpoint == Endpoint::kCompletions ? "prompt" : "messages";
        if (job->prompt.empty())
          throw ApiError(400, std::string("'") + pfield + "': the prompt has no tokens", pfield);
        if (static_cast<int>(job->prompt.size()) > cfg.max_prompt_tokens)
          throw ApiError(400,
                         std::string("'") + pfield + "': the prompt has " +
                             std::to_string(job->prompt.size()) +
                             " tokens; this server takes at most " +
                             std::to_string(cfg.max_prompt_tokens) + " (context size " +
                             std::to_string(cfg.n_ctx) + ")",
                         pfield);
        job->max_tokens = r.max_tokens;
        job->sampling = r.sampling;
        if (!r.seed_given) job->sampling.seed = std::random_device{}();
        job->stop = r.stop;
        job->stop_at_eog = !r.ignore_eos;
        const int n_prompt = static_cast<int>(job->prompt.size());
        switch (batcher.submit(job)) {
          case Batcher::Submit::kQueued:
            break;
          case Batcher::Submit::kQueueFull:
            throw ApiError(429,
                           "the server is busy: " + std::to_string(bopt.parallel) +
                               " requests running and " + std::to_string(bopt.max_queue) +
                               " waiting (--parallel, --queue); retry later",
                           "", "rate_limit_error");
          case Batcher::Submit::kDraining:
            throw ApiError(503, "the server is shutting down", "", "server_error");
        }
        ResponseId rid{new_id(endpoint == Endpoint::kCompletions ? "cmpl" : "chatcmpl"),
                       std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count(),
                       cfg.limits.model_id};
        if (!r.stream) {
          std::string text;
          Job::Update u;
          do {
            u = job->wait(std::chrono::milliseconds(200));
            text += u.text;
          } while (!u.finished);
          if (job->finish_reason() == "error")
            throw ApiError(500, "generation failed: " + job->error(), "", "server_error");
          if (job->finish_reason() == "cancelled")
            throw ApiError(503, "the request was cancelled (server shutting down)", "",
                           "server_error");
          res.set_content(dump(completion_body(endpoint, rid, text, job->finish_reason(),
                                               {n_prompt, job->completion_tokens()})),
                          "application/json");
          return;
        }
        res.set_header("Cache-Control", "no-cache");
        ++open_streams;
        auto first = std::make_shared<bool>(true);
        res.set_chunked_content_provider(
            "text/event-stream",
            [job, rid, endpoint, first, n_prompt, include_usage = r.include_usage](
                size_t, httplib::DataSink& sink) {
              auto send = [&](const std::string& s) {
                if (sink.write(s.data(), s.size())) return true;
                job->cancel();  // the client went away: free its sequence at the next step
                return false;
              };
              if (*first && endpoint == Endpoint::kChatCompletions) {
                *first = false;
                if (!send(sse_event(stream_chunk(endpoint, rid, "", std::nullopt, true))))
                  return false;
              }
              const Job::Update u = job->wait(std::chrono::milliseconds(100));
              if (!sink.is_writable()) {
                job->cancel();
                return false;
              }
              if (!u.text.empty() &&
                  !send(sse_event(stream_chunk(endpoint, rid, u.text, std::nullopt, false))))
                return false;
              if (!u.finished) return true;
              const std::string reason = job->finish_reason();
              if (reason == "error" || reason == "cancelled") {
                const ApiError e(reason == "error" ? 500 : 503,
                                 reason == "error" ? "generation failed: " + job->error()
                                                   : "the request was cancelled (server "
                                                     "shutting down)",
                                 "", "server_error");
                if (!send(sse_event(error_body(e)))) return false;
              } else {
                if (!send(sse_event(stream_chunk(endpoint, rid, "", reason, false)))) return false;
                if (include_usage && !send(sse_event(stream_usage_chunk(
                                         endpoint, rid, {n_prompt, job->completion_tokens()}))))
                  return false;
              }
              if (!send("data: [DONE]\n\n")) return false;
              sink.done();
              return true;
            },
            [job, &open_streams](bool success) {
              if (!success) job->cancel();
              --open_streams;
            });
      } catch (const ApiError& e) {
        send_error(res, e);
      }
    };
    svr.Post("/v1/completions", [&](const httplib::Request& req, httplib::Response& res) {
      completion(Endpoint::kCompletions, req, res);
    });
    svr.Post("/v1/chat/completions", [&](const httplib::Request& req, httplib::Response& res) {
      completion(Endpoint::kChatCompletions, req, res);
    });
    for (const char* path : {"/v1/completions", "/v1/chat/completions"})
      svr.Get(path, [](const httplib::Request& req, httplib::Response& res) {
        res.set_header("Allow", "POST");
        send_error(res, ApiError(405, req.path + " takes POST, not GET", "method"));
      });

    const int bound =
        port == 0 ? svr.bind_to_any_port(host) : (svr.bind_to_port(host, port) ? port : -1);
    if (bound < 0)
      throw Error("cannot listen on " + host + ":" + std::to_string(port) +
                  " (the --host / --port flags: address in use or not local?)");

    // SIGTERM/SIGINT: stop taking requests, let the running ones finish within the grace
    // period, cancel the rest, then stop the HTTP server; main returns 0.
    std::thread signals([&] {
      int sig = 0;
      sigwait(&sigs, &sig);
      std::fprintf(stderr, "hybridgen-server: %s, draining (grace %.0f s)\n",
                   sig == SIGTERM ? "SIGTERM" : "SIGINT", grace_seconds);
      batcher.start_draining();
      const auto deadline =
          Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000));
      if (!batcher.wait_idle(deadline)) {
        std::fprintf(stderr, "hybridgen-server: grace period over, cancelling what runs\n");
        batcher.cancel_all();
        batcher.wait_idle(Clock::now() + std::chrono::seconds(10));
      }
      // Let the streams write their last events (bounded: a stuck client cannot hold us).
      const auto flush_deadline = Clock::now() + std::chrono::seconds(5);
      while (open_streams.load() > 0 && Clock::now() < flush_deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      svr.stop();
    });
    std::printf("hybridgen-server: listening on http://%s:%d (model %s, %d parallel, context %d)\n",
                host.c_str(), bound, cfg.limits.model_id.c_str(), bopt.parallel, info.n_ctx);
    std::fflush(stdout);
    svr.listen_after_bind();
    // listen returned: either the signal thread stopped it, or it failed; wake the signal thread
    // in the latter case so that it can be joined.
    if (signals.joinable()) {
      if (!batcher.draining()) pthread_kill(signals.native_handle(), SIGTERM);
      signals.join();
    }
    std::fprintf(stderr, "hybridgen-server: stopped\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
