// Continuous batching for hybridgen-server: one engine thread owns the Engine. Requests wait in
// a bounded queue, join the running batch between forward steps (at most `parallel` at once),
// have their prompts prefilled in chunks, then decode one token per step together with every
// other running sequence; a finished or cancelled request leaves at the next step and its
// sequence (and KV) is closed.
//
// One engine iteration:
//   1. drop cancelled requests (client gone, shutdown), admit queued ones into free slots
//   2. prefill chunks of the requests still prefilling, oldest first, each in a forward pass of
//      its own, up to --prefill-chunk prompt tokens in all (the first chunk always runs)
//   3. one decode step over every request that has a sampled token to feed
// A prefill chunk runs alone rather than mixed into the decode step so that each sequence sees
// the same forward shapes as it would alone: greedy answers do not depend on who else is served.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hybridgen/engine.h"

namespace hybridgen::server {

// One request's work and its output channel. The HTTP thread fills the inputs, submits, then
// waits for text; the engine thread appends text and finally sets finished.
class Job {
 public:
  // ---- inputs (set before submit) ----
  std::vector<int32_t> prompt;
  int max_tokens = 16;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool stop_at_eog = true;  // false: the request's ignore_eos

  // ---- consumer side ----
  struct Update {
    std::string text;  // new text since the last take
    bool finished = false;
  };
  // Waits up to `timeout` for new text or the end; takes the text produced so far.
  Update wait(std::chrono::milliseconds timeout);
  // Asks the engine thread to drop the request at its next step (the client went away).
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  // Valid once finished: "stop", "length", "cancelled" or "error" (error() says why).
  std::string finish_reason() const;
  std::string error() const;
  int completion_tokens() const;
  std::vector<int32_t> tokens() const;  // every generated id so far (end of generation included)

  // ---- producer side (the engine thread) ----
  void emit(const std::string& text);
  void add_token(int32_t token);
  void finish(const std::string& reason, int completion_tokens, const std::string& error = "");

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
  std::vector<int32_t> tokens_;
  bool finished_ = false;
  std::string finish_reason_, error_;
  int completion_tokens_ = 0;
  std::atomic<bool> cancelled_{false};
};

struct BatcherOptions {
  int parallel = 4;         // sequences decoded together (the engine's max_sequences)
  int max_queue = 64;       // requests waiting for a slot; more are refused (429)
  int prefill_chunk = 512;  // prompt tokens per prefill forward pass
  // Rows (sequences) per decode forward pass; 0: all in one. The CPU backend computes up to 4
  // rows per pass over the weights with exactly the arithmetic of one row (its GEMV), so 4
  // keeps every answer bitwise what it would be alone; more rows per pass go to oneDNN's GEMM,
  // which reads the weights once for all of them (faster) but rounds differently, so a greedy
  // answer can differ from the single-request one where two logits nearly tie.
  int max_decode_rows = 4;
};

// Counters and gauges for /metrics, a consistent snapshot.
struct BatcherMetrics {
  int64_t requests_finished = 0;  // of which:
  int64_t finished_stop = 0, finished_length = 0, finished_cancelled = 0, finished_error = 0;
  int64_t rejected_queue_full = 0;
  int64_t prompt_tokens = 0;     // prefilled
  int64_t generated_tokens = 0;  // sampled (the first of each request from its prefill)
  int64_t decode_tokens = 0;     // sampled after a decode step
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t decode_steps = 0;
  int queue_depth = 0;
  int active_sequences = 0;
  uint64_t kv_bytes = 0;     // policy full: K+V of the open sequences
  AttentionStats attention;  // the hybrid runtime (policy != full); refreshed at most 2x/s
};

class Batcher {
 public:
  // Serves an engine loaded by the caller.
  Batcher(Engine& engine, const BatcherOptions& options);
  // Loads the engine on the engine thread itself (throws what `load` throws). The server does
  // this: an engine loaded on another thread leaves that thread's OpenMP team behind, and with
  // two teams on the machine libgomp stops spinning between parallel regions (it throttles when
  // it manages more threads than there are cores), which made each decode step 2-3x slower on
  // a 2-core machine with -t 2.
  Batcher(const std::function<std::unique_ptr<Engine>()>& load, const BatcherOptions& options);
  Engine& engine() { return *engine_; }
  ~Batcher();  // cancels everything and joins the engine thread
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  enum class Submit { kQueued, kQueueFull, kDraining };
  Submit submit(std::shared_ptr<Job> job);

  // Refuse new requests from now on (SIGTERM); running and queued ones continue.
  void start_draining();
  bool draining() const;
  // Every queued and running request ends with finish_reason "cancelled".
  void cancel_all();
  // Waits until nothing is queued or running, or the deadline; true when idle.
  bool wait_idle(std::chrono::steady_clock::time_point deadline);
  BatcherMetrics metrics() const;

 private:
  struct Active;
  void run();
  void admit(std::vector<std::unique_ptr<Active>>& active);
  std::string handle_token(Active& a, int32_t token);  // "" or the finish reason
  void end(std::unique_ptr<Active>& a, const std::string& reason, const std::string& error = "");

  std::unique_ptr<Engine> owned_;  // the engine loaded by the engine thread, if it was
  Engine* engine_ = nullptr;
  BatcherOptions opt_;
  mutable std::mutex mu_;
  std::condition_variable cv_;       // work arrived / stop
  std::condition_variable idle_cv_;  // the engine became idle
  std::deque<std::shared_ptr<Job>> queue_;
  int active_count_ = 0;  // mirrors the engine thread's active list, under mu_
  bool stop_ = false, draining_ = false, cancel_all_ = false;
  BatcherMetrics metrics_;  // under mu_
  std::chrono::steady_clock::time_point last_attention_refresh_{};
  std::thread thread_;
};

}  // namespace hybridgen::server
