// Next-token sampling over a logits row: greedy, or penalties -> top-k -> top-p -> min-p ->
// temperature -> seeded draw (llama.cpp's default order).
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "hybridgen/config.h"

namespace hybridgen {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: [vocab]; history: tokens so far (prompt + generated), for the repetition penalty.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  struct Candidate {
    int32_t id;
    float logit;
    float p;
  };
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<Candidate> cand_;
};

}  // namespace hybridgen
