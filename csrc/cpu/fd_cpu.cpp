// CPU body of the Feature Disentanglement op: one pass over the per-task gradients [T, N].
//
// For each element j: saliencies a_t = |g_tj|, s = sum_t a_t, p_t = a_t / s (or a softmax of
// a_t / temperature), H_j = -sum_t p_t log p_t. The map mode writes 1 - H_j / log T; the
// scalar modes keep per-chunk float64 partial sums of H (and s H, s) over the used elements
// (s != 0; NaN counts as used so that non-finite input reaches the result) and add the
// chunks in a fixed order, so the result does not depend on the thread count.
//
// float32 lanes (8 per AVX register) carry 16/32-bit inputs, with a vectorised log and exp
// (range reduction to [sqrt(1/2), sqrt(2)) / [-ln2/2, ln2/2] and minimax polynomials, about
// 1 ulp); float64 input is computed element by element with std::log/std::exp.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../fd_common.h"
#include "cpu_features.h"

// The vector helpers are always inlined, so the ABI note about 256-bit returns is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

#define FASTMTL_FD_INLINE inline __attribute__((always_inline))

namespace fastmtl {
namespace {

constexpr int W = 8;  // float lanes
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));

FASTMTL_FD_INLINE vf splat(float x) { return vf{x, x, x, x, x, x, x, x}; }

FASTMTL_FD_INLINE vf bits_to_f(vi x) {
  vf r;
  __builtin_memcpy(&r, &x, sizeof(r));
  return r;
}
FASTMTL_FD_INLINE vi f_to_bits(vf x) {
  vi r;
  __builtin_memcpy(&r, &x, sizeof(r));
  return r;
}

// |x| by clearing the sign bit.
FASTMTL_FD_INLINE vf vabs(vf x) { return bits_to_f(f_to_bits(x) & 0x7fffffff); }

// Natural log for x >= FLT_MIN (callers clamp; p log p is ~0 below). x = 2^e m with
// m in [sqrt(1/2), sqrt(2)), log x = e ln2 + log1p(m - 1) by a degree-9 polynomial.
FASTMTL_FD_INLINE vf vlog(vf x) {
  const vi bits = f_to_bits(x);
  vi e = ((bits >> 23) & 0xff) - 126;            // x = 2^e * m, m in [0.5, 1)
  vf m = bits_to_f((bits & 0x007fffff) | 0x3f000000);
  const vi small = m < splat(0.70710678f);       // -> m in [sqrt(1/2), sqrt(2))
  e = e + small;                                  // small is -1 where true
  m = small ? m + m : m;
  const vf f = m - 1.0f;
  const vf z = f * f;
  vf y = splat(7.0376836292e-2f);
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const vf ef = __builtin_convertvector(e, vf);
  y = y - 2.12194440e-4f * ef;  // ln2 split in a short high part and a correction
  y = y - 0.5f * z;
  return f + y + 0.693359375f * ef;
}

// exp(x) for x <= 0 (callers subtract the maximum); below -87 it flushes to ~0.
FASTMTL_FD_INLINE vf vexp(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  const vf n = __builtin_convertvector(
      __builtin_convertvector(x * 1.44269504089f + (x < splat(0.0f) ? -0.5f : 0.5f), vi), vf);
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const vf z = r * r;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const vi scale = (__builtin_convertvector(n, vi) + 127) << 23;
  return y * bits_to_f(scale);
}

template <typename S>
FASTMTL_FD_INLINE vf load8(const S* p) {
  if constexpr (std::is_same_v<S, float>) {
    vf v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  } else {
    float tmp[W];
    for (int l = 0; l < W; ++l) tmp[l] = static_cast<float>(p[l]);
    vf v;
    __builtin_memcpy(&v, tmp, sizeof(v));
    return v;
  }
}

// Entropy of 8 elements at column k; s receives the total saliency.
template <typename S>
FASTMTL_FD_INLINE vf entropy8(const S* const* rows, int T, int64_t k, float inv_temp, vf& s) {
  constexpr float kTiny = 1.17549435e-38f;
  vf sum = splat(0.0f);
  vf H = splat(0.0f);
  if (inv_temp == 0.0f) {
    for (int t = 0; t < T; ++t) sum += vabs(load8(rows[t] + k));
    const vf inv = 1.0f / (sum == splat(0.0f) ? splat(1.0f) : sum);
    for (int t = 0; t < T; ++t) {
      const vf p = vabs(load8(rows[t] + k)) * inv;
      H -= p * vlog(p < splat(kTiny) ? splat(kTiny) : p);  // 0 log 0 = 0; NaN stays NaN
    }
  } else {
    // H = log Z - sum_t p_t (x_t - m), x_t = a_t / tau, m = max_t x_t, Z = sum_t e^(x_t - m)
    vf mx = splat(0.0f);
    for (int t = 0; t < T; ++t) {
      const vf a = vabs(load8(rows[t] + k));
      sum += a;
      mx = a > mx ? a : mx;
    }
    // NaN never wins the comparison above: add sum * 0 (NaN for NaN/Inf input) to carry it.
    mx = mx * inv_temp + sum * 0.0f;
    vf Z = splat(0.0f), dot = splat(0.0f);
    for (int t = 0; t < T; ++t) {
      const vf d = vabs(load8(rows[t] + k)) * inv_temp - mx;
      const vf e = vexp(d);
      Z += e;
      dot += e * d;
    }
    H = vlog(Z) - dot / Z;
  }
  s = sum;
  return H;
}

// Scalar version in type A (tails and float64 input).
template <typename A, typename S>
FASTMTL_FD_INLINE A entropy1(const S* const* rows, int T, int64_t k, A inv_temp, A& s) {
  A sum = 0, H = 0;
  if (inv_temp == A(0)) {
    for (int t = 0; t < T; ++t) sum += std::abs(static_cast<A>(rows[t][k]));
    const A inv = A(1) / (sum == A(0) ? A(1) : sum);
    for (int t = 0; t < T; ++t) {
      const A p = std::abs(static_cast<A>(rows[t][k])) * inv;
      if (!(p == A(0))) H -= p * std::log(p);
    }
  } else {
    A mx = 0;
    for (int t = 0; t < T; ++t) {
      const A a = std::abs(static_cast<A>(rows[t][k]));
      sum += a;
      mx = a > mx ? a : mx;
    }
    mx = mx * inv_temp + sum * A(0);
    A Z = 0, dot = 0;
    for (int t = 0; t < T; ++t) {
      const A d = std::abs(static_cast<A>(rows[t][k])) * inv_temp - mx;
      const A e = std::exp(d);
      Z += e;
      dot += e * d;
    }
    H = std::log(Z) - dot / Z;
  }
  s = sum;
  return H;
}

constexpr int64_t kChunk = 16384;  // elements per partial sum (fixed: deterministic result)
constexpr int64_t kFlush = 512;    // float lanes are added into float64 this often

// Map mode over [k0, k1): out[j] = 1 - H_j / log T, 0 where unused.
template <typename S, typename A, bool kVec>
FASTMTL_FD_INLINE void map_range(const S* const* rows, int T, int64_t k0, int64_t k1,
                                 A inv_temp, A inv_log_t, A* out) {
  int64_t k = k0;
  if constexpr (kVec) {
    for (; k + W <= k1; k += W) {
      vf s;
      const vf H = entropy8(rows, T, k, static_cast<float>(inv_temp), s);
      const vf v = s == splat(0.0f) ? splat(0.0f) : 1.0f - H * static_cast<float>(inv_log_t);
      __builtin_memcpy(out + k, &v, sizeof(v));
    }
  }
  for (; k < k1; ++k) {
    A s;
    const A H = entropy1<A>(rows, T, k, inv_temp, s);
    out[k] = s == A(0) ? A(0) : A(1) - H * inv_log_t;
  }
}

// Scalar modes over [k0, k1): adds [sum H, count, sum s H, sum s] of the used elements.
template <typename S, typename A, bool kVec>
FASTMTL_FD_INLINE void sums_range(const S* const* rows, int T, int64_t k0, int64_t k1,
                                  A inv_temp, double* sums) {
  int64_t k = k0;
  if constexpr (kVec) {
    while (k + W <= k1) {
      vf sh = splat(0.0f), cnt = splat(0.0f), ssh = splat(0.0f), ss = splat(0.0f);
      const int64_t stop = std::min(k1, k + kFlush);
      for (; k + W <= stop; k += W) {
        vf s;
        vf H = entropy8(rows, T, k, static_cast<float>(inv_temp), s);
        const vi used = s != splat(0.0f);
        H = used ? H : splat(0.0f);
        sh += H;
        cnt += used ? splat(1.0f) : splat(0.0f);
        ssh += s * H;
        ss += s;
      }
      for (int l = 0; l < W; ++l) {
        sums[0] += sh[l];
        sums[1] += cnt[l];
        sums[2] += ssh[l];
        sums[3] += ss[l];
      }
    }
  }
  for (; k < k1; ++k) {
    A s;
    const A H = entropy1<A>(rows, T, k, inv_temp, s);
    if (!(s == A(0))) {
      sums[0] += H;
      sums[1] += 1.0;
      sums[2] += static_cast<double>(s) * H;
      sums[3] += s;
    }
  }
}

// Baseline and AVX2+FMA builds of the float-lane loops, picked at run time.
#define FASTMTL_FD_KERNELS(S)                                                                 \
  void fd_map_base(const S* const* r, int T, int64_t k0, int64_t k1, float it, float il,     \
                   float* o) {                                                                \
    map_range<S, float, true>(r, T, k0, k1, it, il, o);                                       \
  }                                                                                           \
  FASTMTL_CPU_AVX2 void fd_map_avx2(const S* const* r, int T, int64_t k0, int64_t k1,        \
                                    float it, float il, float* o) {                          \
    map_range<S, float, true>(r, T, k0, k1, it, il, o);                                       \
  }                                                                                           \
  void fd_sums_base(const S* const* r, int T, int64_t k0, int64_t k1, float it, double* s) { \
    sums_range<S, float, true>(r, T, k0, k1, it, s);                                          \
  }                                                                                           \
  FASTMTL_CPU_AVX2 void fd_sums_avx2(const S* const* r, int T, int64_t k0, int64_t k1,       \
                                     float it, double* s) {                                   \
    sums_range<S, float, true>(r, T, k0, k1, it, s);                                          \
  }

FASTMTL_FD_KERNELS(float)
FASTMTL_FD_KERNELS(c10::Half)
FASTMTL_FD_KERNELS(c10::BFloat16)

template <typename S>
void fd_map_lanes(const S* const* r, int T, int64_t k0, int64_t k1, float it, float il,
                  float* o) {
  cpu_avx2_fma_enabled() ? fd_map_avx2(r, T, k0, k1, it, il, o)
                         : fd_map_base(r, T, k0, k1, it, il, o);
}

template <typename S>
void fd_sums_lanes(const S* const* r, int T, int64_t k0, int64_t k1, float it, double* s) {
  cpu_avx2_fma_enabled() ? fd_sums_avx2(r, T, k0, k1, it, s) : fd_sums_base(r, T, k0, k1, it, s);
}

template <typename S>
at::Tensor fd_typed(const at::Tensor& grads, double temperature, int64_t reduce) {
  using A = std::conditional_t<std::is_same_v<S, double>, double, float>;
  const int T = (int)grads.size(0);
  const int64_t N = grads.size(1), ld = grads.stride(0);
  const S* base = grads.const_data_ptr<S>();
  std::vector<const S*> rows(T);
  for (int t = 0; t < T; ++t) rows[t] = base + t * ld;
  const A inv_temp = temperature > 0.0 ? static_cast<A>(1.0 / temperature) : A(0);
  const double log_t = std::log((double)T);
  const auto opts = grads.options().dtype(std::is_same_v<A, double> ? at::kDouble : at::kFloat);

  if (reduce == 0) {
    at::Tensor out = at::empty({N}, opts);
    A* o = out.data_ptr<A>();
    const A inv_log_t = static_cast<A>(1.0 / log_t);
    at::parallel_for(0, N, kChunk, [&](int64_t k0, int64_t k1) {
      if constexpr (std::is_same_v<S, double>) {
        map_range<S, A, false>(rows.data(), T, k0, k1, inv_temp, inv_log_t, o);
      } else {
        fd_map_lanes<S>(rows.data(), T, k0, k1, inv_temp, inv_log_t, o);
      }
    });
    return out;
  }

  const int64_t chunks = std::max<int64_t>(1, (N + kChunk - 1) / kChunk);
  std::vector<double> partial((size_t)chunks * kFdSums, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t k0 = c * kChunk, k1 = std::min(N, k0 + kChunk);
      double* sums = partial.data() + c * kFdSums;
      if constexpr (std::is_same_v<S, double>) {
        sums_range<S, A, false>(rows.data(), T, k0, k1, inv_temp, sums);
      } else {
        fd_sums_lanes<S>(rows.data(), T, k0, k1, inv_temp, sums);
      }
    }
  });
  double tot[kFdSums] = {0, 0, 0, 0};
  for (int64_t c = 0; c < chunks; ++c)
    for (int i = 0; i < kFdSums; ++i) tot[i] += partial[c * kFdSums + i];
  const double num = reduce == 1 ? tot[0] : tot[2];
  const double den = reduce == 1 ? tot[1] : tot[3];
  // den != 0 is false only when no element is used (documented FD = 0); NaN passes through.
  const double fd = den != 0.0 ? 1.0 - num / (den * log_t) : 0.0;
  return at::scalar_tensor(fd, opts);
}

at::Tensor feature_disentanglement_cpu(const at::Tensor& grads, double temperature,
                                       int64_t reduce) {
  check_fd_args(grads, temperature, reduce);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(),
                                  "fastmtl::feature_disentanglement",
                                  [&] { out = fd_typed<scalar_t>(grads, temperature, reduce); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("feature_disentanglement", &feature_disentanglement_cpu);
}

}  // namespace fastmtl
