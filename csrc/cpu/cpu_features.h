// Run-time choice between the baseline-ISA and the AVX2+FMA builds of the CPU loops.
#pragma once

#include <cstdlib>

namespace fastmtl {

// True where the CPU has AVX2 and FMA, unless FASTMTL_CPU_BASELINE is set to a non-empty
// value other than "0": then every kernel runs its baseline build, which the tests use to
// check the loops that AVX2 machines never take otherwise. Read once per process.
inline bool cpu_avx2_fma_enabled() {
#if defined(__x86_64__) && defined(__GNUC__)
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
