// The baseline-ISA and AVX2+FMA builds of the CPU loops: the attribute that compiles a
// function for AVX2+FMA, and the run-time choice between the two builds.
#pragma once

#include <cstdlib>

// The hot loops are compiled twice, for the baseline ISA and with FASTMTL_CPU_AVX2, and
// the second is picked at run time where the CPU has it. (target_clones with arch= would
// block inlining of ordinary helpers into the clone.)
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTMTL_CPU_AVX2_CLONE 1
#define FASTMTL_CPU_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTMTL_CPU_AVX2_CLONE 0
#define FASTMTL_CPU_AVX2
#endif

namespace fastmtl {

// True where the CPU has AVX2 and FMA, unless FASTMTL_CPU_BASELINE is set to a non-empty
// value other than "0": then every kernel runs its baseline build, which the tests use to
// check the loops that AVX2 machines never take otherwise. Read once per process.
inline bool cpu_avx2_fma_enabled() {
#if FASTMTL_CPU_AVX2_CLONE
  static const bool enabled = [] {
    const char* forced = std::getenv("FASTMTL_CPU_BASELINE");
    if (forced != nullptr && forced[0] != '\0' && !(forced[0] == '0' && forced[1] == '\0'))
      return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return enabled;
#else
  return false;
#endif
}

}  // namespace fastmtl
