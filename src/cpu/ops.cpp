#include "cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/vec.h"
#include "kv/kv_cache.h"

namespace hybridgen::cpu {

void embedding(const float* table, const int32_t* ids, int n, int d, float* out) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n; ++t)
    std::memcpy(out + static_cast<int64_t>(t) * d, table + static_cast<int64_t>(ids[t]) * d,
                sizeof(float) * d);
}

void rms_norm(const float* x, const float* w, int n, int d, float eps, float* out) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * d;
    float* o = out + static_cast<int64_t>(t) * d;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / d + eps);
#pragma omp simd
    for (int i = 0; i < d; ++i) o[i] = xr[i] * inv * w[i];
  }
}

void layer_norm(const float* x, const float* w, const float* b, int n, int d, float eps,
                float* out) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * d;
    float* o = out + static_cast<int64_t>(t) * d;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < d; ++i) sum += xr[i];
    const float mean = sum / d;
    float var = 0.f;
#pragma omp simd reduction(+ : var)
    for (int i = 0; i < d; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    const float inv = 1.0f / std::sqrt(var / d + eps);
#pragma omp simd
    for (int i = 0; i < d; ++i) o[i] = (xr[i] - mean) * inv * w[i] + b[i];
  }
}

void rope(float* x, int n, int n_heads, int head_dim, int rope_dim, const int32_t* positions,
          const float* inv_freq, bool neox) {
  const int half = rope_dim / 2;
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n; ++t) {
    const float p = static_cast<float>(positions[t]);
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        // The angle is formed in float, as HF does (position * inv_freq in float32).
        const float angle = p * inv_freq[i];
        const float c = std::cos(angle), s = std::sin(angle);
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x1 * c + x0 * s;
      }
    }
  }
}

void swiglu(const float* gu, int n, int d_ff, float* out) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n; ++t) {
    const float* g = gu + static_cast<int64_t>(t) * 2 * d_ff;
    const float* u = g + d_ff;
    float* o = out + static_cast<int64_t>(t) * d_ff;
#pragma omp simd
    for (int i = 0; i < d_ff; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void relu(float* x, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = std::max(x[i], 0.f);
}

void add(float* x, const float* y, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void softmax(float* x, int n) {
  float mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.f;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void attention(const float* q, int n, int n_heads, int head_dim, const int32_t* seq,
               const int32_t* pos, const kv::KvCacheManager& cache, int layer, float scale,
               int window, float* out) {
  const int n_kv_heads = cache.shape().n_kv_heads;
  const int group = n_heads / n_kv_heads;  // query heads per KV head (GQA)
  const VecKernels& vk = vec_kernels();
#pragma omp parallel
  {
    std::vector<float> scores;  // [attended positions], per thread
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < n_heads; ++h) {
        const kv::LayerView view = cache.view(seq[t], layer);
        const int kvh = h / group;
        const int hi = pos[t];
        const int lo = window > 0 ? std::max(0, hi - window + 1) : 0;
        const float* qh = q + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
        scores.resize(hi - lo + 1);
        for (int p = lo; p <= hi; ++p) {
          scores[p - lo] = vk.dot(qh, view.key(kvh, p), head_dim) * scale;
        }
        softmax(scores.data(), hi - lo + 1);
        float* o = out + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
        std::fill(o, o + head_dim, 0.f);
        for (int p = lo; p <= hi; ++p) vk.axpy(scores[p - lo], view.value(kvh, p), o, head_dim);
      }
    }
  }
}

}  // namespace hybridgen::cpu
