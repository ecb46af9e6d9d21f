// CUDA streaming kernels: G = J J^T (split over P, deterministic two-stage
// reduction) and d = w^T J (one coalesced pass). Neither synchronises the host.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "../ops_common.h"

namespace fastmtl {
namespace {

constexpr int kRowBlock = 16;  // rows per tile: a 16 x 16 block of G per thread block
constexpr int kTile = 64;      // columns staged in shared memory per step
constexpr int kThreads = kRowBlock * kRowBlock;

template <typename S>
using acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

// Block pair y of the upper triangle of row blocks, (a, b) with a <= b.
__device__ inline int2 row_block_pair(int y, int nb) {
  int a = 0;
  while (y >= nb - a) {
    y -= nb - a;
    ++a;
  }
  return make_int2(a, a + y);
}

// Each block (x, y) sums one 16 x 16 tile of G (row-block pair y) over a strided
// share of the columns and writes it to partial[x]. Rows are read once per tile pair,
// so J is read once when T <= 16.
template <typename S, typename A>
__global__ void gram_partial_kernel(const S* __restrict__ J, int64_t ld, int T, int64_t P,
                                    A* __restrict__ partial) {
  __shared__ A rows_i[kRowBlock][kTile + 1];
  __shared__ A rows_j[kRowBlock][kTile + 1];
  const int2 pair = row_block_pair(blockIdx.y, (T + kRowBlock - 1) / kRowBlock);
  const int i0 = pair.x * kRowBlock, j0 = pair.y * kRowBlock;
  const int r = threadIdx.x / kRowBlock, s = threadIdx.x % kRowBlock;
  A acc = 0;
  for (int64_t c0 = (int64_t)blockIdx.x * kTile; c0 < P; c0 += (int64_t)gridDim.x * kTile) {
    for (int e = threadIdx.x; e < kRowBlock * kTile; e += kThreads) {
      const int row = e / kTile, k = e % kTile;
      const int64_t col = c0 + k;
      const bool in_cols = col < P;
      rows_i[row][k] = (in_cols && i0 + row < T) ? static_cast<A>(J[(i0 + row) * ld + col]) : A(0);
      rows_j[row][k] = (in_cols && j0 + row < T) ? static_cast<A>(J[(j0 + row) * ld + col]) : A(0);
    }
    __syncthreads();
#pragma unroll 16
    for (int k = 0; k < kTile; ++k) acc += rows_i[r][k] * rows_j[s][k];
    __syncthreads();
  }
  const int i = i0 + r, j = j0 + s;
  if (i < T && j < T) {
    A* out = partial + (int64_t)blockIdx.x * T * T;
    out[(int64_t)i * T + j] = acc;
    if (i0 != j0) out[(int64_t)j * T + i] = acc;
  }
}

template <typename A>
__global__ void gram_reduce_kernel(const A* __restrict__ partial, int parts, int T,
                                   A* __restrict__ G) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (int64_t)T * T) return;
  double v = 0.0;
  for (int x = 0; x < parts; ++x) v += static_cast<double>(partial[(int64_t)x * T * T + e]);
  G[e] = static_cast<A>(v);
}

template <typename S, typename A>
__global__ void combine_kernel(const double* __restrict__ w, const S* __restrict__ J, int64_t ld,
                               int T, int64_t P, S* __restrict__ out, bool accumulate) {
  extern __shared__ double w_shared_raw[];
  A* w_shared = reinterpret_cast<A*>(w_shared_raw);
  for (int t = threadIdx.x; t < T; t += blockDim.x) w_shared[t] = static_cast<A>(w[t]);
  __syncthreads();
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < P;
       p += (int64_t)gridDim.x * blockDim.x) {
    A acc = accumulate ? static_cast<A>(out[p]) : A(0);
    for (int t = 0; t < T; ++t) acc += w_shared[t] * static_cast<A>(J[t * ld + p]);
    out[p] = static_cast<S>(acc);
  }
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

at::Tensor gram_cuda(const at::Tensor& J) {
  check_matrix(J, "J");
  c10::cuda::CUDAGuard guard(J.device());
  const int T = (int)J.size(0);
  const int64_t P = J.size(1), ld = J.stride(0);
  const int nb = (T + kRowBlock - 1) / kRowBlock;
  const int npairs = nb * (nb + 1) / 2;
  // Enough blocks to fill the device, but partial sums stay below ~16M entries.
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>((P + kTile - 1) / kTile,
                                                         8LL * sm_count() / npairs + 1));
  parts = std::max<int64_t>(1, std::min<int64_t>(parts, (1LL << 24) / ((int64_t)T * T)));
  const auto acc_dtype = gram_dtype(J.scalar_type());
  at::Tensor partial = at::empty({parts, T, T}, J.options().dtype(acc_dtype));
  at::Tensor G = at::empty({T, T}, J.options().dtype(acc_dtype));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(), "fastmtl::gram", [&] {
    using A = acc_t<scalar_t>;
    gram_partial_kernel<scalar_t, A><<<dim3((unsigned)parts, npairs), kThreads, 0, stream>>>(
        J.const_data_ptr<scalar_t>(), ld, T, P, partial.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t n = (int64_t)T * T;
    gram_reduce_kernel<A><<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(
        partial.const_data_ptr<A>(), (int)parts, T, G.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return G;
}

void combine_rows_out_cuda(const at::Tensor& w, const at::Tensor& J, at::Tensor out,
                           bool accumulate) {
  check_matrix(J, "J");
  check_weights(w, J);
  check_out(out, J);
  c10::cuda::CUDAGuard guard(J.device());
  const int T = (int)J.size(0);
  const int64_t P = J.size(1), ld = J.stride(0);
  if (P == 0) return;
  const at::Tensor wd = w.to(at::kDouble).contiguous();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((P + threads - 1) / threads, 32LL * sm_count());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, J.scalar_type(),
                                  "fastmtl::combine_rows", [&] {
    using A = acc_t<scalar_t>;
    combine_kernel<scalar_t, A><<<(unsigned)blocks, threads, T * sizeof(double), stream>>>(
        wd.const_data_ptr<double>(), J.const_data_ptr<scalar_t>(), ld, T, P,
        out.data_ptr<scalar_t>(), accumulate);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor combine_rows_cuda(const at::Tensor& w, const at::Tensor& J) {
  check_matrix(J, "J");
  at::Tensor out = at::empty({J.size(1)}, J.options());
  combine_rows_out_cuda(w, J, out, false);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("gram", &gram_cuda);
  m.impl("combine_rows", &combine_rows_cuda);
  m.impl("combine_rows_out", &combine_rows_out_cuda);
}

}  // namespace fastmtl
