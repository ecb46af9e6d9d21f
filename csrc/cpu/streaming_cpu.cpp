// CPU streaming kernels: the Gram matrix G = J J^T and the combination d = w^T J.
//
// Both walk J once, in column blocks that fit in cache. For each block the Gram
// kernel forms every pair's dot product from the cached rows (each row is read
// from memory once), in float32 (float64 for float64 input), and adds the block's
// result into per-chunk float64 sums; chunks are combined in a fixed order, so the
// result does not depend on the thread count's scheduling.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "../ops_common.h"
#include "cpu_features.h"

#define FASTMTL_INLINE inline __attribute__((always_inline))

namespace fastmtl {
namespace {

// 256-bit vectors through the compiler's vector extension: AVX registers in the AVX2
// build, pairs of SSE registers in the baseline one.
template <typename A>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename A>
using vec_t = typename Vec<A>::type;
template <typename A>
constexpr int kWidth = 32 / sizeof(A);

template <typename A>
FASTMTL_INLINE vec_t<A> load(const A* p) {
  vec_t<A> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename A>
FASTMTL_INLINE A hsum(vec_t<A> v) {
  A s = 0;
  for (int l = 0; l < kWidth<A>; ++l) s += v[l];
  return s;
}

// Register tile of the Gram matrix: rows a[0..RI) against rows b[0..RJ) over n
// columns (a multiple of the vector width), into RI*RJ vector accumulators. Each
// step loads RI + RJ vectors for RI * RJ multiply-adds; 3 x 4 fills the 16 AVX
// registers without spilling. With NPF > 0, each cache line of the step also asks
// for the same line of NPF rows pf[] (of the next block), over pf_n columns: spread
// over the arithmetic, the requests keep memory busy without a burst that stalls.
constexpr int kTileI = 3, kTileJ = 4, kTilePrefetch = 4;

template <typename A, int RI, int RJ, int NPF>
FASTMTL_INLINE void gram_tile(const A* const* a, const A* const* b, int64_t n, A* acc,
                              const A* const* pf, int64_t pf_n) {
  constexpr int W = kWidth<A>;
  constexpr int64_t kLine = 64 / sizeof(A);
  vec_t<A> s[RI][RJ];
  for (int r = 0; r < RI; ++r)
    for (int q = 0; q < RJ; ++q) s[r][q] = load(acc + (r * RJ + q) * W);
  for (int64_t k = 0; k < n; k += W) {
    if constexpr (NPF > 0) {
      if ((k & (kLine - 1)) == 0 && k < pf_n)
        for (int p = 0; p < NPF; ++p) __builtin_prefetch(pf[p] + k, 0, 2);
    }
    vec_t<A> x[RI];
    for (int r = 0; r < RI; ++r) x[r] = load(a[r] + k);
    for (int q = 0; q < RJ; ++q) {
      const vec_t<A> y = load(b[q] + k);
      for (int r = 0; r < RI; ++r) s[r][q] += x[r] * y;
    }
  }
  for (int r = 0; r < RI; ++r)
    for (int q = 0; q < RJ; ++q) __builtin_memcpy(acc + (r * RJ + q) * W, &s[r][q], sizeof(s[r][q]));
}

template <typename A, int RI, int RJ>
FASTMTL_INLINE void gram_tile_pf(int npf, const A* const* a, const A* const* b, int64_t n,
                                 A* acc, const A* const* pf, int64_t pf_n) {
  switch (npf) {
    case 0: return gram_tile<A, RI, RJ, 0>(a, b, n, acc, pf, pf_n);
    case 1: return gram_tile<A, RI, RJ, 1>(a, b, n, acc, pf, pf_n);
    case 2: return gram_tile<A, RI, RJ, 2>(a, b, n, acc, pf, pf_n);
    case 3: return gram_tile<A, RI, RJ, 3>(a, b, n, acc, pf, pf_n);
    default: return gram_tile<A, RI, RJ, 4>(a, b, n, acc, pf, pf_n);
  }
}

template <typename A, int RI>
FASTMTL_INLINE void gram_tile_rj(int rj, int npf, const A* const* a, const A* const* b,
                                 int64_t n, A* acc, const A* const* pf, int64_t pf_n) {
  switch (rj) {
    case 1: return gram_tile_pf<A, RI, 1>(npf, a, b, n, acc, pf, pf_n);
    case 2: return gram_tile_pf<A, RI, 2>(npf, a, b, n, acc, pf, pf_n);
    case 3: return gram_tile_pf<A, RI, 3>(npf, a, b, n, acc, pf, pf_n);
    default: return gram_tile_pf<A, RI, 4>(npf, a, b, n, acc, pf, pf_n);
  }
}

template <typename A>
FASTMTL_INLINE void gram_tile_any(int ri, int rj, int npf, const A* const* a, const A* const* b,
                                  int64_t n, A* acc, const A* const* pf, int64_t pf_n) {
  switch (ri) {
    case 1: return gram_tile_rj<A, 1>(rj, npf, a, b, n, acc, pf, pf_n);
    case 2: return gram_tile_rj<A, 2>(rj, npf, a, b, n, acc, pf, pf_n);
    default: return gram_tile_rj<A, 3>(rj, npf, a, b, n, acc, pf, pf_n);
  }
}

// Adds the upper triangle of rows[] rows[]^T over n columns into G (T x T, float64).
// The columns are walked in sub-blocks of about 64 KiB of rows, which stay in L1/L2
// while every tile of pairs is formed; tile sums stay in vectors until the block ends.
// When the rows point into J, `ahead` columns further on starts the next block, of
// ahead_n columns (0: none, or the rows are converted copies); the first tiles ask for
// its rows, sub-block by sub-block, while this block is reduced.
template <typename A>
FASTMTL_INLINE void gram_block_impl(const A* const* rows, int T, int64_t n, double* G,
                                    int64_t ahead, int64_t ahead_n) {
  constexpr int64_t W = kWidth<A>;
  const int64_t n_vec = n & ~(W - 1);
  const int64_t sub =
      std::clamp<int64_t>((65536 / (T * (int64_t)sizeof(A))) & ~(W - 1), 8 * W, 1024);
  int tiles = 0;
  for (int i0 = 0; i0 < T; i0 += kTileI) tiles += (T - i0 + kTileJ - 1) / kTileJ;
  const int per_tile = std::min(kTilePrefetch, (T + tiles - 1) / tiles);
  const bool prefetch = ahead_n > 0 && per_tile * tiles >= T;
  // Plain storage (std::allocator does not promise vector alignment here).
  constexpr int64_t kTileSize = kTileI * kTileJ * W;
  std::vector<A> acc((size_t)tiles * kTileSize, A(0));
  const A* a[kTileI];
  const A* b[kTileJ];
  const A* pf[kTilePrefetch];
  for (int64_t c = 0; c < n_vec; c += sub) {
    const int64_t m = std::min(sub, n_vec - c);
    const int64_t pf_n = prefetch ? std::clamp<int64_t>(ahead_n - c, 0, m) : 0;
    int tile = 0;
    for (int i0 = 0; i0 < T; i0 += kTileI) {
      const int ri = std::min(kTileI, T - i0);
      for (int r = 0; r < ri; ++r) a[r] = rows[i0 + r] + c;
      for (int j0 = i0; j0 < T; j0 += kTileJ, ++tile) {
        const int rj = std::min(kTileJ, T - j0);
        for (int q = 0; q < rj; ++q) b[q] = rows[j0 + q] + c;
        const int p0 = tile * per_tile;
        const int npf = pf_n > 0 ? std::clamp(T - p0, 0, per_tile) : 0;
        for (int p = 0; p < npf; ++p) pf[p] = rows[p0 + p] + c + ahead;
        gram_tile_any<A>(ri, rj, npf, a, b, m, acc.data() + tile * kTileSize, pf, pf_n);
      }
    }
  }
  int tile = 0;
  for (int i0 = 0; i0 < T; i0 += kTileI) {
    const int ri = std::min(kTileI, T - i0);
    for (int j0 = i0; j0 < T; j0 += kTileJ, ++tile) {
      const int rj = std::min(kTileJ, T - j0);
      const A* t = acc.data() + tile * kTileSize;
      for (int r = 0; r < ri; ++r)
        for (int q = 0; q < rj; ++q)
          if (j0 + q >= i0 + r)
            G[(int64_t)(i0 + r) * T + j0 + q] += hsum<A>(load(t + (r * rj + q) * W));
    }
  }
  for (int i = 0; i < T; ++i)  // columns past the last full vector
    for (int j = i; j < T; ++j) {
      A v = 0;
      for (int64_t k = n_vec; k < n; ++k) v += rows[i][k] * rows[j][k];
      G[(int64_t)i * T + j] += static_cast<double>(v);
    }
}

// acc[k] = sum_t w[t] * rows[t][k] over one block. Four independent vector chains
// per step, so the multiply-adds are not serialised on their latency. Each step also
// asks for the same columns `ahead` further on in every row (the next block, ahead_n
// columns of it; 0 when there is none or the rows are converted copies), so memory
// works on the next block while this one is summed.
template <typename A>
FASTMTL_INLINE void combine_block_impl(const A* w, const A* const* rows, int T, int64_t n,
                                       A* acc, int64_t ahead, int64_t ahead_n) {
  constexpr int W = kWidth<A>, U = 4;
  constexpr int64_t kStepBytes = U * W * sizeof(A);
  int64_t k = 0;
  for (; k + U * W <= n; k += U * W) {
    if (k + U * W <= ahead_n)  // whole steps only: no address past the next block
      for (int t = 0; t < T; ++t) {
        const char* p = reinterpret_cast<const char*>(rows[t] + k + ahead);
        for (int64_t b = 0; b < kStepBytes; b += 64) __builtin_prefetch(p + b, 0, 2);
      }
    vec_t<A> v[U];
    for (int u = 0; u < U; ++u) v[u] = w[0] * load(rows[0] + k + u * W);
    for (int t = 1; t < T; ++t)
      for (int u = 0; u < U; ++u) v[u] += w[t] * load(rows[t] + k + u * W);
    __builtin_memcpy(acc + k, v, sizeof(v));
  }
  for (; k < n; ++k) {
    A v = 0;
    for (int t = 0; t < T; ++t) v += w[t] * rows[t][k];
    acc[k] = v;
  }
}


// Baseline and AVX2 entry points for one accumulator type A.
#define FASTMTL_DEFINE_BLOCK_KERNELS(A)                                                    \
  void gram_block_base(const A* const* rows, int T, int64_t n, double* G, int64_t ahead,   \
                       int64_t ahead_n) {                                                  \
    gram_block_impl<A>(rows, T, n, G, ahead, ahead_n);                                     \
  }                                                                                        \
  FASTMTL_CPU_AVX2 void gram_block_avx2(const A* const* rows, int T, int64_t n, double* G, \
                                        int64_t ahead, int64_t ahead_n) {                  \
    gram_block_impl<A>(rows, T, n, G, ahead, ahead_n);                                     \
  }                                                                                        \
  void gram_block(const A* const* rows, int T, int64_t n, double* G, int64_t ahead,        \
                  int64_t ahead_n) {                                                       \
    cpu_avx2_fma_enabled() ? gram_block_avx2(rows, T, n, G, ahead, ahead_n)                \
                           : gram_block_base(rows, T, n, G, ahead, ahead_n);               \
  }                                                                                        \
  void combine_block_base(const A* w, const A* const* rows, int T, int64_t n, A* acc,      \
                          int64_t ahead, int64_t ahead_n) {                                \
    combine_block_impl<A>(w, rows, T, n, acc, ahead, ahead_n);                             \
  }                                                                                        \
  FASTMTL_CPU_AVX2 void combine_block_avx2(const A* w, const A* const* rows, int T,        \
                                           int64_t n, A* acc, int64_t ahead,               \
                                           int64_t ahead_n) {                              \
    combine_block_impl<A>(w, rows, T, n, acc, ahead, ahead_n);                             \
  }                                                                                        \
  void combine_block(const A* w, const A* const* rows, int T, int64_t n, A* acc,           \
                     int64_t ahead, int64_t ahead_n) {                                     \
    cpu_avx2_fma_enabled() ? combine_block_avx2(w, rows, T, n, acc, ahead, ahead_n)        \
                           : combine_block_base(w, rows, T, n, acc, ahead, ahead_n);       \
  }

FASTMTL_DEFINE_BLOCK_KERNELS(float)
FASTMTL_DEFINE_BLOCK_KERNELS(double)

template <typename S>
using acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

// Asks for the next block of every row at once (for converted rows; see stage_rows).
constexpr int kPrefetchRows = 16;
template <typename S>
inline void prefetch_next(const S* base, int64_t ld, int T, int64_t col, int64_t n) {
  if (n <= 0) return;  // the last block: nothing after it
  for (int t = 0; t < T; ++t) {
    const char* p = reinterpret_cast<const char*>(base + t * ld + col);
    for (int64_t b = 0; b < n * (int64_t)sizeof(S); b += 64) __builtin_prefetch(p + b, 0, 2);
  }
}

// Column-block width: about 64 KiB of accumulator-typed data per block.
int64_t block_width(int64_t T, size_t elem) {
  const int64_t w = (int64_t)(131072 / (T * (int64_t)elem)) & ~int64_t(63);
  return std::clamp<int64_t>(w, 256, 8192);
}

// Runs body(chunk, col_begin, col_end) over `chunks` contiguous column ranges in parallel.
template <typename F>
void for_column_chunks(int64_t P, int64_t width, int64_t chunks, const F& body) {
  const int64_t blocks = (P + width - 1) / width;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b0 = blocks * c / chunks, b1 = blocks * (c + 1) / chunks;
      body(c, b0 * width, std::min(P, b1 * width));
    }
  });
}

// Points rows[t] at columns [c, c + n) of row t, converted into scratch (T x width) for
// 16-bit inputs. Rows read in place are prefetched by the kernels themselves, a little
// per step; converted rows (burst_prefetch) get the next block asked for at once here,
// and only for many rows: with few, the hardware prefetchers keep up and the burst only
// stalled (measured: combine_rows 1.0x instead of 1.25x one J.sum() at T = 10).
template <typename S, typename A>
inline void stage_rows(const S* base, int64_t ld, int T, int64_t c, int64_t n, int64_t width,
                       int64_t end, const A** rows, A* scratch, bool burst_prefetch) {
  if (burst_prefetch && T > kPrefetchRows)
    prefetch_next(base, ld, T, c + width, std::min(width, end - c - width));
  for (int t = 0; t < T; ++t) {
    const S* src = base + t * ld + c;
    if constexpr (std::is_same_v<S, A>) {
      rows[t] = src;
    } else {
      A* dst = scratch + (int64_t)t * width;
      for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<A>(src[k]);
      rows[t] = dst;
    }
  }
}

template <typename S>
at::Tensor gram_typed(const at::Tensor& J) {
  using A = acc_t<S>;
  constexpr bool in_place = std::is_same_v<S, A>;
  const int T = (int)J.size(0);
  const int64_t P = J.size(1), ld = J.stride(0);
  const S* base = J.const_data_ptr<S>();
  const int64_t width = block_width(T, sizeof(A));
  const int64_t blocks = std::max<int64_t>(1, (P + width - 1) / width);
  const int64_t chunks = std::min<int64_t>(blocks, at::get_num_threads());
  std::vector<double> partial((size_t)chunks * T * T, 0.0);

  for_column_chunks(P, width, chunks, [&](int64_t chunk, int64_t begin, int64_t end) {
    double* Gc = partial.data() + chunk * T * T;
    std::vector<const A*> rows(T);
    std::vector<A> scratch;  // converted rows, for 16-bit inputs only
    if constexpr (!std::is_same_v<S, A>) scratch.resize((size_t)T * width);
    for (int64_t c = begin; c < end; c += width) {
      const int64_t n = std::min(width, end - c);
      // Rows read in place: the kernel prefetches the next block, spread over its tiles.
      const int64_t ahead_n = in_place ? std::clamp<int64_t>(end - c - width, 0, width) : 0;
      stage_rows(base, ld, T, c, n, width, end, rows.data(), scratch.data(), !in_place);
      gram_block(rows.data(), T, n, Gc, width, ahead_n);
    }
  });

  at::Tensor G = at::empty({T, T}, J.options().dtype(gram_dtype(J.scalar_type())));
  auto Ga = G.accessor<A, 2>();
  for (int i = 0; i < T; ++i) {
    for (int j = i; j < T; ++j) {
      double v = 0.0;
      for (int64_t c = 0; c < chunks; ++c) v += partial[(size_t)(c * T + i) * T + j];
      Ga[i][j] = Ga[j][i] = static_cast<A>(v);
    }
  }
  return G;
}

template <typename S>
void combine_typed(const at::Tensor& w, const at::Tensor& J, at::Tensor& out, bool accumulate) {
  using A = acc_t<S>;
  constexpr bool in_place = std::is_same_v<S, A>;
  const int T = (int)J.size(0);
  const int64_t P = J.size(1), ld = J.stride(0);
  const S* base = J.const_data_ptr<S>();
  S* dst = out.data_ptr<S>();
  const at::Tensor wd = w.to(at::kDouble).contiguous();
  std::vector<A> wa(T);
  for (int t = 0; t < T; ++t) wa[t] = static_cast<A>(wd.const_data_ptr<double>()[t]);

  const int64_t width = block_width(1, sizeof(A)) / 4;  // one accumulator row of 16 KiB
  const int64_t blocks = std::max<int64_t>(1, (P + width - 1) / width);
  const int64_t chunks = std::min<int64_t>(blocks, at::get_num_threads());
  for_column_chunks(P, width, chunks, [&](int64_t, int64_t begin, int64_t end) {
    std::vector<const A*> rows(T);
    std::vector<A> acc(width);
    std::vector<A> scratch;
    if constexpr (!std::is_same_v<S, A>) scratch.resize((size_t)T * width);
    for (int64_t c = begin; c < end; c += width) {
      const int64_t n = std::min(width, end - c);
      const int64_t ahead_n = in_place ? std::clamp<int64_t>(end - c - width, 0, width) : 0;
      stage_rows(base, ld, T, c, n, width, end, rows.data(), scratch.data(), !in_place);
      combine_block(wa.data(), rows.data(), T, n, acc.data(), width, ahead_n);
      S* o = dst + c;
      if (accumulate) {
        for (int64_t k = 0; k < n; ++k) o[k] = static_cast<S>(static_cast<A>(o[k]) + acc[k]);
      } else {
        for (int64_t k = 0; k < n; ++k) o[k] = static_cast<S>(acc[k]);
      }
    }
  });
}

#define FASTMTL_DISPATCH_FLOATS(TYPE, NAME, ...)                                  \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor gram_cpu(const at::Tensor& J) {
  check_matrix(J, "J");
  at::Tensor G;
  FASTMTL_DISPATCH_FLOATS(J.scalar_type(), "fastmtl::gram", [&] { G = gram_typed<scalar_t>(J); });
  return G;
}

void combine_rows_out_cpu(const at::Tensor& w, const at::Tensor& J, at::Tensor out,
                          bool accumulate) {
  check_matrix(J, "J");
  check_weights(w, J);
  check_out(out, J);
  FASTMTL_DISPATCH_FLOATS(J.scalar_type(), "fastmtl::combine_rows",
                          [&] { combine_typed<scalar_t>(w, J, out, accumulate); });
}

at::Tensor combine_rows_cpu(const at::Tensor& w, const at::Tensor& J) {
  check_matrix(J, "J");
  at::Tensor out = at::empty({J.size(1)}, J.options());
  combine_rows_out_cpu(w, J, out, false);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("gram", &gram_cpu);
  m.impl("combine_rows", &combine_rows_cpu);
  m.impl("combine_rows_out", &combine_rows_out_cpu);
}

}  // namespace fastmtl
