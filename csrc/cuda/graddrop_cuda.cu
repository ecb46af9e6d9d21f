// CUDA body of the GradDrop op (see csrc/cpu/graddrop_cpu.cpp for the definition).
//
// One grid-stride pass, one thread per output element. Without a purity source each column
// of J is read once (positive/negative parts, the kept one chosen after the sums); with one,
// element n = b * D + d takes the decision of source column d (re-read per batch row, from
// cache) and sums the masked tasks. The key is read from device memory: no host sync.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "../graddrop_common.h"
#include "fastmtl/philox.h"

namespace fastmtl {
namespace {

constexpr int kGdThreads = 256;

template <typename S>
using gd_acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

template <typename A>
__device__ inline int keep_sign(A pos, A neg, const int64_t* seed, int64_t d, uint32_t stream) {
  const A s = pos + neg, z = pos - neg;
  const A P = z > A(0) ? A(0.5) * (A(1) + s / z) : A(0.5);
  const Philox4 r = philox_block(static_cast<uint64_t>(d >> 2), stream,
                                 static_cast<uint32_t>(seed[0]), static_cast<uint32_t>(seed[1]));
  const A u = static_cast<A>(philox_to_unit(r.v[d & 3]));
  return (P > u) - (P < u);
}

// Purity from J itself: one read of each column, the kept part chosen after the sums.
template <typename S, typename A>
__global__ void graddrop_direct_kernel(const S* __restrict__ J, int64_t ldj,
                                       const double* __restrict__ leak,
                                       const int64_t* __restrict__ seed, int T, int64_t N,
                                       uint32_t stream, S* __restrict__ out, bool accumulate) {
  for (int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; n < N;
       n += (int64_t)gridDim.x * blockDim.x) {
    A pos = 0, neg = 0, ks = 0, wpos = 0, wneg = 0;
    for (int t = 0; t < T; ++t) {
      const A x = static_cast<A>(J[t * ldj + n]);
      const A k = static_cast<A>(leak[t]);
      // NaN goes into both parts (so into P and the result)
      const A xp = x < A(0) ? A(0) : x, xn = x > A(0) ? A(0) : x;
      pos += xp;
      neg += xn;
      ks += k * x;
      wpos += (A(1) - k) * xp;
      wneg += (A(1) - k) * xn;
    }
    const int keep = keep_sign<A>(pos, neg, seed, n, stream);
    const A none = (pos + neg) * A(0);  // a tie keeps nothing: 0, or NaN for NaN/Inf input
    const A v = ks + (keep > 0 ? wpos : (keep < 0 ? wneg : none));
    out[n] = static_cast<S>(accumulate ? static_cast<A>(out[n]) + v : v);
  }
}

// Purity from a [T, D] source: element n = b * D + d takes the decision of column d.
template <typename S, typename A>
__global__ void graddrop_purity_kernel(const S* __restrict__ J, int64_t ldj,
                                       const S* __restrict__ src, int64_t lds,
                                       const double* __restrict__ leak,
                                       const int64_t* __restrict__ seed, int T, int64_t D,
                                       int64_t N, uint32_t stream, S* __restrict__ out,
                                       bool accumulate) {
  for (int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; n < N;
       n += (int64_t)gridDim.x * blockDim.x) {
    const int64_t d = n % D;
    A pos = 0, neg = 0;
    for (int t = 0; t < T; ++t) {
      const A x = static_cast<A>(src[t * lds + d]);
      pos += x < A(0) ? A(0) : x;
      neg += x > A(0) ? A(0) : x;
    }
    const int keep = keep_sign<A>(pos, neg, seed, d, stream);
    A acc = 0;
    for (int t = 0; t < T; ++t) {
      const A x = static_cast<A>(src[t * lds + d]);
      const int sgn = (x > A(0)) - (x < A(0));
      const A c = (keep != 0 && sgn == keep) ? A(1) : static_cast<A>(leak[t]);
      acc += static_cast<A>(J[t * ldj + n]) * c;
    }
    out[n] = static_cast<S>(accumulate ? static_cast<A>(out[n]) + acc : acc);
  }
}

void graddrop_out_cuda(const at::Tensor& J, const at::Tensor& leak, const at::Tensor& seed,
                       const c10::optional<at::Tensor>& purity, int64_t stream, at::Tensor out,
                       bool accumulate) {
  const int64_t D = check_graddrop_args(J, leak, seed, purity, stream);
  check_out(out, J);
  c10::cuda::CUDAGuard guard(J.device());
  const int64_t N = J.size(1);
  if (N == 0) return;
  const at::Tensor leak_c = leak.contiguous(), seed_c = seed.contiguous();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>((N + kGdThreads - 1) / kGdThreads, 16LL * sms));
  auto cuda_stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, J.scalar_type(), "fastmtl::graddrop_cuda", [&] {
        using A = gd_acc_t<scalar_t>;
        const scalar_t* j = J.data_ptr<scalar_t>();
        const double* k = leak_c.data_ptr<double>();
        const int64_t* key = seed_c.data_ptr<int64_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        const int T = (int)J.size(0);
        if (purity.has_value()) {
          graddrop_purity_kernel<scalar_t, A><<<blocks, kGdThreads, 0, cuda_stream>>>(
              j, J.stride(0), purity->data_ptr<scalar_t>(), purity->stride(0), k, key, T, D,
              N, static_cast<uint32_t>(stream), o, accumulate);
        } else {
          graddrop_direct_kernel<scalar_t, A><<<blocks, kGdThreads, 0, cuda_stream>>>(
              j, J.stride(0), k, key, T, N, static_cast<uint32_t>(stream), o, accumulate);
        }
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor graddrop_cuda(const at::Tensor& J, const at::Tensor& leak, const at::Tensor& seed,
                         const c10::optional<at::Tensor>& purity, int64_t stream) {
  at::Tensor out = at::empty({J.size(1)}, J.options());
  graddrop_out_cuda(J, leak, seed, purity, stream, out, false);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("graddrop", &graddrop_cuda);
  m.impl("graddrop_out", &graddrop_out_cuda);
}

}  // namespace fastmtl
