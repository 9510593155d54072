#include "cpu/logits.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "hybridgen/error.h"
#include "model/dequant.h"

namespace hybridgen::cpu {
namespace {

// Random keys stored in `dtype` with padding between tokens and heads (strides > head_dim), so
// that a kernel that ignores a stride reads the wrong numbers.
struct Keys {
  KeyDType dtype;
  int n_kv_heads, n_tokens, head_dim;
  int64_t token_stride, head_stride;
  std::vector<float> f32;     // [n_kv_heads, n_tokens(+pad), token_stride] when dtype == f32
  std::vector<uint16_t> u16;  // same layout for f16 / bf16
  double at(int h, int t, int i) const {  // the stored value, exactly
    const int64_t o = h * head_stride + t * token_stride + i;
    switch (dtype) {
      case KeyDType::kF32:
        return f32[o];
      case KeyDType::kF16:
        return f16_to_f32(u16[o]);
      case KeyDType::kBF16:
        return bf16_to_f32(u16[o]);
    }
    return 0;
  }
  const void* data() const {
    return dtype == KeyDType::kF32 ? static_cast<const void*>(f32.data()) : u16.data();
  }
};

Keys make_keys(KeyDType dtype, int n_kv_heads, int n_tokens, int head_dim, std::mt19937& rng) {
  Keys k{dtype, n_kv_heads, n_tokens, head_dim, head_dim + 3, 0, {}, {}};
  k.head_stride = (n_tokens + 2) * k.token_stride;
  const size_t n = static_cast<size_t>(n_kv_heads) * k.head_stride;
  std::normal_distribution<float> nd(0.f, 1.f);
  // Padding holds NaN: reading it would poison a logit and fail the comparison.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  if (dtype == KeyDType::kF32)
    k.f32.assign(n, nan);
  else
    k.u16.assign(n, dtype == KeyDType::kF16 ? f32_to_f16(nan) : f32_to_bf16(nan));
  for (int h = 0; h < n_kv_heads; ++h)
    for (int t = 0; t < n_tokens; ++t)
      for (int i = 0; i < head_dim; ++i) {
        const int64_t o = h * k.head_stride + t * k.token_stride + i;
        const float v = nd(rng);
        if (dtype == KeyDType::kF32)
          k.f32[o] = v;
        else if (dtype == KeyDType::kF16)
          k.u16[o] = f32_to_f16(v);
        else
          k.u16[o] = f32_to_bf16(v);
      }
  return k;
}

struct Case {
  KeyDType dtype;
  LogitsPath path;
  int n_kv_heads, group, head_dim, n_tokens;
  bool gather;
};

std::string name(const Case& c) {
  return std::string(key_dtype_name(c.dtype)) + "/" + logits_path_name(c.path) +
         " kv=" + std::to_string(c.n_kv_heads) + " g=" + std::to_string(c.group) +
         " d=" + std::to_string(c.head_dim) + " n=" + std::to_string(c.n_tokens) +
         (c.gather ? " gather" : "");
}

// Runs one case and compares every logit with a double-precision reference computed from the
// stored (already rounded) keys and the float query. Tolerance, per logit:
//   |got - ref| <= rel · scale · Σ_i |q_i·k_i| + 1e-6
// rel = 2^-8 on the bf16 dot-product path (the query is rounded to bf16: 2^-9 relative, plus
// float32 accumulation), 1e-5 elsewhere (float32 accumulation of exact products only).
void check_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(name(c));
  std::mt19937 rng(seed);
  const Keys keys = make_keys(c.dtype, c.n_kv_heads, c.n_tokens, c.head_dim, rng);
  const int n_q = c.n_kv_heads * c.group;
  const int64_t q_stride = c.head_dim + 5, out_stride = c.n_tokens + 7;
  std::vector<float> q(n_q * q_stride, std::numeric_limits<float>::quiet_NaN());  // pads: NaN
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int qh = 0; qh < n_q; ++qh)
    for (int i = 0; i < c.head_dim; ++i) q[qh * q_stride + i] = nd(rng);
  // Gather: a shuffled, repeated selection of tokens per KV head. index: [n_kv_heads, n_tokens]
  std::vector<int32_t> index(static_cast<size_t>(c.n_kv_heads) * c.n_tokens);
  for (int h = 0; h < c.n_kv_heads; ++h)
    for (int t = 0; t < c.n_tokens; ++t)
      index[h * c.n_tokens + t] = static_cast<int32_t>(rng() % c.n_tokens);
  // Output starts as NaN so that an unwritten logit fails.
  std::vector<float> out(n_q * out_stride, std::numeric_limits<float>::quiet_NaN());

  LogitsProblem p;
  p.n_kv_heads = c.n_kv_heads;
  p.group = c.group;
  p.head_dim = c.head_dim;
  p.n_tokens = c.n_tokens;
  p.q = q.data();
  p.q_head_stride = q_stride;
  p.keys = {keys.data(), c.dtype, keys.head_stride, keys.token_stride};
  if (c.gather) {
    p.token_index = index.data();
    p.index_head_stride = c.n_tokens;
  }
  p.out = out.data();
  p.out_head_stride = out_stride;
  p.scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
  attention_logits(p, c.path);

  const double rel = c.path == LogitsPath::kAvx512Bf16 ? 1.0 / 256 : 1e-5;
  int bad = 0;
  for (int qh = 0; qh < n_q; ++qh) {
    const int h = qh / c.group;
    for (int t = 0; t < c.n_tokens; ++t) {
      const int tok = c.gather ? index[h * c.n_tokens + t] : t;
      double ref = 0, mag = 0;
      for (int i = 0; i < c.head_dim; ++i) {
        const double prod = static_cast<double>(q[qh * q_stride + i]) * keys.at(h, tok, i);
        ref += prod;
        mag += std::fabs(prod);
      }
      ref *= p.scale;
      const double tol = rel * p.scale * mag + 1e-6;
      const double got = out[qh * out_stride + t];
      // Written as !(err <= tol) so that NaN fails.
      if (!(std::fabs(got - ref) <= tol) && bad++ < 5)
        ADD_FAILURE() << "q head " << qh << " token " << t << ": got " << got << ", want " << ref
                      << " ± " << tol;
    }
    // Padding after the row must be untouched.
    for (int64_t t = c.n_tokens; t < out_stride; ++t)
      EXPECT_TRUE(std::isnan(out[qh * out_stride + t])) << "wrote past n_tokens";
  }
  EXPECT_EQ(bad, 0) << bad << " logits outside tolerance";
}

std::vector<LogitsPath> paths_for(KeyDType t) {
  std::vector<LogitsPath> out;
  for (LogitsPath p :
       {LogitsPath::kPortable, LogitsPath::kAvx2, LogitsPath::kAvx512, LogitsPath::kAvx512Bf16})
    if (logits_path_supported(p, t)) out.push_back(p);
  return out;
}

TEST(Logits, EveryPathDtypeShapeAndGroupMatchesDoubleReference) {
  int checked = 0;
  uint32_t seed = 1;
  for (KeyDType dt : {KeyDType::kF32, KeyDType::kF16, KeyDType::kBF16})
    for (LogitsPath path : paths_for(dt))
      for (int head_dim : {64, 128, 80, 24, 17})
        for (int group : {1, 3, 4})
          for (int n_tokens : {1, 15, 16, 1037})  // 1037: odd, several blocks, a ragged tail
            for (bool gather : {false, true}) {
              check_case({dt, path, 2, group, head_dim, n_tokens, gather}, seed++);
              ++checked;
            }
  // Report what this machine covered: which SIMD paths ran is a property of the CPU.
  std::printf("checked %d cases; auto path for bf16 keys here: %s\n", checked,
              logits_path_name(logits_auto_path(KeyDType::kBF16)));
}

TEST(Logits, LargeGroupsTakeSeveralPassesAndStayExact) {
  for (KeyDType dt : {KeyDType::kF32, KeyDType::kBF16})
    for (LogitsPath path : paths_for(dt))
      for (int group : {7, 8, 9, 16}) check_case({dt, path, 3, group, 128, 300, false}, group);
}

TEST(Logits, AutoPathMatchesReference) {
  for (KeyDType dt : {KeyDType::kF32, KeyDType::kF16, KeyDType::kBF16})
    check_case({dt, logits_auto_path(dt), 8, 4, 128, 4099, false}, 99);
}

TEST(Logits, NanInKeysOrQueryIsNotHidden) {
  // A NaN key must give a NaN logit (a kernel that drops lanes would hide it).
  std::vector<uint16_t> k(4 * 64, f32_to_bf16(1.f));  // [4 tokens, 64]
  k[2 * 64 + 63] = f32_to_bf16(std::numeric_limits<float>::quiet_NaN());
  std::vector<float> q(64, 0.5f), out(4);
  LogitsProblem p;
  p.n_kv_heads = 1;
  p.head_dim = 64;
  p.n_tokens = 4;
  p.q = q.data();
  p.q_head_stride = 64;
  p.keys = {k.data(), KeyDType::kBF16, 4 * 64, 64};
  p.out = out.data();
  p.out_head_stride = 4;
  for (LogitsPath path : paths_for(KeyDType::kBF16)) {
    SCOPED_TRACE(logits_path_name(path));
    attention_logits(p, path);
    EXPECT_FLOAT_EQ(out[0], 32.f);
    EXPECT_TRUE(std::isnan(out[2]));
  }
}

TEST(Logits, InconsistentProblemsThrowClearErrors) {
  std::vector<float> q(64), k(64 * 4), out(4);
  LogitsProblem p;
  p.n_kv_heads = 1;
  p.head_dim = 64;
  p.n_tokens = 4;
  p.q = q.data();
  p.q_head_stride = 64;
  p.keys = {k.data(), KeyDType::kF32, 256, 32};  // token stride shorter than head_dim
  p.out = out.data();
  p.out_head_stride = 4;
  try {
    attention_logits(p);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_stride 32 is shorter than head_dim 64"),
              std::string::npos)
        << e.what();
  }
  p.keys.token_stride = 64;
  p.group = 0;
  EXPECT_THROW(attention_logits(p), Error);
  p.group = 1;
  p.keys.data = nullptr;
  EXPECT_THROW(attention_logits(p), Error);
  p.keys.data = k.data();
  if (!logits_path_supported(LogitsPath::kAvx512Bf16, KeyDType::kF32)) {
    EXPECT_THROW(attention_logits(p, LogitsPath::kAvx512Bf16), Error);  // f32 keys: bf16 path no
  }
  p.n_tokens = 0;  // nothing to do is not an error
  EXPECT_NO_THROW(attention_logits(p));
}

}  // namespace
}  // namespace hybridgen::cpu
