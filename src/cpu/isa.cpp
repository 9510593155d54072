#include "cpu/isa.h"

#include <cpuid.h>

#include <cstdlib>
#include <dnnl.hpp>
#include <mutex>

#include "cpu/gemv.h"
#include "cpu/linear.h"
#include "cpu/logits.h"
#include "cpu/quant/quant_gemv.h"
#include "cpu/quant/quant_gemv16.h"
#include "cpu/vec.h"
#include "util/check.h"
#include "util/log.h"

namespace hybridgen::cpu {

namespace {

struct Features {
  bool sse42 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512bf16 = false;
  bool os_avx = false, os_avx512 = false;  // the OS saves the YMM / ZMM state (XCR0)
};

uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

Features read_features() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  f.sse42 = c & (1u << 20);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  const bool osxsave = c & (1u << 27);
  f.avx = c & (1u << 28);
  if (osxsave) {
    const uint64_t xcr0 = xgetbv0();
    f.os_avx = (xcr0 & 0x6) == 0x6;                   // XMM + YMM state
    f.os_avx512 = f.os_avx && (xcr0 & 0xE0) == 0xE0;  // opmask + ZMM_Hi256 + Hi16_ZMM
  }
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = a & (1u << 5);
  }
  return f;
}

const Features& features() {
  static const Features f = read_features();
  return f;
}

Isa detect(const Features& f) {
  const bool avx2 = f.os_avx && f.avx && f.avx2 && f.fma && f.f16c;
  const bool avx512 = avx2 && f.os_avx512 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  if (avx512 && f.avx512bf16) return Isa::kAvx512Bf16;
  if (avx512) return Isa::kAvx512;
  if (avx2) return Isa::kAvx2;
  return Isa::kPortable;
}

// oneDNN's cap for our level. oneDNN has no level below SSE4.1 (its reference C++ kernels run
// where SSE4.1 is missing), so "portable" maps to sse41.
dnnl::cpu_isa dnnl_cap(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return dnnl::cpu_isa::sse41;
    case Isa::kAvx2:
      return dnnl::cpu_isa::avx2;
    case Isa::kAvx512:
      return dnnl::cpu_isa::avx512_core;
    case Isa::kAvx512Bf16:
      return dnnl::cpu_isa::avx512_core_bf16;
  }
  return dnnl::cpu_isa::all;
}

struct Active {
  Isa isa = Isa::kPortable;
  bool capped = false;
};

Active resolve() {
  Active a;
  const Isa have = detect(features());
  a.isa = have;
  const char* env = std::getenv("HYBRIDGEN_CPU_ISA");
  if (env && *env) {
    const Isa want = parse_isa(env, "HYBRIDGEN_CPU_ISA");
    if (static_cast<uint8_t>(want) > static_cast<uint8_t>(have)) {
      log().warn(
          "HYBRIDGEN_CPU_ISA={} asks for more than this CPU has ({}; features: {}); using {}", env,
          isa_name(have), cpu_features(), isa_name(have));
    } else {
      a.isa = want;
      a.capped = want != have;
    }
    // The same cap for oneDNN's JIT. It must precede the first primitive; active_isa() is
    // called before any (Linear and the engine ask for it first).
    const dnnl::status st = dnnl::set_max_cpu_isa(dnnl_cap(a.isa));
    if (st != dnnl::status::success)
      log().warn(
          "HYBRIDGEN_CPU_ISA={}: oneDNN's ISA cap could not be set (a oneDNN primitive "
          "already exists); its GEMMs may use a higher level",
          env);
  }
  return a;
}

const Active& active() {
  static const Active a = resolve();
  return a;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return "portable";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx512Bf16:
      return "avx512bf16";
  }
  return "?";
}

Isa parse_isa(const std::string& s, const std::string& what) {
  for (Isa i : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16})
    if (s == isa_name(i)) return i;
  fail(what + ": unknown CPU instruction set '" + s +
       "' (expected portable, avx2, avx512 or avx512bf16)");
}

Isa detected_isa() { return detect(features()); }
Isa active_isa() { return active().isa; }
bool isa_capped() { return active().capped; }

std::string cpu_features() {
  const Features& f = features();
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(f.sse42, "sse4.2");
  add(f.avx && f.os_avx, "avx");
  add(f.avx2 && f.os_avx, "avx2");
  add(f.fma && f.os_avx, "fma");
  add(f.f16c && f.os_avx, "f16c");
  add(f.avx512f && f.os_avx512, "avx512f");
  add(f.avx512bw && f.os_avx512, "avx512bw");
  add(f.avx512vl && f.os_avx512, "avx512vl");
  add(f.avx512dq && f.os_avx512, "avx512dq");
  add(f.avx512bf16 && f.os_avx512, "avx512bf16");
  return s.empty() ? "x86-64 baseline only" : s;
}

std::string describe_dispatch() {
  std::string s = std::string("cpu: ") + isa_name(active_isa()) + " (detected " +
                  isa_name(detected_isa()) + (isa_capped() ? ", capped by HYBRIDGEN_CPU_ISA" : "") +
                  "; features: " + cpu_features() + ")\n";
  s += std::string("  gemv f32 weights:  ") + isa_name(gemv_f32_isa()) + "\n";
  s += std::string("  gemv bf16 weights: ") + isa_name(gemv_bf16_isa()) + "\n";
  s += std::string("  gemv quantized weights, native (activations int16 per 32, f32 scale): ") +
       quant_path_name(quant_gemv16_path()) +
       " (Q4_0 Q4_1 Q8_0 Q4_K Q6_K; the other types with their native-q8 kernels)\n";
  s += std::string(
           "  gemv quantized weights, native-q8 (activations Q8_0/Q8_1/Q8_K as llama.cpp): ") +
       quant_gemv_describe(quant_gemv_path()) +
       "; prefill: row panels dequantized to f32 for oneDNN's f32 GEMM\n";
  s += std::string("  prefill GEMM:      oneDNN matmul (f32 weights); bf16 weights: ") +
       (linear_bf16_uses_f32_panels() ? "converted to f32 panels for oneDNN's f32 GEMM (oneDNN "
                                        "2.6 has no bf16 matmul below AVX-512)"
                                      : "oneDNN bf16 matmul") +
       "\n";
  s += std::string("  logits (bf16 keys): ") + logits_path_name(logits_auto_path(KeyDType::kBF16)) +
       ", f32 keys: " + logits_path_name(logits_auto_path(KeyDType::kF32)) + "\n";
  s += std::string("  attention dot/axpy: ") + isa_name(vec_isa()) + "\n";
  s += std::string("  bf16 conversion:   ") + isa_name(vec_isa());
  return s;
}

}  // namespace hybridgen::cpu
