#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "util/check.h"

namespace hybridgen {

void SamplingParams::validate() const {
  HG_CHECK(std::isfinite(temperature), "sampling: --temp must be a finite number");
  HG_CHECK(top_p > 0 && top_p <= 1 + 1e-6f,
           "sampling: --top-p must be in (0, 1], got " + std::to_string(top_p));
  HG_CHECK(min_p >= 0 && min_p <= 1,
           "sampling: --min-p must be in [0, 1], got " + std::to_string(min_p));
  HG_CHECK(repeat_penalty > 0 && std::isfinite(repeat_penalty),
           "sampling: --repeat-penalty must be positive, got " + std::to_string(repeat_penalty));
  HG_CHECK(repeat_last_n >= 0, "sampling: --repeat-last-n must be >= 0");
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  params_.validate();
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const int vocab = static_cast<int>(logits.size());
  cand_.resize(vocab);
  for (int i = 0; i < vocab; ++i) cand_[i] = {i, logits[i], 0.f};

  // Repetition penalty (CTRL-style, as llama.cpp): each distinct recent token once.
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0) {
    const size_t n = std::min<size_t>(history.size(), params_.repeat_last_n);
    std::unordered_set<int32_t> seen(history.end() - n, history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= vocab) continue;
      float& l = cand_[id].logit;
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    }
  }

  if (params_.temperature <= 0.f) {  // greedy; ties go to the lowest id
    int best = 0;
    for (int i = 1; i < vocab; ++i)
      if (cand_[i].logit > cand_[best].logit) best = i;
    return cand_[best].id;
  }

  auto by_logit = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  size_t keep = cand_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = params_.top_k;
    std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), by_logit);
    cand_.resize(keep);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  auto softmax = [&]() {
    const float mx = cand_[0].logit;
    double sum = 0;
    for (Candidate& c : cand_) sum += (c.p = std::exp(c.logit - mx));
    for (Candidate& c : cand_) c.p = static_cast<float>(c.p / sum);
  };
  softmax();
  if (params_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
    double cum = 0;
    size_t n = 0;
    while (n < cand_.size()) {
      cum += cand_[n++].p;
      if (cum >= params_.top_p) break;
    }
    cand_.resize(std::max<size_t>(n, 1));
  }
  if (params_.min_p > 0.f) {  // drop tokens below min_p x the most likely one's probability
    const float floor_p = params_.min_p * cand_[0].p;
    size_t n = 1;
    while (n < cand_.size() && cand_[n].p >= floor_p) ++n;
    cand_.resize(n);
  }
  for (Candidate& c : cand_) c.logit /= params_.temperature;
  softmax();
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  double r = uni(rng_), cum = 0;
  for (const Candidate& c : cand_) {
    cum += c.p;
    if (r < cum) return c.id;
  }
  return cand_.back().id;
}

}  // namespace hybridgen
