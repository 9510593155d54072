#include "batcher.h"

#include <algorithm>
#include <future>

#include "api.h"
#include "runtime/sampler.h"
#include "util/check.h"
#include "util/log.h"

namespace hybridgen::server {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

// ---- Job ------------------------------------------------------------------------------------

Job::Update Job::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return finished_ || !text_.empty(); });
  Update u;
  u.text = std::exchange(text_, std::string());
  u.finished = finished_;
  return u;
}

std::string Job::finish_reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finish_reason_;
}

std::string Job::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

int Job::completion_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return completion_tokens_;
}

std::vector<int32_t> Job::tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tokens_;
}

void Job::add_token(int32_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_.push_back(token);
}

void Job::emit(const std::string& text) {
  if (text.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    text_ += text;
  }
  cv_.notify_all();
}

void Job::finish(const std::string& reason, int completion_tokens, const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
    finish_reason_ = reason;
    completion_tokens_ = completion_tokens;
    error_ = error;
  }
  cv_.notify_all();
}

// ---- Batcher --------------------------------------------------------------------------------

// A request in the running batch (engine thread only).
struct Batcher::Active {
  std::shared_ptr<Job> job;
  int seq = -1;
  size_t prefilled = 0;          // prompt tokens in the KV cache
  int32_t next = -1;             // sampled, to be fed at the next decode step (-1: none)
  std::vector<int32_t> history;  // prompt + generated, for the repetition penalty
  Sampler sampler;
  std::string utf8;  // token bytes not yet a complete character
  StopMatcher stops;
  int generated = 0;

  Active(std::shared_ptr<Job> j, int s)
      : job(std::move(j)), seq(s), history(job->prompt), sampler(job->sampling), stops(job->stop) {}
  bool prefilling() const { return prefilled < job->prompt.size(); }
};

namespace {
void check_options(const BatcherOptions& o) {
  HG_CHECK(o.parallel >= 1, "--parallel must be >= 1");
  HG_CHECK(o.max_queue >= 0, "--queue must be >= 0");
  HG_CHECK(o.prefill_chunk >= 1, "--prefill-chunk must be >= 1");
  HG_CHECK(o.max_decode_rows >= 0, "--decode-rows must be >= 0");
}
}  // namespace

Batcher::Batcher(Engine& engine, const BatcherOptions& options) : engine_(&engine), opt_(options) {
  check_options(opt_);
  thread_ = std::thread([this] { run(); });
}

Batcher::Batcher(const std::function<std::unique_ptr<Engine>()>& load,
                 const BatcherOptions& options)
    : opt_(options) {
  check_options(opt_);
  std::promise<void> loaded;
  std::future<void> ready = loaded.get_future();
  thread_ = std::thread([this, &load, &loaded] {
    try {
      owned_ = load();
      engine_ = owned_.get();
      loaded.set_value();
    } catch (...) {
      loaded.set_exception(std::current_exception());
      return;
    }
    run();
  });
  try {
    ready.get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

Batcher::~Batcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cancel_all_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Batcher::Submit Batcher::submit(std::shared_ptr<Job> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_ || stop_) return Submit::kDraining;
    // Free slots take requests at once; the queue holds the ones beyond them.
    const int waiting = static_cast<int>(queue_.size());
    const int free_slots = std::max(0, opt_.parallel - active_count_);
    if (waiting - free_slots >= opt_.max_queue) {
      ++metrics_.rejected_queue_full;
      return Submit::kQueueFull;
    }
    queue_.push_back(std::move(job));
    metrics_.queue_depth = static_cast<int>(queue_.size());
  }
  cv_.notify_all();
  return Submit::kQueued;
}

void Batcher::start_draining() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

bool Batcher::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return draining_;
}

void Batcher::cancel_all() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_all_ = true;
  }
  cv_.notify_all();
}

bool Batcher::wait_idle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [&] { return queue_.empty() && active_count_ == 0; });
}

BatcherMetrics Batcher::metrics() const {
  std::lock_guard<std::mutex> lock(mu_);
  return metrics_;
}

void Batcher::end(std::unique_ptr<Active>& a, const std::string& reason, const std::string& error) {
  if (reason != "cancelled" && reason != "error") {
    // The text held back for a possible stop string or an unfinished character is real output.
    std::string rest = a->stops.push(a->utf8);
    rest += a->stops.flush();
    a->job->emit(rest);
  }
  engine_->close_sequence(a->seq);
  a->job->finish(reason, a->generated, error);
  std::lock_guard<std::mutex> lock(mu_);
  ++metrics_.requests_finished;
  if (reason == "stop") ++metrics_.finished_stop;
  if (reason == "length") ++metrics_.finished_length;
  if (reason == "cancelled") ++metrics_.finished_cancelled;
  if (reason == "error") ++metrics_.finished_error;
  a.reset();
}

// Streams the token's text through the UTF-8 assembly and the stop strings. Returns "" while the
// request goes on (the token is then fed at the next decode step), else its finish reason.
std::string Batcher::handle_token(Active& a, int32_t token) {
  ++a.generated;
  a.history.push_back(token);
  a.job->add_token(token);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++metrics_.generated_tokens;
  }
  if (a.job->stop_at_eog && engine_->is_end_of_generation(token))
    return "stop";                                                      // its text is not shown
  if (engine_->has_tokenizer()) a.utf8 += engine_->token_bytes(token);  // else: ids only
  const size_t hold = incomplete_utf8_tail(a.utf8);
  const std::string complete = a.utf8.substr(0, a.utf8.size() - hold);
  a.utf8.erase(0, a.utf8.size() - hold);
  a.job->emit(a.stops.push(complete));
  if (a.stops.stopped()) return "stop";
  if (a.generated >= a.job->max_tokens) return "length";
  if (engine_->sequence_length(a.seq) + 1 > engine_->info().n_ctx) return "length";  // context full
  a.next = token;
  return "";
}

void Batcher::admit(std::vector<std::unique_ptr<Active>>& active) {
  std::vector<std::shared_ptr<Job>> admitted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!queue_.empty() && static_cast<int>(active.size() + admitted.size()) < opt_.parallel) {
      admitted.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    metrics_.queue_depth = static_cast<int>(queue_.size());
  }
  for (auto& job : admitted) {
    if (job->cancelled()) {
      job->finish("cancelled", 0);
      std::lock_guard<std::mutex> lock(mu_);
      ++metrics_.requests_finished;
      ++metrics_.finished_cancelled;
      continue;
    }
    active.push_back(std::make_unique<Active>(std::move(job), engine_->open_sequence()));
  }
}

void Batcher::run() {
  std::vector<std::unique_ptr<Active>> active;
  std::vector<float> logits, step_logits;
  const int vocab = engine_->info().vocab_size;
  const bool hybrid = engine_->attention_stats().policy != "full";
  while (true) {
    bool cancel_everything = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (active.empty()) cv_.wait(lock, [&] { return stop_ || cancel_all_ || !queue_.empty(); });
      if (cancel_all_) {
        cancel_everything = true;
        cancel_all_ = false;
        for (auto& job : queue_) job->cancel();
      }
      if (stop_ && queue_.empty() && active.empty()) break;
    }
    if (cancel_everything)
      for (auto& a : active) a->job->cancel();
    for (auto& a : active)
      if (a->job->cancelled()) end(a, "cancelled");
    std::erase(active, nullptr);
    admit(active);
    {
      std::lock_guard<std::mutex> lock(mu_);
      active_count_ = static_cast<int>(active.size());
    }

    try {
      // ---- prefill: up to --prefill-chunk prompt tokens per iteration, oldest first ----
      // Each chunk is its own forward pass and chunk boundaries sit at multiples of the chunk
      // size from the prompt's start, so a prompt is cut exactly as it would be alone. The first
      // chunk always runs; more run while they fit the budget (many short prompts arriving at
      // once get their first tokens sooner, the running streams still wait at most about one
      // chunk's worth of prefill per step).
      size_t budget = static_cast<size_t>(opt_.prefill_chunk);
      bool first_chunk = true;
      for (auto& a : active) {
        if (!a || !a->prefilling()) continue;
        const size_t next_chunk =
            std::min(a->job->prompt.size() - a->prefilled, static_cast<size_t>(opt_.prefill_chunk));
        if (!first_chunk && next_chunk > budget) break;
        budget -= std::min(budget, next_chunk);
        first_chunk = false;
        const auto t0 = std::chrono::steady_clock::now();
        const size_t n =
            std::min(a->job->prompt.size() - a->prefilled, static_cast<size_t>(opt_.prefill_chunk));
        const Engine::StepInput in{
            a->seq, std::span<const int32_t>(a->job->prompt).subspan(a->prefilled, n)};
        engine_->step(std::span<const Engine::StepInput>(&in, 1), logits);
        a->prefilled += n;
        {
          std::lock_guard<std::mutex> lock(mu_);
          metrics_.prompt_tokens += static_cast<int64_t>(n);
          metrics_.prefill_seconds += seconds_since(t0);
        }
        if (!a->prefilling()) {  // the first token comes from the prompt's last logits
          const int32_t tok =
              a->sampler.sample(std::span<const float>(logits.data(), vocab), a->history);
          const std::string reason = handle_token(*a, tok);
          if (!reason.empty()) end(a, reason);
        }
        if (budget == 0) break;
      }
      std::erase(active, nullptr);

      // ---- one decode step over every request with a token to feed ----
      std::vector<Engine::StepInput> inputs;
      std::vector<Active*> owners;
      for (auto& a : active)
        if (a->next >= 0) {
          inputs.push_back({a->seq, std::span<const int32_t>(&a->next, 1)});
          owners.push_back(a.get());
        }
      if (!inputs.empty()) {
        logits.resize(inputs.size() * size_t(vocab));
        const auto t0 = std::chrono::steady_clock::now();
        const size_t group =
            opt_.max_decode_rows > 0 ? size_t(opt_.max_decode_rows) : inputs.size();
        for (size_t g0 = 0; g0 < inputs.size(); g0 += group) {
          const size_t g1 = std::min(inputs.size(), g0 + group);
          engine_->step(std::span<const Engine::StepInput>(inputs).subspan(g0, g1 - g0),
                        step_logits);
          std::copy(step_logits.begin(), step_logits.end(), logits.begin() + g0 * size_t(vocab));
        }
        for (size_t r = 0; r < owners.size(); ++r) {
          Active& a = *owners[r];
          a.next = -1;
          const int32_t tok = a.sampler.sample(
              std::span<const float>(&logits[r * size_t(vocab)], vocab), a.history);
          const std::string reason = handle_token(a, tok);
          if (!reason.empty()) {
            for (auto& p : active)
              if (p.get() == &a) end(p, reason);
          }
        }
        std::lock_guard<std::mutex> lock(mu_);
        metrics_.decode_seconds += seconds_since(t0);
        metrics_.decode_tokens += static_cast<int64_t>(owners.size());
        ++metrics_.decode_steps;
      }
      std::erase(active, nullptr);
    } catch (const std::exception& e) {
      // A failed forward pass fails the requests in the batch, not the server.
      log().error("engine step failed: {}", e.what());
      for (auto& a : active) end(a, "error", e.what());
      active.clear();
    }

    {
      std::lock_guard<std::mutex> lock(mu_);
      active_count_ = static_cast<int>(active.size());
      metrics_.active_sequences = active_count_;
      metrics_.queue_depth = static_cast<int>(queue_.size());
      metrics_.kv_bytes = engine_->kv_bytes_in_use();
      const auto now = std::chrono::steady_clock::now();
      if (hybrid &&
          (now - last_attention_refresh_ > std::chrono::milliseconds(500) || active.empty())) {
        metrics_.attention = engine_->attention_stats();
        last_attention_refresh_ = now;
      }
      if (active.empty() && queue_.empty()) idle_cv_.notify_all();
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  active_count_ = 0;
  metrics_.active_sequences = 0;
  idle_cv_.notify_all();
}

}  // namespace hybridgen::server
