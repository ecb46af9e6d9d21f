// CPU body of the GradDrop op (Chen et al. 2020): one pass over the per-task gradients.
//
// For each element d, with x_t the purity source (J's column, or purity[:, d]):
//   P_d = 1/2 (1 + sum_t x_t / sum_t |x_t|)          (1/2 where every x_t is 0)
//   u_d = Philox4x32-10 uniform of (key, d, stream)
//   keep_d = +1 if P_d > u_d, -1 if P_d < u_d, 0 on a tie
//   c_td = 1 if sign(x_t) == keep_d != 0, else leak_t       (= k_t + (1 - k_t) M_td)
//   out[b * D + d] (+)= sum_t c_td J[t, b * D + d]
// P is formed from the positive and negative parts pos = sum_t max(x_t, 0), neg = sum_t
// min(x_t, 0) (s = pos + neg, sum |x| = pos - neg). Without a purity source the kept sum is
// one of those parts, so J is read once with no second loop (block_direct); with one, J is
// walked in column blocks that stay in cache (block_purity). Sums run in float32 (float64
// for float64 input) in task order, as the pure-PyTorch reference does.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../graddrop_common.h"
#include "cpu_features.h"
#include "fastmtl/philox.h"

#if FASTMTL_CPU_AVX2_CLONE
#include <immintrin.h>
#endif
#define FASTMTL_GD_INLINE inline __attribute__((always_inline))

namespace fastmtl {
namespace {

constexpr int64_t kBlock = 512;  // columns per block (a multiple of 4: one Philox draw each)

template <typename S>
using gd_acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

struct GradDropArgs {
  int T;
  int64_t D, batch;        // N = batch * D
  int64_t ldj, lds;        // row strides of J and of the purity source
  uint32_t k0, k1, stream;  // Philox key and stream
  bool has_purity;          // a separate [T, D] source (decided by the argument, not by
                            // pointers: a purity view may start at J's own data)
};

// Philox uniforms of columns [d0, d0 + m) (d0 a multiple of 4): four block counters at a
// time in 64-bit vector lanes holding 32-bit words, so the 32x32->64 multiplies vectorise.
typedef uint64_t v4u64 __attribute__((vector_size(32)));

FASTMTL_GD_INLINE void block_uniforms_generic(const GradDropArgs& a, int64_t d0, int64_t m,
                                              float* u) {
  const v4u64 lo32 = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
  for (int64_t i = 0; i < m; i += 16) {
    const uint64_t b0 = static_cast<uint64_t>((d0 + i) >> 2);
    v4u64 c0 = {b0, b0 + 1, b0 + 2, b0 + 3};
    v4u64 c1 = c0 >> 32;
    c0 &= lo32;
    v4u64 c2 = {a.stream, a.stream, a.stream, a.stream};
    v4u64 c3 = {0, 0, 0, 0};
    uint64_t k0 = a.k0, k1 = a.k1;
    for (int round = 0; round < 10; ++round) {
      const v4u64 p0 = c0 * 0xD2511F53u, p1 = c2 * 0xCD9E8D57u;
      const v4u64 n0 = (p1 >> 32) ^ c1 ^ k0, n2 = (p0 >> 32) ^ c3 ^ k1;
      c1 = p1 & lo32;
      c3 = p0 & lo32;
      c0 = n0;
      c2 = n2;
      k0 = (k0 + 0x9E3779B9u) & 0xffffffffu;
      k1 = (k1 + 0xBB67AE85u) & 0xffffffffu;
    }
    for (int l = 0; l < 4; ++l) {
      const int64_t j = i + 4 * l;
      const uint32_t words[4] = {static_cast<uint32_t>(c0[l]), static_cast<uint32_t>(c1[l]),
                                 static_cast<uint32_t>(c2[l]), static_cast<uint32_t>(c3[l])};
      for (int w = 0; w < 4 && j + w < m; ++w) u[j + w] = philox_to_unit(words[w]);
    }
  }
}

#if FASTMTL_CPU_AVX2_CLONE
// philox_to_unit on eight words
FASTMTL_CPU_AVX2 FASTMTL_GD_INLINE __m256 to_unit_avx2(__m256i x) {
  const __m256 f = _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 9));
  return _mm256_mul_ps(_mm256_add_ps(f, _mm256_set1_ps(0.5f)),
                       _mm256_set1_ps(1.1920928955078125e-07f));
}

// The same draws with AVX2 intrinsics: GCC's generic vectors multiply 64-bit lanes in full
// (three vpmuludq each), while the words are 32-bit, so one vpmuludq is exact. The 4x4
// transpose and the conversion to (0, 1) are done in registers too. Not inlined: a function
// without the AVX2 target sits between it and the AVX2 clone (one call per block).
FASTMTL_CPU_AVX2 __attribute__((noinline)) void block_uniforms_avx2(const GradDropArgs& a,
                                                                  int64_t d0, int64_t m,
                                                                  float* u) {
  const __m256i m0 = _mm256_set1_epi64x(0xD2511F53u), m1 = _mm256_set1_epi64x(0xCD9E8D57u);
  const __m256i lo32 = _mm256_set1_epi64x(0xffffffffu);
  for (int64_t i = 0; i < m; i += 16) {
    const int64_t b0 = (d0 + i) >> 2;
    const __m256i block = _mm256_setr_epi64x(b0, b0 + 1, b0 + 2, b0 + 3);
    __m256i c0 = _mm256_and_si256(block, lo32), c1 = _mm256_srli_epi64(block, 32);
    __m256i c2 = _mm256_set1_epi64x(a.stream), c3 = _mm256_setzero_si256();
    uint32_t k0 = a.k0, k1 = a.k1;
    for (int round = 0; round < 10; ++round) {
      const __m256i p0 = _mm256_mul_epu32(c0, m0), p1 = _mm256_mul_epu32(c2, m1);
      const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1),
                                          _mm256_set1_epi64x(k0));
      const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3),
                                          _mm256_set1_epi64x(k1));
      c1 = _mm256_and_si256(p1, lo32);
      c3 = _mm256_and_si256(p0, lo32);
      c0 = n0;
      c2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    // lane l holds counter b0 + l; lay its words w0..w3 out contiguously, counters in order
    const __m256i w01 = _mm256_or_si256(c0, _mm256_slli_epi64(c1, 32));
    const __m256i w23 = _mm256_or_si256(c2, _mm256_slli_epi64(c3, 32));
    const __m256i even = _mm256_unpacklo_epi64(w01, w23), odd = _mm256_unpackhi_epi64(w01, w23);
    const __m256i first = _mm256_permute2x128_si256(even, odd, 0x20);
    const __m256i second = _mm256_permute2x128_si256(even, odd, 0x31);
    if (i + 16 <= m) {
      _mm256_storeu_ps(u + i, to_unit_avx2(first));
      _mm256_storeu_ps(u + i + 8, to_unit_avx2(second));
    } else {
      alignas(32) float tail[16];
      _mm256_store_ps(tail, to_unit_avx2(first));
      _mm256_store_ps(tail + 8, to_unit_avx2(second));
      for (int64_t j = i; j < m; ++j) u[j] = tail[j - i];
    }
  }
}
#endif

template <bool kAvx2>
FASTMTL_GD_INLINE void block_uniforms(const GradDropArgs& a, int64_t d0, int64_t m, float* u) {
#if FASTMTL_CPU_AVX2_CLONE
  if constexpr (kAvx2) return block_uniforms_avx2(a, d0, m, u);
#endif
  block_uniforms_generic(a, d0, m, u);
}

// Sign purity P of one column from its positive and negative parts. The divisor is made
// safe before dividing so that the select needs no speculated division and vectorises.
template <typename A>
FASTMTL_GD_INLINE A purity_of(A pos, A neg) {
  const A s = pos + neg, z = pos - neg;
  const bool any = z > A(0);
  const A r = s / (any ? z : A(1));
  return any ? A(0.5) * (A(1) + r) : A(0.5);
}

// The kept sign (+1, -1, or 0 on a tie or a NaN purity) as a number of the accumulator
// type, so the loops that use it stay in one vector width with no branches.
template <typename A>
FASTMTL_GD_INLINE A keep_sign(A pos, A neg, float u) {
  const A P = purity_of<A>(pos, neg), uu = static_cast<A>(u);
  return P > uu ? A(1) : (P < uu ? A(-1) : A(0));
}

template <typename S, typename A>
FASTMTL_GD_INLINE void store(S* o, int64_t i, A v, bool accumulate) {
  o[i] = static_cast<S>(accumulate ? static_cast<A>(o[i]) + v : v);
}

// Adds R consecutive rows of J (the tasks t..t+R-1) into the block's running sums, in task
// order; R rows per sweep keep the sums in registers for R additions instead of one.
template <typename S, typename A, bool kLeak, int R>
FASTMTL_GD_INLINE void add_rows(const S* __restrict__ row, int64_t ld, const A* __restrict__ leak,
                                int64_t m, A* __restrict__ pos, A* __restrict__ neg,
                                A* __restrict__ ks, A* __restrict__ wpos,
                                A* __restrict__ wneg) {
  for (int64_t i = 0; i < m; ++i) {
    A p = pos[i], n = neg[i], kx = A(0), wp = A(0), wn = A(0);
    if constexpr (kLeak) kx = ks[i], wp = wpos[i], wn = wneg[i];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const A x = static_cast<A>(row[r * ld + i]);
      // NaN goes into both parts (so into P and the result)
      const A xp = x < A(0) ? A(0) : x, xn = x > A(0) ? A(0) : x;
      p += xp;
      n += xn;
      if constexpr (kLeak) {
        const A k = leak[r];
        kx += k * x;
        wp += (A(1) - k) * xp;
        wn += (A(1) - k) * xn;
      }
    }
    pos[i] = p;
    neg[i] = n;
    if constexpr (kLeak) ks[i] = kx, wpos[i] = wp, wneg[i] = wn;
  }
}

// Purity from J itself (B = 1): one pass. With x_t = J[t, d], the kept sum is the positive
// or the negative part, so d = sum_t k_t x_t + sum_t (1 - k_t) x_t^{+/-}: every sum is
// formed before the decision and J is read once, with no second loop over the tasks.
template <typename S, typename A, bool kLeak, bool kAvx2>
FASTMTL_GD_INLINE void block_direct(const S* __restrict__ J, const A* __restrict__ leak,
                                    const GradDropArgs& a, int64_t d0, int64_t m,
                                    A* __restrict__ pos, A* __restrict__ neg,
                                    A* __restrict__ ks, A* __restrict__ wpos,
                                    A* __restrict__ wneg, float* __restrict__ u,
                                    S* __restrict__ out, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    pos[i] = neg[i] = A(0);
    if constexpr (kLeak) ks[i] = wpos[i] = wneg[i] = A(0);
  }
  int t = 0;
  for (; t + 4 <= a.T; t += 4)
    add_rows<S, A, kLeak, 4>(J + t * a.ldj + d0, a.ldj, leak + t, m, pos, neg, ks, wpos, wneg);
  for (; t < a.T; ++t)
    add_rows<S, A, kLeak, 1>(J + t * a.ldj + d0, a.ldj, leak + t, m, pos, neg, ks, wpos, wneg);
  block_uniforms<kAvx2>(a, d0, m, u);
  S* o = out + d0;
  for (int64_t i = 0; i < m; ++i) {
    const A P = purity_of<A>(pos[i], neg[i]), uu = static_cast<A>(u[i]);
    // A tie keeps nothing: 0, or NaN where the column held Inf (P = Inf/Inf is NaN). A
    // NaN column has P = 1/2, and both of its parts are NaN, so the result is NaN anyway.
    const A none = (pos[i] + neg[i]) * A(0);
    A v;
    if constexpr (kLeak) {
      v = ks[i] + (P > uu ? wpos[i] : (P < uu ? wneg[i] : none));
    } else {
      v = P > uu ? pos[i] : (P < uu ? neg[i] : none);
    }
    store<S, A>(o, i, v, accumulate);
  }
}

// Purity from a separate [T, D] source (the batch-separated rule): the decision per column
// of the source, then the masked sum over the tasks for every batch row of J.
template <typename S, typename A, bool kAvx2>
FASTMTL_GD_INLINE void block_purity(const S* J, const S* src, const A* leak,
                                    const GradDropArgs& a, int64_t d0, int64_t m,
                                    A* __restrict__ pos, A* __restrict__ neg,
                                    A* __restrict__ acc, float* __restrict__ u,
                                    A* __restrict__ keep, S* out, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) pos[i] = neg[i] = A(0);
  for (int t = 0; t < a.T; ++t) {
    const S* row = src + t * a.lds + d0;
    for (int64_t i = 0; i < m; ++i) {
      const A x = static_cast<A>(row[i]);
      pos[i] += x < A(0) ? A(0) : x;
      neg[i] += x > A(0) ? A(0) : x;
    }
  }
  block_uniforms<kAvx2>(a, d0, m, u);
  for (int64_t i = 0; i < m; ++i) keep[i] = keep_sign<A>(pos[i], neg[i], u[i]);
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t n0 = b * a.D + d0;
    for (int64_t i = 0; i < m; ++i) acc[i] = A(0);
    for (int t = 0; t < a.T; ++t) {
      const S* __restrict__ jr = J + t * a.ldj + n0;
      const S* __restrict__ sr = src + t * a.lds + d0;
      const A k = leak[t];
      for (int64_t i = 0; i < m; ++i) {
        // keep * x > 0 exactly when sign(x) is the kept sign (false for a tie, NaN, 0)
        const A c = keep[i] * static_cast<A>(sr[i]) > A(0) ? A(1) : k;
        acc[i] += static_cast<A>(jr[i]) * c;
      }
    }
    for (int64_t i = 0; i < m; ++i) store<S, A>(out + n0, i, acc[i], accumulate);
  }
}

template <typename S, typename A, bool kAvx2>
FASTMTL_GD_INLINE void blocks_range_body(const S* J, const S* src, const A* leak,
                                         const GradDropArgs& a, bool has_leak, int64_t c0,
                                         int64_t c1, S* out, bool accumulate) {
  std::vector<A> buf(5 * kBlock);
  A *pos = buf.data(), *neg = pos + kBlock, *x3 = neg + kBlock, *x4 = x3 + kBlock,
    *x5 = x4 + kBlock;
  std::vector<float> u(kBlock);
  std::vector<A> keep(kBlock);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t d0 = c * kBlock, m = std::min(kBlock, a.D - d0);
    if (a.has_purity) {
      block_purity<S, A, kAvx2>(J, src, leak, a, d0, m, pos, neg, x3, u.data(), keep.data(), out,
                         accumulate);
    } else if (has_leak) {
      block_direct<S, A, true, kAvx2>(J, leak, a, d0, m, pos, neg, x3, x4, x5, u.data(), out,
                               accumulate);
    } else {
      block_direct<S, A, false, kAvx2>(J, leak, a, d0, m, pos, neg, x3, x4, x5, u.data(), out,
                                accumulate);
    }
  }
}

// The same loops compiled for the baseline ISA and for AVX2+FMA, picked at run time.
template <typename S, typename A>
void blocks_range(const S* J, const S* src, const A* leak, const GradDropArgs& a,
                  bool has_leak, int64_t c0, int64_t c1, S* out, bool accumulate) {
  blocks_range_body<S, A, false>(J, src, leak, a, has_leak, c0, c1, out, accumulate);
}

#if FASTMTL_CPU_AVX2_CLONE
template <typename S, typename A>
FASTMTL_CPU_AVX2 void blocks_range_avx2(const S* J, const S* src, const A* leak,
                                       const GradDropArgs& a, bool has_leak, int64_t c0,
                                       int64_t c1, S* out, bool accumulate) {
  blocks_range_body<S, A, true>(J, src, leak, a, has_leak, c0, c1, out, accumulate);
}
#endif

template <typename S>
void graddrop_typed(const at::Tensor& J, const at::Tensor& leak, const at::Tensor& seed,
                    const c10::optional<at::Tensor>& purity, int64_t stream, int64_t D,
                    at::Tensor& out, bool accumulate) {
  using A = gd_acc_t<S>;
  const at::Tensor leak_c = leak.contiguous();
  const at::Tensor seed_c = seed.contiguous();
  std::vector<A> k(J.size(0));
  bool has_leak = false;
  for (int64_t t = 0; t < J.size(0); ++t) {
    k[t] = static_cast<A>(leak_c.data_ptr<double>()[t]);
    has_leak |= k[t] != A(0);
  }
  const int64_t* key = seed_c.data_ptr<int64_t>();
  GradDropArgs a{(int)J.size(0), D, D > 0 ? J.size(1) / D : 0, J.stride(0),
                 purity.has_value() ? purity->stride(0) : J.stride(0),
                 static_cast<uint32_t>(key[0]), static_cast<uint32_t>(key[1]),
                 static_cast<uint32_t>(stream), purity.has_value()};
  const S* j = J.data_ptr<S>();
  const S* src = purity.has_value() ? purity->data_ptr<S>() : j;
  S* o = out.data_ptr<S>();
  const int64_t chunks = (D + kBlock - 1) / kBlock;
#if FASTMTL_CPU_AVX2_CLONE
  const bool avx2 = cpu_avx2_fma_enabled();
#endif
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
#if FASTMTL_CPU_AVX2_CLONE
    if (avx2)
      return blocks_range_avx2<S, A>(j, src, k.data(), a, has_leak, c0, c1, o, accumulate);
#endif
    blocks_range<S, A>(j, src, k.data(), a, has_leak, c0, c1, o, accumulate);
  });
}

void graddrop_out_cpu(const at::Tensor& J, const at::Tensor& leak, const at::Tensor& seed,
                      const c10::optional<at::Tensor>& purity, int64_t stream, at::Tensor out,
                      bool accumulate) {
  const int64_t D = check_graddrop_args(J, leak, seed, purity, stream);
  check_out(out, J);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "fastmtl::graddrop",
                                  [&] {
                                    graddrop_typed<scalar_t>(J, leak, seed, purity, stream, D,
                                                             out, accumulate);
                                  });
}

at::Tensor graddrop_cpu(const at::Tensor& J, const at::Tensor& leak, const at::Tensor& seed,
                        const c10::optional<at::Tensor>& purity, int64_t stream) {
  at::Tensor out = at::empty({J.size(1)}, J.options());
  graddrop_out_cpu(J, leak, seed, purity, stream, out, false);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("graddrop", &graddrop_cpu);
  m.impl("graddrop_out", &graddrop_out_cpu);
}

}  // namespace fastmtl
