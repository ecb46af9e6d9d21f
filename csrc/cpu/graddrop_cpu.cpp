// CPU body of the GradDrop op (Chen et al. 2020): one pass over the per-task gradients.
//
// For each element d, with x_t the purity source (J's column, or purity[:, d]):
//   P_d = 1/2 (1 + sum_t x_t / sum_t |x_t|)          (1/2 where every x_t is 0)
//   u_d = Philox4x32-10 uniform of (key, d, stream)
//   keep_d = +1 if P_d > u_d, -1 if P_d < u_d, 0 on a tie
//   c_td = 1 if sign(x_t) == keep_d != 0, else leak_t       (= k_t + (1 - k_t) M_td)
//   out[b * D + d] (+)= sum_t c_td J[t, b * D + d]
// J is walked in column blocks that stay in cache between the purity and the sum, so every
// element of J is read from memory once. Sums run in float32 (float64 for float64 input) in
// task order, as the pure-PyTorch reference does.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../graddrop_common.h"
#include "fastmtl/philox.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTMTL_GD_AVX2_CLONE 1
#define FASTMTL_GD_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTMTL_GD_AVX2_CLONE 0
#define FASTMTL_GD_AVX2
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
};

// keep[i] for columns [d0, d0 + m) from the purity source rows.
template <typename S, typename A>
FASTMTL_GD_INLINE void block_keep(const S* src, const GradDropArgs& a, int64_t d0, int64_t m,
                                  A* sum, A* abs_sum, int8_t* keep) {
  for (int64_t i = 0; i < m; ++i) sum[i] = abs_sum[i] = A(0);
  for (int t = 0; t < a.T; ++t) {
    const S* row = src + t * a.lds + d0;
    for (int64_t i = 0; i < m; ++i) {
      const A x = static_cast<A>(row[i]);
      sum[i] += x;
      abs_sum[i] += std::abs(x);
    }
  }
  for (int64_t i = 0; i < m; i += 4) {
    const Philox4 r = philox_block(static_cast<uint64_t>((d0 + i) >> 2), a.stream, a.k0, a.k1);
    for (int64_t l = 0; l < 4 && i + l < m; ++l) {
      const A s = sum[i + l], z = abs_sum[i + l];
      const A P = z > A(0) ? A(0.5) * (A(1) + s / z) : A(0.5);
      const A u = static_cast<A>(philox_to_unit(r.v[l]));
      keep[i + l] = static_cast<int8_t>((P > u) - (P < u));
    }
  }
}

template <typename S, typename A>
FASTMTL_GD_INLINE void block_sum(const S* J, const S* src, const A* leak,
                                 const GradDropArgs& a, int64_t d0, int64_t m,
                                 const int8_t* keep, A* acc, S* out, bool accumulate) {
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t n0 = b * a.D + d0;
    for (int64_t i = 0; i < m; ++i) acc[i] = A(0);
    for (int t = 0; t < a.T; ++t) {
      const S* jr = J + t * a.ldj + n0;
      const S* sr = src + t * a.lds + d0;
      const A k = leak[t];
      for (int64_t i = 0; i < m; ++i) {
        const A x = static_cast<A>(sr[i]);
        const int8_t sgn = static_cast<int8_t>((x > A(0)) - (x < A(0)));
        const A c = (keep[i] != 0 && sgn == keep[i]) ? A(1) : k;
        acc[i] += static_cast<A>(jr[i]) * c;
      }
    }
    S* o = out + n0;
    if (accumulate) {
      for (int64_t i = 0; i < m; ++i) o[i] = static_cast<S>(static_cast<A>(o[i]) + acc[i]);
    } else {
      for (int64_t i = 0; i < m; ++i) o[i] = static_cast<S>(acc[i]);
    }
  }
}

template <typename S, typename A>
FASTMTL_GD_INLINE void blocks_range_body(const S* J, const S* src, const A* leak,
                                         const GradDropArgs& a, int64_t c0, int64_t c1, S* out,
                                         bool accumulate) {
  std::vector<A> sum(kBlock), abs_sum(kBlock), acc(kBlock);
  std::vector<int8_t> keep(kBlock);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t d0 = c * kBlock, m = std::min(kBlock, a.D - d0);
    block_keep<S, A>(src, a, d0, m, sum.data(), abs_sum.data(), keep.data());
    block_sum<S, A>(J, src, leak, a, d0, m, keep.data(), acc.data(), out, accumulate);
  }
}

// The same loops compiled for the baseline ISA and for AVX2+FMA, picked at run time.
template <typename S, typename A>
void blocks_range(const S* J, const S* src, const A* leak, const GradDropArgs& a, int64_t c0,
                  int64_t c1, S* out, bool accumulate) {
  blocks_range_body<S, A>(J, src, leak, a, c0, c1, out, accumulate);
}

#if FASTMTL_GD_AVX2_CLONE
template <typename S, typename A>
FASTMTL_GD_AVX2 void blocks_range_avx2(const S* J, const S* src, const A* leak,
                                       const GradDropArgs& a, int64_t c0, int64_t c1, S* out,
                                       bool accumulate) {
  blocks_range_body<S, A>(J, src, leak, a, c0, c1, out, accumulate);
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
  for (int64_t t = 0; t < J.size(0); ++t) k[t] = static_cast<A>(leak_c.data_ptr<double>()[t]);
  const int64_t* key = seed_c.data_ptr<int64_t>();
  GradDropArgs a{(int)J.size(0), D, D > 0 ? J.size(1) / D : 0, J.stride(0),
                 purity.has_value() ? purity->stride(0) : J.stride(0),
                 static_cast<uint32_t>(key[0]), static_cast<uint32_t>(key[1]),
                 static_cast<uint32_t>(stream)};
  const S* j = J.data_ptr<S>();
  const S* src = purity.has_value() ? purity->data_ptr<S>() : j;
  S* o = out.data_ptr<S>();
  const int64_t chunks = (D + kBlock - 1) / kBlock;
#if FASTMTL_GD_AVX2_CLONE
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
#if FASTMTL_GD_AVX2_CLONE
    if (avx2) return blocks_range_avx2<S, A>(j, src, k.data(), a, c0, c1, o, accumulate);
#endif
    blocks_range<S, A>(j, src, k.data(), a, c0, c1, o, accumulate);
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
