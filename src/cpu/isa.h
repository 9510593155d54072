// Run-time choice of the CPU instruction set for every hot CPU path.
//
// One binary runs on any x86-64 CPU: nothing is compiled with -march for a whole file; the
// kernels that need more than the x86-64 baseline carry __attribute__((target(...))) and are
// called only when the CPU (and the cap below) allows them. The levels are ordered: a level
// implies every level below it.
//
//   portable     the x86-64 baseline (SSE2); plain loops the compiler vectorises for it
//   avx2         AVX2 + FMA + F16C (Intel Haswell, AMD Zen and later)
//   avx512       AVX-512 F/BW/VL/DQ (Skylake-SP, Zen 4)
//   avx512bf16   avx512 + AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4)
//
// HYBRIDGEN_CPU_ISA=portable|avx2|avx512|avx512bf16 caps the level (tests run every path on one
// machine this way); it also caps oneDNN's JIT (dnnl::set_max_cpu_isa) so the prefill GEMMs
// take the same level. A cap above what the CPU has is lowered to what it has, with a warning.
#pragma once
#include <cstdint>
#include <string>

namespace hybridgen::cpu {

enum class Isa : uint8_t { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

const char* isa_name(Isa isa);
// Parses "portable", "avx2", "avx512" or "avx512bf16"; throws hybridgen::Error naming `what`
// (e.g. the environment variable) and the accepted values otherwise.
Isa parse_isa(const std::string& s, const std::string& what);

// The highest level this CPU supports (cpuid + OS support of the register state).
Isa detected_isa();
// The level the kernels use: detected_isa() lowered by HYBRIDGEN_CPU_ISA. Read once, on first
// use; the oneDNN cap is applied at the same time (before any oneDNN primitive exists).
Isa active_isa();
// Whether the kernels may use `isa` (isa <= active_isa()).
inline bool isa_enabled(Isa isa) {
  return static_cast<uint8_t>(isa) <= static_cast<uint8_t>(active_isa());
}
// True when HYBRIDGEN_CPU_ISA lowered the level below what the CPU has.
bool isa_capped();

// The CPU's relevant features as cpuid reports them, e.g. "sse4.2 avx avx2 fma f16c avx512f
// avx512bw avx512vl avx512dq avx512bf16" (for error messages and -v).
std::string cpu_features();

// One line per hot op naming the path it takes on this machine (hybridgen-run -v prints it).
std::string describe_dispatch();

}  // namespace hybridgen::cpu
