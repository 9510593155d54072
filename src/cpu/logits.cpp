#include "cpu/logits.h"

// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized inside masked loads (a false positive in
// the system header's own code); silence it for this file only (as in gemv.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "model/dequant.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace {

// Tokens per OpenMP work item. 256 bf16 keys of head_dim 128 are 64 KiB: large enough that
// scheduling is noise, small enough that 8 KV heads × 32K tokens make ~1000 items to balance.
// A multiple of 16 (the width of the reduction below).
constexpr int kTokenBlock = 256;
// Query heads handled in one pass over a token block: their float32 accumulators (one zmm each)
// stay in registers. Groups above 8 take several passes over the same block, which is then
// L2-resident, so memory still sees each key once.
constexpr int kMaxPassGroup = 8;
// Software prefetch distance of the bf16 kernel, in tokens (16 tokens × 256 B = 4 KiB ahead).
constexpr int kPrefetchTokens = 48;

// Query heads per pass on the AVX2 path: two float32 accumulators per head (16 ymm in all).
constexpr int kMaxPassGroupAvx2 = 4;

// Everything the block kernels need, prepared once per call.
struct Ctx {
  const LogitsProblem* p;
  int qpad;             // padded query row length: a multiple of 32 elements
  const float* qf;      // [n_q_heads, qpad] float query, zero padded past head_dim
  const uint16_t* qbf;  // [n_q_heads, qpad] bf16-rounded query (bf16 path only), zero padded
  const float* qperm;   // [n_q_heads, qpad] qf permuted for the AVX2 bf16 unpack (AVX2 + bf16)
};

// Element offset of token t of KV head h in the key store.
inline int64_t key_offset(const LogitsProblem& p, int h, int t) {
  const int64_t tok = p.token_index ? p.token_index[h * p.index_head_stride + t] : t;
  return h * p.keys.head_stride + tok * p.keys.token_stride;
}

using BlockFn = void (*)(const Ctx&, int h, int t0, int t1, int j0, int gs);

// ---- portable path ---------------------------------------------------------------------------
inline float key_at(KeyDType t, const void* base, int64_t i) {
  switch (t) {
    case KeyDType::kF32:
      return static_cast<const float*>(base)[i];
    case KeyDType::kF16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case KeyDType::kBF16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
  }
  return 0.f;
}

void block_portable(const Ctx& c, int h, int t0, int t1, int j0, int gs) {
  const LogitsProblem& p = *c.p;
  const int d = p.head_dim;
  float kbuf[1024];  // one decoded key; head_dim <= 1024 is checked up front
  for (int t = t0; t < t1; ++t) {
    const int64_t off = key_offset(p, h, t);
    for (int i = 0; i < d; ++i) kbuf[i] = key_at(p.keys.dtype, p.keys.data, off + i);
    for (int j = j0; j < j0 + gs; ++j) {
      const int qh = h * p.group + j;
      const float* q = c.qf + static_cast<int64_t>(qh) * c.qpad;
      float acc = 0.f;
      for (int i = 0; i < d; ++i) acc += q[i] * kbuf[i];
      p.out[qh * p.out_head_stride + t] = acc * p.scale;
    }
  }
}

// ---- AVX-512 paths ---------------------------------------------------------------------------
#define HG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define HG_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Horizontal sums of 16 accumulators at once: tmp holds 16 slots of 16 float lanes; returns a
// vector whose lane 4b+l is the sum of slot 4l+b (a 4×4 transpose falls out of the shuffle tree),
// so a token s is stored in slot kSlot[s] to come out in lane s. 15 adds + 30 shuffles for 16
// sums instead of ~8 dependent ops per _mm512_reduce_add_ps.
constexpr int kSlot[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};

HG_AVX512 inline __m512 reduce16(const float* tmp) {
  __m512 w[8];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = _mm512_load_ps(tmp + 32 * i), b = _mm512_load_ps(tmp + 32 * i + 16);
    // 128-bit blocks (a0+a2, a1+a3, b0+b2, b1+b3)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  __m512 x[4];
  for (int k = 0; k < 4; ++k)  // one 128-bit block per slot: 4 slots × 4 partial sums
    x[k] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], 0xDD));
  const __m512 y0 = _mm512_add_ps(_mm512_shuffle_ps(x[0], x[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_ps(x[0], x[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 y1 = _mm512_add_ps(_mm512_shuffle_ps(x[2], x[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_ps(x[2], x[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_ps(y0, y1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(y0, y1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Writes the logits of tokens [t, t + nb) for G query heads from their accumulators in tmp.
template <int G>
HG_AVX512 inline void store_logits(const LogitsProblem& p, const float (*tmp)[256], int h, int t,
                                   int nb, int j0) {
  const __m512 scale = _mm512_set1_ps(p.scale);
  for (int j = 0; j < G; ++j) {
    float* out = p.out + (h * p.group + j0 + j) * p.out_head_stride + t;
    if (nb == 16) {
      _mm512_storeu_ps(out, _mm512_mul_ps(reduce16(tmp[j]), scale));
    } else {
      for (int s = 0; s < nb; ++s)
        out[s] = _mm512_reduce_add_ps(_mm512_load_ps(tmp[j] + 16 * kSlot[s])) * p.scale;
    }
  }
}

// 16 key elements widened to float32; masked-off lanes read nothing and are zero.
template <KeyDType T>
HG_AVX512 inline __m512 load16(const void* base, int64_t off, __mmask16 m) {
  if constexpr (T == KeyDType::kF32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + off);
  } else if constexpr (T == KeyDType::kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + off));
  } else {  // bf16 is the upper half of a float32
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + off);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// AVX-512F: any key type, float32 query, FMA in float32.
template <KeyDType T, int G>
HG_AVX512 void block_avx512(const Ctx& c, int h, int t0, int t1, int j0, int /*gs == G*/) {
  const LogitsProblem& p = *c.p;
  const int d = p.head_dim;
  const int nch = (d + 15) / 16;
  const __mmask16 tail = static_cast<__mmask16>(d % 16 == 0 ? 0xFFFF : (1u << (d % 16)) - 1);
  const float* q = c.qf + static_cast<int64_t>(h * p.group + j0) * c.qpad;  // [G, qpad]
  alignas(64) float tmp[G][256];  // [G, 16 slots, 16 lanes]
  for (int t = t0; t < t1; t += 16) {
    const int nb = std::min(16, t1 - t);
    for (int s = 0; s < nb; ++s) {
      const int64_t off = key_offset(p, h, t + s);
      __m512 acc[G];
      for (int j = 0; j < G; ++j) acc[j] = _mm512_setzero_ps();
      for (int ch = 0; ch < nch; ++ch) {
        const __m512 k = load16<T>(p.keys.data, off + 16 * ch, ch + 1 == nch ? tail : 0xFFFF);
        for (int j = 0; j < G; ++j)
          acc[j] = _mm512_fmadd_ps(k, _mm512_loadu_ps(q + j * c.qpad + 16 * ch), acc[j]);
      }
      for (int j = 0; j < G; ++j) _mm512_store_ps(tmp[j] + 16 * kSlot[s], acc[j]);
    }
    store_logits<G>(p, tmp, h, t, nb, j0);
  }
}

// AVX-512 BF16: bf16 keys × bf16-rounded query, 32 products per vdpbf16ps.
// NCH > 0: head_dim == 32 * NCH, known at compile time, so the loops unroll and the query of the
// G heads stays in registers (G * NCH zmm) instead of being reloaded for every key; this roughly
// halves the instructions per key, which matters because the kernel must keep up with memory.
template <int G, int NCH>
HG_AVX512BF16 void block_bf16dp(const Ctx& c, int h, int t0, int t1, int j0, int /*gs == G*/) {
  const LogitsProblem& p = *c.p;
  const int d = p.head_dim;
  const int nch = NCH > 0 ? NCH : (d + 31) / 32;
  const __mmask32 tail = static_cast<__mmask32>(d % 32 == 0 ? 0xFFFFFFFFu : (1u << (d % 32)) - 1);
  const uint16_t* q = c.qbf + static_cast<int64_t>(h * p.group + j0) * c.qpad;  // [G, qpad]
  const uint16_t* keys = static_cast<const uint16_t*>(p.keys.data);
  __m512bh qreg[G][NCH > 0 ? NCH : 1];
  if constexpr (NCH > 0)
    for (int j = 0; j < G; ++j)
      for (int ch = 0; ch < NCH; ++ch)
        qreg[j][ch] = (__m512bh)_mm512_loadu_si512(q + j * c.qpad + 32 * ch);
  alignas(64) float tmp[G][256];  // [G, 16 slots, 16 lanes]
  for (int t = t0; t < t1; t += 16) {
    const int nb = std::min(16, t1 - t);
    for (int s = 0; s < nb; ++s) {
      const uint16_t* k = keys + key_offset(p, h, t + s);
      __m512 acc[G];
      for (int j = 0; j < G; ++j) acc[j] = _mm512_setzero_ps();
      if constexpr (NCH > 0) {
        // Contiguous keys: prefetch kPrefetchTokens ahead so that a few cache-line misses are
        // always in flight (the hardware prefetcher alone left ~25% of the bandwidth unused).
        if (!p.token_index && p.keys.token_stride == d)
          for (int ch = 0; ch < NCH; ch += 1)
            _mm_prefetch(reinterpret_cast<const char*>(k + kPrefetchTokens * d + 32 * ch),
                         _MM_HINT_T0);
        for (int ch = 0; ch < NCH; ++ch) {
          const __m512bh kv = (__m512bh)_mm512_loadu_si512(k + 32 * ch);
          for (int j = 0; j < G; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], kv, qreg[j][ch]);
        }
      } else {
        for (int ch = 0; ch < nch; ++ch) {
          const __m512bh kv =
              (__m512bh)_mm512_maskz_loadu_epi16(ch + 1 == nch ? tail : 0xFFFFFFFFu, k + 32 * ch);
          for (int j = 0; j < G; ++j)
            acc[j] = _mm512_dpbf16_ps(acc[j], kv,
                                      (__m512bh)_mm512_loadu_si512(q + j * c.qpad + 32 * ch));
        }
      }
      for (int j = 0; j < G; ++j) _mm512_store_ps(tmp[j] + 16 * kSlot[s], acc[j]);
    }
    store_logits<G>(p, tmp, h, t, nb, j0);
  }
}

// ---- AVX2 path -------------------------------------------------------------------------------
#define HG_AVX2 __attribute__((target("avx2,fma,f16c")))

// Sums of 8 accumulators at once: tmp holds 8 rows of 8 lanes; lane s of the result is the sum
// of row s (a hadd tree: 6 hadds, 2 lane swaps, 1 add for 8 sums).
HG_AVX2 inline __m256 reduce8(const float* tmp) {
  const __m256 t0 = _mm256_hadd_ps(_mm256_load_ps(tmp), _mm256_load_ps(tmp + 8));
  const __m256 t1 = _mm256_hadd_ps(_mm256_load_ps(tmp + 16), _mm256_load_ps(tmp + 24));
  const __m256 t2 = _mm256_hadd_ps(_mm256_load_ps(tmp + 32), _mm256_load_ps(tmp + 40));
  const __m256 t3 = _mm256_hadd_ps(_mm256_load_ps(tmp + 48), _mm256_load_ps(tmp + 56));
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// 8 key elements widened to float32 (natural order).
template <KeyDType T>
HG_AVX2 inline __m256 load8(const void* base, int64_t off) {
  if constexpr (T == KeyDType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + off);
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + off));
    if constexpr (T == KeyDType::kF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// AVX2: any key type, float32 query, FMA in float32, two accumulator chains per query head.
// bf16 keys: 16 at a time become two float32 vectors by interleaving zeros below them
// (unpacklo/hi_epi16), whose lane order the permuted query (c.qperm) matches; the rest of a
// head_dim that is not a multiple of 16 goes 8 at a time, then scalar.
template <KeyDType T, int G>
HG_AVX2 void block_avx2(const Ctx& c, int h, int t0, int t1, int j0, int /*gs == G*/) {
  const LogitsProblem& p = *c.p;
  const int d = p.head_dim;
  constexpr int kWide = T == KeyDType::kBF16 ? 16 : 8;  // elements per step of the main loop
  const int d_main = d / kWide * kWide, d8 = d / 8 * 8;
  const int64_t qoff = static_cast<int64_t>(h * p.group + j0) * c.qpad;
  const float* q = (T == KeyDType::kBF16 ? c.qperm : c.qf) + qoff;  // [G, qpad]
  const bool prefetch = !p.token_index && p.keys.token_stride == d;
  alignas(32) float tmp[G][64];  // [G, 8 tokens, 8 lanes]
  float tail[G][8];              // scalar tails past d8, per head and token
  for (int t = t0; t < t1; t += 8) {
    const int nb = std::min(8, t1 - t);
    for (int s = 0; s < nb; ++s) {
      const int64_t off = key_offset(p, h, t + s);
      if (prefetch)
        for (int i = 0; i < d * key_dtype_bytes(T); i += 64)
          _mm_prefetch(static_cast<const char*>(p.keys.data) +
                           (off + static_cast<int64_t>(kPrefetchTokens) * d) * key_dtype_bytes(T) +
                           i,
                       _MM_HINT_T0);
      __m256 a[G], b[G];
      for (int j = 0; j < G; ++j) a[j] = b[j] = _mm256_setzero_ps();
      int i = 0;
      if constexpr (T == KeyDType::kBF16) {
        const uint16_t* k = static_cast<const uint16_t*>(p.keys.data) + off;
        const __m256i zero = _mm256_setzero_si256();
        for (; i < d_main; i += 16) {
          const __m256i kv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + i));
          const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, kv));
          const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, kv));
          for (int j = 0; j < G; ++j) {
            a[j] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(q + j * c.qpad + i), a[j]);
            b[j] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(q + j * c.qpad + i + 8), b[j]);
          }
        }
      } else {
        for (; i + 16 <= d; i += 16) {
          const __m256 k0 = load8<T>(p.keys.data, off + i), k1 = load8<T>(p.keys.data, off + i + 8);
          for (int j = 0; j < G; ++j) {
            a[j] = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + j * c.qpad + i), a[j]);
            b[j] = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + j * c.qpad + i + 8), b[j]);
          }
        }
      }
      for (; i < d8; i += 8) {  // past the permuted blocks the query is in natural order
        const __m256 k0 = load8<T>(p.keys.data, off + i);
        for (int j = 0; j < G; ++j)
          a[j] = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + j * c.qpad + i), a[j]);
      }
      for (int j = 0; j < G; ++j) {
        _mm256_store_ps(tmp[j] + 8 * s, _mm256_add_ps(a[j], b[j]));
        float sum = 0.f;
        for (int e = d8; e < d; ++e) sum += q[j * c.qpad + e] * key_at(T, p.keys.data, off + e);
        tail[j][s] = sum;
      }
    }
    for (int j = 0; j < G; ++j) {
      float* out = p.out + (h * p.group + j0 + j) * p.out_head_stride + t;
      alignas(32) float sums[8];
      if (nb < 8)
        for (int s = nb; s < 8; ++s) _mm256_store_ps(tmp[j] + 8 * s, _mm256_setzero_ps());
      _mm256_store_ps(sums, reduce8(tmp[j]));
      for (int s = 0; s < nb; ++s) out[s] = (sums[s] + tail[j][s]) * p.scale;
    }
  }
}

template <int G>
BlockFn avx2_fn(KeyDType t) {
  switch (t) {
    case KeyDType::kF32:
      return &block_avx2<KeyDType::kF32, G>;
    case KeyDType::kF16:
      return &block_avx2<KeyDType::kF16, G>;
    case KeyDType::kBF16:
      return &block_avx2<KeyDType::kBF16, G>;
  }
  return nullptr;
}

template <int G>
BlockFn simd_fn(LogitsPath path, KeyDType t, int head_dim) {
  if (path == LogitsPath::kAvx512Bf16) {
    // The common head dims get a specialised kernel; G * NCH query registers must fit in 32.
    if (head_dim == 128 && G <= 4) return &block_bf16dp<G, 4>;
    if (head_dim == 64 && G <= 8) return &block_bf16dp<G, 2>;
    return &block_bf16dp<G, 0>;
  }
  switch (t) {
    case KeyDType::kF32:
      return &block_avx512<KeyDType::kF32, G>;
    case KeyDType::kF16:
      return &block_avx512<KeyDType::kF16, G>;
    case KeyDType::kBF16:
      return &block_avx512<KeyDType::kBF16, G>;
  }
  return nullptr;
}

BlockFn block_fn(LogitsPath path, KeyDType t, int d, int gs) {
  if (path == LogitsPath::kPortable) return &block_portable;
  if (path == LogitsPath::kAvx2) {
    switch (gs) {
      case 1:
        return avx2_fn<1>(t);
      case 2:
        return avx2_fn<2>(t);
      case 3:
        return avx2_fn<3>(t);
      case 4:
        return avx2_fn<4>(t);
    }
    return nullptr;
  }
  switch (gs) {
    case 1:
      return simd_fn<1>(path, t, d);
    case 2:
      return simd_fn<2>(path, t, d);
    case 3:
      return simd_fn<3>(path, t, d);
    case 4:
      return simd_fn<4>(path, t, d);
    case 5:
      return simd_fn<5>(path, t, d);
    case 6:
      return simd_fn<6>(path, t, d);
    case 7:
      return simd_fn<7>(path, t, d);
    case 8:
      return simd_fn<8>(path, t, d);
  }
  return nullptr;
}

bool cpu_has(Isa isa) { return static_cast<uint8_t>(isa) <= static_cast<uint8_t>(detected_isa()); }

// Query heads one pass over a token block serves on `path`.
int max_pass_group(LogitsPath path) {
  return path == LogitsPath::kAvx2 ? kMaxPassGroupAvx2 : kMaxPassGroup;
}

// The query permuted per 16 elements for the AVX2 bf16 kernel (as unpacklo/hi_epi16 order the
// widened keys: per 128-bit lane k, lo holds 8k..8k+3 and hi 8k+4..8k+7); past the last full
// 16 the query stays in natural order.   qf, qperm: [n_q, qpad]
void permute_query16(const std::vector<float>& qf, std::vector<float>& qperm, int n_q, int qpad,
                     int head_dim) {
  qperm = qf;
  const int full = head_dim / 16 * 16;
  for (int qh = 0; qh < n_q; ++qh) {
    const float* src = qf.data() + static_cast<int64_t>(qh) * qpad;
    float* dst = qperm.data() + static_cast<int64_t>(qh) * qpad;
    for (int b = 0; b < full; b += 16)
      for (int e = 0; e < 4; ++e) {
        dst[b + e] = src[b + e];
        dst[b + 4 + e] = src[b + 8 + e];
        dst[b + 8 + e] = src[b + 4 + e];
        dst[b + 12 + e] = src[b + 12 + e];
      }
  }
}

}  // namespace

int key_dtype_bytes(KeyDType t) { return t == KeyDType::kF32 ? 4 : 2; }

const char* key_dtype_name(KeyDType t) {
  switch (t) {
    case KeyDType::kF32:
      return "f32";
    case KeyDType::kF16:
      return "f16";
    case KeyDType::kBF16:
      return "bf16";
  }
  return "?";
}

const char* logits_path_name(LogitsPath p) {
  switch (p) {
    case LogitsPath::kAuto:
      return "auto";
    case LogitsPath::kPortable:
      return "portable";
    case LogitsPath::kAvx512:
      return "avx512";
    case LogitsPath::kAvx512Bf16:
      return "avx512-bf16";
    case LogitsPath::kAvx2:
      return "avx2";
  }
  return "?";
}

bool logits_path_supported(LogitsPath p, KeyDType t) {
  switch (p) {
    case LogitsPath::kAuto:
    case LogitsPath::kPortable:
      return true;
    case LogitsPath::kAvx2:
      return cpu_has(Isa::kAvx2);
    case LogitsPath::kAvx512:
      return cpu_has(Isa::kAvx512);
    case LogitsPath::kAvx512Bf16:
      return t == KeyDType::kBF16 && cpu_has(Isa::kAvx512Bf16);
  }
  return false;
}

LogitsPath logits_auto_path(KeyDType t) {
  const Isa isa = active_isa();
  if (isa == Isa::kAvx512Bf16 && t == KeyDType::kBF16) return LogitsPath::kAvx512Bf16;
  if (isa >= Isa::kAvx512) return LogitsPath::kAvx512;
  if (isa >= Isa::kAvx2) return LogitsPath::kAvx2;
  return LogitsPath::kPortable;
}

void attention_logits(const LogitsProblem& p, LogitsPath path) {
  const std::string where = "attention logits: ";
  HG_CHECK(p.n_kv_heads >= 0 && p.n_tokens >= 0,
           where + "negative n_kv_heads (" + std::to_string(p.n_kv_heads) + ") or n_tokens (" +
               std::to_string(p.n_tokens) + ")");
  if (p.n_kv_heads == 0 || p.n_tokens == 0) return;
  HG_CHECK(p.group >= 1, where + "group must be >= 1, got " + std::to_string(p.group));
  HG_CHECK(p.head_dim >= 1 && p.head_dim <= 1024,
           where + "head_dim must be in [1, 1024], got " + std::to_string(p.head_dim));
  HG_CHECK(p.q && p.keys.data && p.out, where + "null q, keys or out pointer");
  HG_CHECK(p.q_head_stride >= p.head_dim || p.n_kv_heads * p.group == 1,
           where + "q_head_stride " + std::to_string(p.q_head_stride) +
               " is shorter than head_dim " + std::to_string(p.head_dim));
  HG_CHECK(p.keys.token_stride >= p.head_dim || (p.n_tokens == 1 && !p.token_index),
           where + "keys.token_stride " + std::to_string(p.keys.token_stride) +
               " is shorter than head_dim " + std::to_string(p.head_dim));
  HG_CHECK(p.out_head_stride >= p.n_tokens || p.n_kv_heads * p.group == 1,
           where + "out_head_stride " + std::to_string(p.out_head_stride) +
               " is shorter than n_tokens " + std::to_string(p.n_tokens));
  if (path == LogitsPath::kAuto) path = logits_auto_path(p.keys.dtype);
  HG_CHECK(logits_path_supported(path, p.keys.dtype),
           where + "the " + logits_path_name(path) + " path cannot run " +
               key_dtype_name(p.keys.dtype) + " keys on this CPU");

  // The query, padded with zeros to a multiple of 32 so that masked key loads meet zeros:
  //   qf, qbf: [n_q_heads, qpad]
  const int n_q = p.n_kv_heads * p.group;
  const int qpad = (p.head_dim + 31) / 32 * 32;
  std::vector<float> qf(static_cast<size_t>(n_q) * qpad, 0.f);
  std::vector<uint16_t> qbf;
  for (int qh = 0; qh < n_q; ++qh)
    std::copy_n(p.q + qh * p.q_head_stride, p.head_dim, qf.data() + qh * qpad);
  if (path == LogitsPath::kAvx512Bf16) {
    qbf.assign(qf.size(), 0);
    for (size_t i = 0; i < qf.size(); ++i) qbf[i] = f32_to_bf16(qf[i]);
  }
  std::vector<float> qperm;
  if (path == LogitsPath::kAvx2 && p.keys.dtype == KeyDType::kBF16)
    permute_query16(qf, qperm, n_q, qpad, p.head_dim);
  const Ctx ctx{&p, qpad, qf.data(), qbf.data(), qperm.data()};
  const int pass_group = max_pass_group(path);

  const int n_blocks = (p.n_tokens + kTokenBlock - 1) / kTokenBlock;
  const int64_t items = static_cast<int64_t>(p.n_kv_heads) * n_blocks;
  // Static schedule: each thread gets a contiguous run of blocks, i.e. one sequential stream.
#pragma omp parallel for schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    const int h = static_cast<int>(it / n_blocks);
    const int t0 = static_cast<int>(it % n_blocks) * kTokenBlock;
    const int t1 = std::min(p.n_tokens, t0 + kTokenBlock);
    for (int j0 = 0; j0 < p.group; j0 += pass_group) {
      const int gs = std::min(pass_group, p.group - j0);
      block_fn(path, p.keys.dtype, p.head_dim, gs)(ctx, h, t0, t1, j0, gs);
    }
  }
}

}  // namespace hybridgen::cpu
