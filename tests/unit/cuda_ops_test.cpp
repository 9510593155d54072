// Every CUDA kernel of the CUDA backend (kernels/ops_api.h) against the CPU backend's op
// (src/cpu/ops.h, cpu::Linear), in the style of llama.cpp's test-backend-ops: fresh random
// inputs per case, several shapes per op, the device output poisoned with NaN before each run,
// and every element checked against a normalized tolerance:
//
//   |gpu[i] - cpu[i]| <= tol * max_j |cpu[j]|   for every i; a NaN or Inf never passes.
//
// Tolerances (tol), per op:
//   exact (0)  to_bf16 (bit-identical to f32_to_bf16), embedding, add_positions, gather_rows,
//              add_bias, add, relu, kv_append, argmax (index)
//   1e-5       rms_norm, layer_norm, rope, swiglu (float32 math; only the summation order or
//              the libm's last ulp differ)
//   5e-5       attention (float32 online softmax over up to ~3000 positions); the same over a
//              bf16 cache against the CPU on K/V rounded to bf16 (kv_append into bf16:
//              bit-identical to f32_to_bf16); against the CPU in float32, 5e-5 plus the
//              rounding's own effect measured on the CPU (the triangle inequality)
//   1e-4       linear with bf16 weights vs cpu::Linear with the same bf16 weights (both round x
//              to bf16: only the float32 summation order differs)
//   2e-2       linear with float32 weights (rounded to bf16 on the GPU) vs cpu::Linear in float32
//
// Measured on an H100 and an H200 (max over all cases): attention 7.3e-6, linear (bf16) 3.1e-6,
// linear (float32 weights) 2.3e-3, layer_norm 3.4e-7, rms_norm 3.3e-7, rope 1.8e-7, swiglu 1.6e-7,
// the exact ops 0; compute-sanitizer memcheck and racecheck clean.
//
// Without a usable CUDA device (or in a build without CUDA) every GPU test skips with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../../kernels/ops_api.h"
#include "cpu/linear.h"
#include "cpu/ops.h"
#include "kv/kv_cache.h"
#include "model/dequant.h"
#include "model/model_config.h"
#include "runtime/backend.h"

namespace cu = hybridgen::cuda;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- helpers --------------------------------------------------------------------------------

// One device array of n T's, freed on scope exit.
template <class T>
class Dev {
 public:
  explicit Dev(size_t n)
      : n_(n), p_(static_cast<T*>(cu::device_alloc(std::max<size_t>(n, 1) * sizeof(T), "test"))) {}
  explicit Dev(const std::vector<T>& host) : Dev(host.size()) { upload(host); }
  ~Dev() { cu::device_free(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;

  T* get() const { return p_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    ASSERT_LE(host.size(), n_);
    cu::copy_to_device(p_, host.data(), host.size() * sizeof(T));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    cu::copy_to_host(host.data(), p_, n_ * sizeof(T));
    return host;
  }

 private:
  size_t n_;
  T* p_;
};

// Fills a float device array with NaN, so that an element the kernel fails to write shows up.
void poison(Dev<float>& d) { cu::fill(d.get(), static_cast<int64_t>(d.size()), kNaN, nullptr); }

std::vector<float> random_vec(std::mt19937& rng, size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Every element within tol * max|ref| (tol 0: bit-exact values); NaN/Inf in got never pass.
::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& ref,
                                 double tol) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != reference size " << ref.size();
  double scale = 0;
  for (float r : ref) scale = std::max(scale, double(std::fabs(r)));
  if (scale == 0) scale = 1;
  size_t bad = 0, worst = 0;
  double worst_err = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    double err = std::fabs(double(got[i]) - double(ref[i])) / scale;
    if (!std::isfinite(got[i]) || std::isnan(err)) err = std::numeric_limits<double>::infinity();
    if (!(err <= tol)) ++bad;
    if (err > worst_err) {
      worst = i;
      worst_err = err;
    }
  }
  if (worst_err < 0) worst_err = 0;
  std::ostringstream os;
  os << "max normalized error " << worst_err << " at element " << worst << " (gpu "
     << (got.empty() ? 0.f : got[worst]) << ", cpu " << (ref.empty() ? 0.f : ref[worst])
     << ", max|cpu| " << scale << "), tolerance " << tol << ", " << bad << " of " << got.size()
     << " elements out of tolerance";
  if (bad > 0) return ::testing::AssertionFailure() << os.str();
  return ::testing::AssertionSuccess() << os.str();
}

// EXPECTs close() and prints the measured error, so a passing run also shows the margins.
void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tol,
                  const std::string& what) {
  const ::testing::AssertionResult r = close(got, ref, tol);
  EXPECT_TRUE(r) << what;
  std::printf("[ %s ] %s\n", what.c_str(), r.message());
}

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!hybridgen::cuda_available(&why)) GTEST_SKIP() << "no CUDA: " << why;
  }
};

// ---- the comparator itself (runs without a GPU) ---------------------------------------------

TEST(Comparator, NaNAndInfNeverPass) {
  EXPECT_TRUE(close({1.f, 2.f}, {1.f, 2.f}, 0));
  EXPECT_FALSE(close({1.f, kNaN}, {1.f, 2.f}, 1e9));
  EXPECT_FALSE(close({1.f, std::numeric_limits<float>::infinity()}, {1.f, 2.f}, 1e9));
  EXPECT_FALSE(close({1.f, 2.1f}, {1.f, 2.f}, 1e-3));
  EXPECT_TRUE(close({1.f, 2.001f}, {1.f, 2.f}, 1e-3));
  EXPECT_FALSE(close({1.f}, {1.f, 2.f}, 1));
}

// ---- conversion, gathers, element-wise ------------------------------------------------------

TEST_F(CudaOps, ToBf16IsBitIdenticalToTheHost) {
  std::mt19937 rng(1);
  std::vector<float> x = random_vec(rng, 100003, -4.f, 4.f);
  // Magnitudes across the range, ties, denormals, zeros, infinities.
  std::uniform_int_distribution<int> e(-140, 120);
  for (size_t i = 0; i < x.size(); i += 3) x[i] = std::ldexp(x[i], e(rng));
  const float specials[] = {0.f,
                            -0.f,
                            1.f,
                            -1.f,
                            1.00390625f /* tie */,
                            1.01171875f /* tie */,
                            std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
  for (size_t i = 0; i < std::size(specials); ++i) x[i] = specials[i];
  Dev<float> dx(x);            // [n]
  Dev<uint16_t> dy(x.size());  // [n] bf16 bits
  cu::copy_to_device(dy.get(), std::vector<uint16_t>(x.size(), 0xFFFF).data(), x.size() * 2);
  cu::to_bf16(dx.get(), dy.get(), static_cast<int64_t>(x.size()), nullptr);
  const std::vector<uint16_t> got = dy.download();
  size_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (got[i] != hybridgen::f32_to_bf16(x[i]) && bad++ < 5)
      ADD_FAILURE() << "to_bf16(" << x[i] << ") = " << got[i] << ", host "
                    << hybridgen::f32_to_bf16(x[i]);
  EXPECT_EQ(bad, 0u);
}

TEST_F(CudaOps, EmbeddingPositionsAndGatherRows) {
  std::mt19937 rng(2);
  for (int d : {64, 576, 1000}) {
    for (int n : {1, 37}) {
      SCOPED_TRACE("d=" + std::to_string(d) + " n=" + std::to_string(n));
      const int vocab = 300, offset = 2, max_pos = 256;
      const std::vector<float> table = random_vec(rng, size_t(vocab) * d);  // [vocab, d]
      const std::vector<float> pos_table =
          random_vec(rng, size_t(max_pos + offset) * d);  // [max_pos + offset, d]
      std::vector<int32_t> ids(n), pos(n);                // [n]
      for (int t = 0; t < n; ++t) {
        ids[t] = std::uniform_int_distribution<int>(0, vocab - 1)(rng);
        pos[t] = std::uniform_int_distribution<int>(0, max_pos - 1)(rng);
      }
      ids[0] = vocab - 1;
      pos[0] = max_pos - 1;

      std::vector<float> ref(size_t(n) * d);  // [n, d]
      hybridgen::cpu::embedding(table.data(), ids.data(), n, d, ref.data());
      Dev<float> dtable(table), dpos_table(pos_table), out(size_t(n) * d);
      Dev<int32_t> dids(ids), dpos(pos);
      poison(out);
      cu::embedding(dtable.get(), dids.get(), n, d, out.get(), nullptr);
      expect_close(out.download(), ref, 0, "embedding");

      for (int t = 0; t < n; ++t)
        for (int i = 0; i < d; ++i)
          ref[size_t(t) * d + i] += pos_table[(size_t(pos[t]) + offset) * d + i];
      cu::add_positions(out.get(), dpos_table.get(), dpos.get(), offset, n, d, nullptr);
      expect_close(out.download(), ref, 0, "add_positions");

      std::vector<int32_t> rows;  // [n_rows]
      for (int t = n - 1; t >= 0; t -= 2) rows.push_back(t);
      const int n_rows = static_cast<int>(rows.size());
      std::vector<float> gathered(size_t(n_rows) * d);  // [n_rows, d]
      for (int r = 0; r < n_rows; ++r)
        std::copy_n(&ref[size_t(rows[r]) * d], d, &gathered[size_t(r) * d]);
      Dev<int32_t> drows(rows);
      Dev<float> g(size_t(n_rows) * d);
      poison(g);
      cu::gather_rows(out.get(), drows.get(), n_rows, d, g.get(), nullptr);
      expect_close(g.download(), gathered, 0, "gather_rows");
    }
  }
}

TEST_F(CudaOps, ElementWise) {
  std::mt19937 rng(3);
  for (int n : {1, 37}) {
    for (int width : {64, 333, 4096}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " width=" + std::to_string(width));
      const size_t count = size_t(n) * width;
      const std::vector<float> x = random_vec(rng, count);  // [n, width]
      const std::vector<float> y = random_vec(rng, count);  // [n, width]
      const std::vector<float> b = random_vec(rng, width);  // [width]

      {  // add_bias
        std::vector<float> ref = x;
        for (size_t i = 0; i < count; ++i) ref[i] += b[i % width];
        Dev<float> dx(x), db(b);
        cu::add_bias(dx.get(), db.get(), n, width, nullptr);
        expect_close(dx.download(), ref, 0, "add_bias");
      }
      {  // add
        std::vector<float> ref = x;
        hybridgen::cpu::add(ref.data(), y.data(), int64_t(count));
        Dev<float> dx(x), dy(y);
        cu::add(dx.get(), dy.get(), int64_t(count), nullptr);
        expect_close(dx.download(), ref, 0, "add");
      }
      {  // relu
        std::vector<float> ref = x;
        hybridgen::cpu::relu(ref.data(), int64_t(count));
        Dev<float> dx(x);
        cu::relu(dx.get(), int64_t(count), nullptr);
        expect_close(dx.download(), ref, 0, "relu");
      }
      {  // swiglu: gu [n, 2 d_ff] -> [n, d_ff], with d_ff = width
        const std::vector<float> gu = random_vec(rng, 2 * count, -6.f, 6.f);
        std::vector<float> ref(count);
        hybridgen::cpu::swiglu(gu.data(), n, width, ref.data());
        Dev<float> dgu(gu), out(count);
        poison(out);
        cu::swiglu(dgu.get(), n, width, out.get(), nullptr);
        expect_close(out.download(), ref, 1e-5, "swiglu");
      }
    }
  }
}

// ---- norms ----------------------------------------------------------------------------------

TEST_F(CudaOps, RmsNormAndLayerNorm) {
  std::mt19937 rng(4);
  for (int d : {64, 100, 576, 4096}) {
    for (int n : {1, 37}) {
      SCOPED_TRACE("d=" + std::to_string(d) + " n=" + std::to_string(n));
      std::vector<float> x = random_vec(rng, size_t(n) * d, -3.f, 3.f);  // [n, d]
      for (float& v : x) v += 0.5f;  // a non-zero mean for the LayerNorm
      const std::vector<float> w = random_vec(rng, d, 0.5f, 1.5f);  // [d]
      const std::vector<float> b = random_vec(rng, d);              // [d]
      Dev<float> dx(x), dw(w), db(b), out(size_t(n) * d);

      std::vector<float> ref(x.size());
      hybridgen::cpu::rms_norm(x.data(), w.data(), n, d, 1e-5f, ref.data());
      poison(out);
      cu::rms_norm(dx.get(), dw.get(), n, d, 1e-5f, out.get(), nullptr);
      expect_close(out.download(), ref, 1e-5, "rms_norm");

      hybridgen::cpu::layer_norm(x.data(), w.data(), b.data(), n, d, 1e-6f, ref.data());
      poison(out);
      cu::layer_norm(dx.get(), dw.get(), db.get(), n, d, 1e-6f, out.get(), nullptr);
      expect_close(out.download(), ref, 1e-5, "layer_norm");

      // In place (out aliases x), as the backend normalises the logit rows.
      hybridgen::cpu::rms_norm(x.data(), w.data(), n, d, 1e-6f, ref.data());
      cu::rms_norm(dx.get(), dw.get(), n, d, 1e-6f, dx.get(), nullptr);
      expect_close(dx.download(), ref, 1e-5, "rms_norm in place");
    }
  }
}

// ---- RoPE -----------------------------------------------------------------------------------

TEST_F(CudaOps, Rope) {
  std::mt19937 rng(5);
  hybridgen::ModelConfig plain;  // theta 10000
  plain.rope_theta = 10000.f;
  hybridgen::ModelConfig llama3 = plain;  // tiny-llama's Llama-3 scaling
  llama3.rope_theta = 500000.f;
  llama3.rope_scale_factor = 8.f;
  llama3.rope_low_freq_factor = 1.f;
  llama3.rope_high_freq_factor = 4.f;
  llama3.rope_original_max_positions = 32;
  for (int head_dim : {64, 128}) {
    for (bool partial : {false, true}) {
      for (bool neox : {true, false}) {
        for (int n : {1, 37}) {
          for (bool strided : {false, true}) {
            const int rope_dim = partial ? head_dim / 2 : head_dim;
            const int n_heads = n == 1 ? 9 : 4;
            hybridgen::ModelConfig cfg = (head_dim == 64) ? plain : llama3;
            cfg.rope_dim = rope_dim;
            const std::vector<float> inv_freq = cfg.rope_inv_freq();  // [rope_dim / 2]
            SCOPED_TRACE("head_dim=" + std::to_string(head_dim) + " rope_dim=" +
                         std::to_string(rope_dim) + (neox ? " neox" : " interleaved") +
                         " n=" + std::to_string(n) + (strided ? " strided" : ""));
            const int width = n_heads * head_dim;
            // Strided: the heads sit inside a wider row (as Q or K inside the QKV buffer).
            const int64_t stride = strided ? width + 3 * head_dim + 5 : width;
            const int64_t head_offset = strided ? head_dim + 1 : 0;
            std::vector<int32_t> pos(n);  // [n]
            for (int t = 0; t < n; ++t) pos[t] = std::uniform_int_distribution<int>(0, 3000)(rng);
            pos[0] = 3000;
            if (n > 1) pos[1] = 0;
            const std::vector<float> rows = random_vec(rng, size_t(n) * stride);  // [n, stride]
            std::vector<float> heads(size_t(n) * width);  // [n, n_heads, head_dim]
            for (int t = 0; t < n; ++t)
              std::copy_n(&rows[t * stride + head_offset], width, &heads[size_t(t) * width]);
            hybridgen::cpu::rope(heads.data(), n, n_heads, head_dim, rope_dim, pos.data(),
                                 inv_freq.data(), neox);
            std::vector<float> ref = rows;  // everything outside the heads is unchanged
            for (int t = 0; t < n; ++t)
              std::copy_n(&heads[size_t(t) * width], width, &ref[t * stride + head_offset]);

            Dev<float> dx(rows), dfreq(inv_freq);
            Dev<int32_t> dpos(pos);
            cu::rope(dx.get() + head_offset, stride, n, n_heads, head_dim, rope_dim, dpos.get(),
                     dfreq.get(), neox, nullptr);
            expect_close(dx.download(), ref, 1e-5, "rope");
          }
        }
      }
    }
  }
}

// ---- GEMM -----------------------------------------------------------------------------------

struct LinearCase {
  int m, in, out;
  bool bias;
};

TEST_F(CudaOps, LinearMatchesCpuLinear) {
  std::mt19937 rng(6);
  cu::BlasHandle blas = cu::blas_create(nullptr);
  const LinearCase cases[] = {{1, 64, 192, false},    {37, 576, 1728, true}, {37, 72, 100, true},
                              {512, 256, 320, false}, {3, 2048, 64, true},   {1, 576, 49152, false},
                              {5, 16, 8, true}};
  for (const LinearCase& c : cases) {
    SCOPED_TRACE("m=" + std::to_string(c.m) + " in=" + std::to_string(c.in) +
                 " out=" + std::to_string(c.out) + (c.bias ? " bias" : ""));
    const std::vector<float> w = random_vec(rng, size_t(c.out) * c.in, -0.1f, 0.1f);  // [out, in]
    const std::vector<float> b = c.bias ? random_vec(rng, c.out) : std::vector<float>();  // [out]
    const std::vector<float> x = random_vec(rng, size_t(c.m) * c.in);                     // [m, in]
    Dev<float> dx(x), db(b), y(size_t(c.m) * c.out);  // y: [m, out]
    Dev<uint16_t> xb(size_t(c.m) * c.in);             // [m, in] workspace
    std::vector<float> ref(size_t(c.m) * c.out);

    // Same bf16 weights on both sides: only the float32 summation order differs.
    hybridgen::cpu::Linear lb(c.out, c.in, w, b, hybridgen::cpu::WeightType::kBF16);
    lb.forward(x.data(), ref.data(), c.m);
    Dev<uint16_t> dw(lb.weight_bf16());  // [out, in] bf16
    poison(y);
    cu::linear(blas, dw.get(), c.bias ? db.get() : nullptr, dx.get(), xb.get(), y.get(), c.m, c.in,
               c.out, nullptr);
    expect_close(y.download(), ref, 1e-4, "linear, bf16 weights");

    // float32 weights on the CPU, bf16-rounded on the GPU.
    hybridgen::cpu::Linear lf(c.out, c.in, w, b, hybridgen::cpu::WeightType::kF32);
    lf.forward(x.data(), ref.data(), c.m);
    std::vector<uint16_t> wb(w.size());
    for (size_t i = 0; i < w.size(); ++i) wb[i] = hybridgen::f32_to_bf16(w[i]);
    dw.upload(wb);
    poison(y);
    cu::linear(blas, dw.get(), c.bias ? db.get() : nullptr, dx.get(), xb.get(), y.get(), c.m, c.in,
               c.out, nullptr);
    expect_close(y.download(), ref, 2e-2, "linear, float32 weights");
  }
  cu::blas_destroy(blas);
}

// ---- KV append and attention ----------------------------------------------------------------

struct AttnCase {
  int head_dim, n_heads, n_kv_heads;
  int n;                  // query tokens
  int ctx;                // cached positions of sequence 0 (sequence 1 holds ctx / 2 + 5)
  int window;             // 0: unlimited
  bool two_seqs;          // queries from two sequences in one call
  float scale_mul = 1.f;  // > 1: peakier softmax
  // Queries as prefill chunks: runs of consecutive positions ending at each sequence's last
  // position (two sequences: a run of sequence 0, then one of sequence 1 with a stray sequence-0
  // token inside it), instead of random positions.
  bool prefill = false;
};

std::string describe(const AttnCase& c) {
  return "head_dim=" + std::to_string(c.head_dim) + " heads=" + std::to_string(c.n_heads) + "/" +
         std::to_string(c.n_kv_heads) + " n=" + std::to_string(c.n) +
         " ctx=" + std::to_string(c.ctx) + " window=" + std::to_string(c.window) +
         (c.two_seqs ? " two sequences" : "") + " scale x" + std::to_string(c.scale_mul) +
         (c.prefill ? " prefill runs" : "");
}

void PrintTo(const AttnCase& c, std::ostream* os) { *os << describe(c); }

class CudaAttention : public CudaOps, public ::testing::WithParamInterface<AttnCase> {};

TEST_P(CudaAttention, KvAppendAndAttentionMatchCpu) {
  const AttnCase c = GetParam();
  SCOPED_TRACE(describe(c));
  std::mt19937 rng(7 + c.head_dim + c.n + c.ctx + c.window);
  const int n_layers = 2, max_seqs = 2;
  const int capacity = c.ctx + 8;
  const int hd = c.head_dim, kv_w = c.n_kv_heads * hd, q_w = c.n_heads * hd;
  const int lengths[2] = {c.ctx, c.ctx / 2 + 5};

  hybridgen::kv::KvCacheManager cache({n_layers, c.n_kv_heads, hd}, capacity, max_seqs);
  ASSERT_EQ(cache.open_sequence(), 0);
  ASSERT_EQ(cache.open_sequence(), 1);

  // Device cache: per slot [n_layers][n_kv_heads, capacity, head_dim], poisoned with NaN so that
  // reading an unwritten position (past the causal limit) shows up as NaN.
  const size_t slot_elems = size_t(n_layers) * c.n_kv_heads * capacity * hd;
  Dev<float> k0(slot_elems), k1(slot_elems), v0(slot_elems), v1(slot_elems);
  for (Dev<float>* b : {&k0, &k1, &v0, &v1}) poison(*b);
  Dev<float*> k_slots(std::vector<float*>{k0.get(), k1.get()});  // [max_seqs]
  Dev<float*> v_slots(std::vector<float*>{v0.get(), v1.get()});  // [max_seqs]

  std::vector<std::vector<float>> kept_rows;  // [seq * n_layers + layer] -> [len, stride]
  const int64_t stride = 2 * kv_w + 3;
  for (int s = 0; s < max_seqs; ++s) {
    const int len = lengths[s];
    ASSERT_EQ(cache.reserve(s, len), 0);
    std::vector<int32_t> seq(len, s), pos(len);  // [len]
    for (int p = 0; p < len; ++p) pos[p] = p;
    Dev<int32_t> dseq(seq), dpos(pos);
    for (int layer = 0; layer < n_layers; ++layer) {
      // K and V of each position inside one row [k | v | pad], as in the QKV buffer.
      const std::vector<float> rows = random_vec(rng, size_t(len) * stride);  // [len, stride]
      kept_rows.push_back(rows);
      for (int p = 0; p < len; ++p)
        cache.write(s, layer, p, &rows[p * stride], &rows[p * stride + kv_w]);
      Dev<float> drows(rows);
      cu::kv_append(drows.get(), drows.get() + kv_w, stride, len, c.n_kv_heads, hd, dseq.get(),
                    dpos.get(), k_slots.get(), v_slots.get(), layer, capacity, nullptr);
    }
  }
  // The device cache holds exactly what the manager holds, at the same places.
  for (int s = 0; s < max_seqs; ++s) {
    const std::vector<float> gk = (s == 0 ? k0 : k1).download();
    const std::vector<float> gv = (s == 0 ? v0 : v1).download();
    std::vector<float> got, ref;
    for (int layer = 0; layer < n_layers; ++layer) {
      const hybridgen::kv::LayerView view = cache.view(s, layer);
      for (int h = 0; h < c.n_kv_heads; ++h)
        for (int p = 0; p < lengths[s]; ++p) {
          const size_t off =
              (size_t(layer) * c.n_kv_heads * capacity + size_t(h) * capacity + p) * hd;
          got.insert(got.end(), &gk[off], &gk[off] + hd);
          got.insert(got.end(), &gv[off], &gv[off] + hd);
          ref.insert(ref.end(), view.key(h, p), view.key(h, p) + hd);
          ref.insert(ref.end(), view.value(h, p), view.value(h, p) + hd);
        }
    }
    expect_close(got, ref, 0, "kv_append, sequence " + std::to_string(s));
  }

  // Queries: random positions of their sequence, including the first and the last.
  std::vector<int32_t> seq(c.n), pos(c.n);  // [n]
  for (int t = 0; t < c.n; ++t) {
    seq[t] = c.two_seqs ? t % 2 : 0;
    pos[t] = std::uniform_int_distribution<int>(0, lengths[seq[t]] - 1)(rng);
  }
  pos[0] = lengths[seq[0]] - 1;
  if (c.n > 2) pos[2] = 0;
  if (c.prefill) {
    // Sequence 0: tokens [0, n0) at positions len0 - n0 .. len0 - 1; sequence 1: tokens [n0, n)
    // at len1 - (n - n0) .. len1 - 1, except token n0 + 5 (sequence 0, a random position), which
    // breaks that run in two inside one 64-token tile.
    const int n0 = c.two_seqs ? c.n * 2 / 3 : c.n;
    for (int t = 0; t < n0; ++t) {
      seq[t] = 0;
      pos[t] = lengths[0] - n0 + t;
    }
    for (int t = n0; t < c.n; ++t) {
      seq[t] = 1;
      pos[t] = lengths[1] - (c.n - n0) + (t - n0);
    }
    if (c.two_seqs && c.n - n0 > 6) {
      seq[n0 + 5] = 0;
      pos[n0 + 5] = std::uniform_int_distribution<int>(0, lengths[0] - 1)(rng);
    }
    for (int t = 0; t < c.n; ++t) ASSERT_GE(pos[t], 0) << "bad test case";
  }
  const int64_t q_stride = q_w + 2 * kv_w + 1;  // queries inside QKV-like rows
  const std::vector<float> qrows = random_vec(rng, size_t(c.n) * q_stride);  // [n, q_stride]
  std::vector<float> q(size_t(c.n) * q_w);  // [n, n_heads, head_dim]
  for (int t = 0; t < c.n; ++t) std::copy_n(&qrows[t * q_stride], q_w, &q[size_t(t) * q_w]);
  const float scale = c.scale_mul / std::sqrt(static_cast<float>(hd));
  const int layer = 1;

  std::vector<float> ref(size_t(c.n) * q_w);  // [n, n_heads, head_dim]
  hybridgen::cpu::attention(q.data(), c.n, c.n_heads, hd, seq.data(), pos.data(), cache, layer,
                            scale, c.window, ref.data());
  Dev<float> dq(qrows), out(size_t(c.n) * q_w);
  Dev<int32_t> dseq(seq), dpos(pos);
  poison(out);
  cu::attention(dq.get(), q_stride, c.n, c.n_heads, c.n_kv_heads, hd, dseq.get(), dpos.get(),
                k_slots.get(), v_slots.get(), layer, capacity, scale, c.window, out.get(), nullptr);
  expect_close(out.download(), ref, 5e-5, "attention");

  // The bf16 cache (the CUDA backend's full path since issue 15): kv_append rounds each K/V
  // element to bf16 (round to nearest even, bit-identical to f32_to_bf16), attention widens it
  // back to float32 and computes as above. Tolerances, derived:
  //  - against the CPU attention over K/V rounded to bf16 on the CPU side (the same inputs the
  //    GPU sees): only the float32 summation order differs, so the float32 tolerance, 5e-5;
  //  - against the CPU in float32 (unrounded K/V): by the triangle inequality, at most that 5e-5
  //    plus the distance the rounding itself makes on the CPU, |cpu(bf16 K/V) - cpu(f32 K/V)|,
  //    measured here per case (normalized as everywhere by max|cpu|).
  hybridgen::kv::KvCacheManager cache16({n_layers, c.n_kv_heads, hd}, capacity, max_seqs);
  ASSERT_EQ(cache16.open_sequence(), 0);
  ASSERT_EQ(cache16.open_sequence(), 1);
  Dev<uint16_t> bk0(slot_elems), bk1(slot_elems), bv0(slot_elems), bv1(slot_elems);
  for (Dev<uint16_t>* b : {&bk0, &bk1, &bv0, &bv1})  // bf16 NaN: an unwritten read shows
    b->upload(std::vector<uint16_t>(slot_elems, 0x7fc0));
  Dev<uint16_t*> bk_slots(std::vector<uint16_t*>{bk0.get(), bk1.get()});  // [max_seqs]
  Dev<uint16_t*> bv_slots(std::vector<uint16_t*>{bv0.get(), bv1.get()});  // [max_seqs]
  auto round_bf16 = [](float x) { return hybridgen::bf16_to_f32(hybridgen::f32_to_bf16(x)); };
  for (int s = 0; s < max_seqs; ++s) {
    const int len = lengths[s];
    ASSERT_EQ(cache16.reserve(s, len), 0);
    std::vector<int32_t> sq(len, s), ps(len);
    for (int p = 0; p < len; ++p) ps[p] = p;
    Dev<int32_t> dsq(sq), dps(ps);
    for (int l = 0; l < n_layers; ++l) {
      const std::vector<float>& rows = kept_rows[size_t(s) * n_layers + l];
      std::vector<float> rounded(rows.size());
      std::transform(rows.begin(), rows.end(), rounded.begin(), round_bf16);
      for (int p = 0; p < len; ++p)
        cache16.write(s, l, p, &rounded[p * stride], &rounded[p * stride + kv_w]);
      Dev<float> drows(rows);
      cu::kv_append(drows.get(), drows.get() + kv_w, stride, len, c.n_kv_heads, hd, dsq.get(),
                    dps.get(), bk_slots.get(), bv_slots.get(), l, capacity, nullptr);
    }
  }
  for (int s = 0; s < max_seqs; ++s) {  // bit-identical to f32_to_bf16 of the float32 rows
    const std::vector<uint16_t> gk = (s == 0 ? bk0 : bk1).download();
    const std::vector<uint16_t> gv = (s == 0 ? bv0 : bv1).download();
    int64_t differ = 0;
    for (int l = 0; l < n_layers; ++l) {
      const hybridgen::kv::LayerView view = cache.view(s, l);
      for (int h = 0; h < c.n_kv_heads; ++h)
        for (int p = 0; p < lengths[s]; ++p)
          for (int i = 0; i < hd; ++i) {
            const size_t off =
                (size_t(l) * c.n_kv_heads * capacity + size_t(h) * capacity + p) * hd + i;
            differ += gk[off] != hybridgen::f32_to_bf16(view.key(h, p)[i]);
            differ += gv[off] != hybridgen::f32_to_bf16(view.value(h, p)[i]);
          }
    }
    EXPECT_EQ(differ, 0) << "kv_append (bf16), sequence " << s;
  }
  std::vector<float> ref16(size_t(c.n) * q_w);  // [n, n_heads, head_dim]
  hybridgen::cpu::attention(q.data(), c.n, c.n_heads, hd, seq.data(), pos.data(), cache16, layer,
                            scale, c.window, ref16.data());
  Dev<float> out16(size_t(c.n) * q_w);
  poison(out16);
  cu::attention(dq.get(), q_stride, c.n, c.n_heads, c.n_kv_heads, hd, dseq.get(), dpos.get(),
                bk_slots.get(), bv_slots.get(), layer, capacity, scale, c.window, out16.get(),
                nullptr);
  const std::vector<float> got16 = out16.download();
  expect_close(got16, ref16, 5e-5, "attention, bf16 cache vs cpu on bf16-rounded K/V");
  double scale_ref = 0, rounding = 0;  // the rounding's own effect on the CPU, normalized
  for (float r : ref) scale_ref = std::max(scale_ref, double(std::fabs(r)));
  if (scale_ref == 0) scale_ref = 1;
  for (size_t i = 0; i < ref.size(); ++i)
    rounding = std::max(rounding, std::fabs(double(ref16[i]) - ref[i]) / scale_ref);
  expect_close(got16, ref, 5e-5 + rounding,
               "attention, bf16 cache vs cpu float32 (tolerance 5e-5 + rounding " +
                   std::to_string(rounding) + ")");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttention,
    ::testing::Values(AttnCase{64, 9, 3, 1, 3000, 0, false},  // SmolLM2-like decode, group 3
                      AttnCase{64, 9, 3, 37, 3000, 0, true},
                      AttnCase{128, 8, 2, 37, 3000, 0, false},  // group 4
                      AttnCase{128, 8, 8, 1, 3000, 0, false},   // group 1 (MHA)
                      AttnCase{128, 32, 8, 37, 2500, 0, true},
                      AttnCase{64, 4, 1, 37, 3000, 1000, false},   // sliding window
                      AttnCase{128, 12, 4, 1, 3000, 4096, false},  // window > context
                      AttnCase{64, 8, 8, 37, 300, 64, true},
                      AttnCase{16, 4, 2, 37, 200, 8, false},         // tiny-mistral's shape
                      AttnCase{128, 4, 4, 1, 1, 0, false},           // a single cached position
                      AttnCase{64, 9, 3, 37, 3000, 0, false, 16.f},  // peaky softmax
                      AttnCase{128, 8, 2, 1, 3000, 0, true, 16.f},
                      // Split-KV (decode, n <= 64): long contexts, batches, groups > 8.
                      AttnCase{128, 16, 4, 1, 33000, 0, false},  // Llama-3.1-8B group, 32K
                      AttnCase{128, 32, 8, 8, 9000, 0, true},    // batch of 8, two sequences
                      AttnCase{64, 9, 3, 5, 12000, 0, true},
                      AttnCase{128, 8, 2, 1, 20000, 4096, false},  // window, long context
                      AttnCase{128, 8, 2, 64, 6000, 2000, true},   // 64 queries, window
                      AttnCase{64, 24, 2, 3, 2000, 0, true},       // group 12: two sub-groups
                      AttnCase{128, 8, 2, 1, 33000, 0, false, 16.f},
                      // Query-tiled (prefill, n > 64, head_dim 64/128).
                      AttnCase{128, 8, 2, 300, 2000, 0, true, 1.f, true},
                      AttnCase{128, 32, 8, 129, 129, 0, false, 1.f, true},  // whole prompt
                      AttnCase{64, 9, 3, 200, 1500, 100, true, 1.f, true},  // window
                      AttnCase{128, 8, 2, 70, 5000, 1000, false, 16.f, true},
                      AttnCase{64, 8, 8, 65, 65, 17, false, 1.f, true},  // window < tile
                      AttnCase{128, 4, 1, 100, 3000, 0, true},  // random positions: 1-token runs
                      AttnCase{64, 6, 2, 130, 200, 0, true, 1.f, true},
                      AttnCase{16, 4, 2, 100, 300, 8, true, 1.f, true}),  // per-token fallback
    [](const ::testing::TestParamInfo<AttnCase>& info) {
      const AttnCase& c = info.param;
      return "hd" + std::to_string(c.head_dim) + "_h" + std::to_string(c.n_heads) + "_kv" +
             std::to_string(c.n_kv_heads) + "_n" + std::to_string(c.n) + "_ctx" +
             std::to_string(c.ctx) + "_w" + std::to_string(c.window) + (c.two_seqs ? "_2seq" : "") +
             (c.scale_mul != 1.f ? "_peaky" : "") + (c.prefill ? "_prefill" : "");
    });

// ---- argmax ---------------------------------------------------------------------------------

TEST_F(CudaOps, Argmax) {
  std::mt19937 rng(8);
  for (auto [rows, width] :
       {std::pair{1, 320}, std::pair{37, 320}, std::pair{5, 49152}, std::pair{3, 152064}}) {
    SCOPED_TRACE("rows=" + std::to_string(rows) + " width=" + std::to_string(width));
    std::vector<float> x = random_vec(rng, size_t(rows) * width, -10.f, 10.f);  // [rows, width]
    // Row 0: a tie between two maxima, the first wins (as std::max_element).
    x[width / 3] = 20.f;
    x[width / 2] = 20.f;
    std::vector<int32_t> ref(rows);  // [rows]
    for (int r = 0; r < rows; ++r) {
      const float* row = &x[size_t(r) * width];
      ref[r] = static_cast<int32_t>(std::max_element(row, row + width) - row);
    }
    Dev<float> dx(x);
    Dev<int32_t> out(std::vector<int32_t>(rows, -1));
    cu::argmax(dx.get(), rows, width, out.get(), nullptr);
    EXPECT_EQ(out.download(), ref);
  }
}

}  // namespace
