// hybridgen-server's continuous batching (tools/server/batcher.h) on a real engine (the tiny
// Llama checkpoint, token ids): requests submitted from several threads at once, joining and
// leaving between steps, give exactly the tokens Engine::generate gives each alone; cancelled
// requests free their sequence; a full queue refuses; draining refuses new work. Runs under TSan
// (the engine thread, the submitting threads and the Job channels).
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "batcher.h"
#include "hybridgen/hybridgen.h"

namespace {

using namespace hybridgen;
using namespace hybridgen::server;
using namespace std::chrono_literals;

std::unique_ptr<Engine> tiny(int max_sequences) {
  LoadOptions load;
  load.model_path = std::string(HYBRIDGEN_TEST_DATA_DIR) + "/models/tiny-llama";
  load.max_sequences = max_sequences;
  load.n_ctx = 128;
  return Engine::load(load);
}

std::vector<int32_t> prompt_of(int i) {
  std::vector<int32_t> p;
  for (int t = 0; t < 3 + (i * 7) % 20; ++t) p.push_back((i * 31 + t * 17) % 200 + 1);
  return p;
}

std::shared_ptr<Job> greedy_job(const std::vector<int32_t>& prompt, int max_tokens) {
  auto job = std::make_shared<Job>();
  job->prompt = prompt;
  job->max_tokens = max_tokens;
  job->sampling.temperature = 0;
  job->stop_at_eog = false;
  return job;
}

void wait_finished(Job& job) {
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!job.wait(50ms).finished) ASSERT_LT(std::chrono::steady_clock::now(), deadline);
}

TEST(Batcher, ConcurrentRequestsEqualSingleRuns) {
  const int n = 12, parallel = 4;
  auto engine = tiny(parallel);
  // The references: each prompt alone, through generate().
  std::vector<std::vector<int32_t>> expected(n);
  for (int i = 0; i < n; ++i) {
    GenerateOptions g;
    g.n_predict = 4 + i % 9;
    g.sampling.temperature = 0;
    g.stop_at_eog = false;
    expected[i] = engine->generate(prompt_of(i), g).tokens;
  }
  BatcherOptions o;
  o.parallel = parallel;
  o.max_queue = n;
  o.prefill_chunk = 5;  // several chunks per prompt, interleaved with decode steps
  Batcher batcher(*engine, o);
  std::vector<std::shared_ptr<Job>> jobs(n);
  std::vector<std::thread> clients;
  for (int i = 0; i < n; ++i)
    clients.emplace_back([&, i] {
      std::this_thread::sleep_for(std::chrono::milliseconds(3 * (i % 4)));  // staggered
      jobs[i] = greedy_job(prompt_of(i), 4 + i % 9);
      ASSERT_EQ(batcher.submit(jobs[i]), Batcher::Submit::kQueued);
      wait_finished(*jobs[i]);
    });
  for (auto& c : clients) c.join();
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(jobs[i]->tokens(), expected[i]) << "request " << i;
    EXPECT_EQ(jobs[i]->finish_reason(), "length");
    EXPECT_EQ(jobs[i]->completion_tokens(), static_cast<int>(expected[i].size()));
  }
  ASSERT_TRUE(batcher.wait_idle(std::chrono::steady_clock::now() + 10s));
  const BatcherMetrics m = batcher.metrics();
  EXPECT_EQ(m.requests_finished, n);
  EXPECT_EQ(m.active_sequences, 0);
  EXPECT_EQ(m.kv_bytes, 0u);
  EXPECT_GT(m.decode_steps, 0);
}

TEST(Batcher, CancelFreesTheSequenceAndQueueOverflowRefuses) {
  auto engine = tiny(1);
  BatcherOptions o;
  o.parallel = 1;
  o.max_queue = 1;
  Batcher batcher(*engine, o);
  auto running = greedy_job(prompt_of(1), 100);
  ASSERT_EQ(batcher.submit(running), Batcher::Submit::kQueued);
  // Wait until it generates, so that it holds the slot.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (running->tokens().empty()) ASSERT_LT(std::chrono::steady_clock::now(), deadline);
  auto queued = greedy_job(prompt_of(2), 3);
  ASSERT_EQ(batcher.submit(queued), Batcher::Submit::kQueued);
  EXPECT_EQ(batcher.submit(greedy_job(prompt_of(3), 3)), Batcher::Submit::kQueueFull);
  EXPECT_EQ(batcher.metrics().rejected_queue_full, 1);
  running->cancel();
  wait_finished(*running);
  EXPECT_EQ(running->finish_reason(), "cancelled");
  EXPECT_LT(running->completion_tokens(), 100);
  wait_finished(*queued);  // the freed slot serves the queued request
  EXPECT_EQ(queued->finish_reason(), "length");
  EXPECT_EQ(queued->tokens().size(), 3u);
  ASSERT_TRUE(batcher.wait_idle(std::chrono::steady_clock::now() + 10s));
  EXPECT_EQ(batcher.metrics().finished_cancelled, 1);
  EXPECT_EQ(engine->open_sequences(), 0);
}

TEST(Batcher, DrainingRefusesAndCancelAllEndsEverything) {
  auto engine = tiny(2);
  BatcherOptions o;
  o.parallel = 2;
  o.max_queue = 4;
  Batcher batcher(*engine, o);
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 4; ++i) {
    jobs.push_back(greedy_job(prompt_of(i), 120));
    ASSERT_EQ(batcher.submit(jobs.back()), Batcher::Submit::kQueued);
  }
  batcher.start_draining();
  EXPECT_TRUE(batcher.draining());
  EXPECT_EQ(batcher.submit(greedy_job(prompt_of(9), 2)), Batcher::Submit::kDraining);
  batcher.cancel_all();
  for (auto& j : jobs) {
    wait_finished(*j);
    EXPECT_TRUE(j->finish_reason() == "cancelled" || j->finish_reason() == "length")
        << j->finish_reason();
  }
  ASSERT_TRUE(batcher.wait_idle(std::chrono::steady_clock::now() + 10s));
  EXPECT_EQ(engine->open_sequences(), 0);
}

TEST(Batcher, LoadsTheEngineOnItsThreadAndRethrowsLoadErrors) {
  const std::vector<int32_t> prompt = prompt_of(3);
  GenerateOptions g;
  g.n_predict = 5;
  g.sampling.temperature = 0;
  g.stop_at_eog = false;
  const std::vector<int32_t> expected = tiny(1)->generate(prompt, g).tokens;
  BatcherOptions o;
  o.parallel = 2;
  Batcher batcher([] { return tiny(2); }, o);
  EXPECT_EQ(batcher.engine().info().n_ctx, 128);
  auto job = greedy_job(prompt, 5);
  ASSERT_EQ(batcher.submit(job), Batcher::Submit::kQueued);
  wait_finished(*job);
  EXPECT_EQ(job->tokens(), expected);
  EXPECT_THROW(Batcher([]() -> std::unique_ptr<Engine> { throw Error("no such model"); }, o),
               Error);
}

TEST(EngineStep, ChunkedPrefillAndStepsEqualGenerate) {
  auto engine = tiny(2);
  const std::vector<int32_t> prompt = prompt_of(5);
  GenerateOptions g;
  g.n_predict = 6;
  g.sampling.temperature = 0;
  g.stop_at_eog = false;
  const std::vector<int32_t> expected = engine->generate(prompt, g).tokens;
  const int seq = engine->open_sequence();
  EXPECT_EQ(engine->open_sequences(), 1);
  std::vector<float> logits;
  const int vocab = engine->info().vocab_size;
  // The prompt in one pass (as generate prefills it), then one token per step.
  Engine::StepInput in{seq, prompt};
  engine->step(std::span<const Engine::StepInput>(&in, 1), logits);
  ASSERT_EQ(logits.size(), size_t(vocab));
  std::vector<int32_t> got;
  for (int i = 0; i < 6; ++i) {
    const int32_t tok =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    got.push_back(tok);
    if (i == 5) break;
    const Engine::StepInput d{seq, std::span<const int32_t>(&got.back(), 1)};
    engine->step(std::span<const Engine::StepInput>(&d, 1), logits);
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(engine->sequence_length(seq), static_cast<int>(prompt.size()) + 5);
  // Errors name what is wrong.
  const std::vector<int32_t> bad = {100000};
  const Engine::StepInput b{seq, bad};
  EXPECT_THROW(engine->step(std::span<const Engine::StepInput>(&b, 1), logits), Error);
  engine->close_sequence(seq);
  EXPECT_EQ(engine->open_sequences(), 0);
  EXPECT_EQ(engine->kv_bytes_in_use(), 0u);
}

}  // namespace
