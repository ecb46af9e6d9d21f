// CUDA body of the GradDrop op (see csrc/cpu/graddrop_cpu.cpp for the definition).
//
// One grid-stride pass, one thread per output element n = b * D + d: the purity of column d
// from the purity source (re-read per batch row, from cache), the Philox uniform of d, then
// the masked sum over tasks. The key is read from device memory: no host sync.
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

template <typename S, typename A>
__global__ void graddrop_kernel(const S* __restrict__ J, int64_t ldj, const S* __restrict__ src,
                                int64_t lds, const double* __restrict__ leak,
                                const int64_t* __restrict__ seed, int T, int64_t D, int64_t N,
                                uint32_t stream, S* __restrict__ out, bool accumulate) {
  const uint32_t k0 = static_cast<uint32_t>(seed[0]), k1 = static_cast<uint32_t>(seed[1]);
  for (int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; n < N;
       n += (int64_t)gridDim.x * blockDim.x) {
    const int64_t d = n % D;
    A sum = 0, abs_sum = 0;
    for (int t = 0; t < T; ++t) {
      const A x = static_cast<A>(src[t * lds + d]);
      sum += x;
      abs_sum += fabs(x);
    }
    const A P = abs_sum > A(0) ? A(0.5) * (A(1) + sum / abs_sum) : A(0.5);
    const Philox4 r = philox_block(static_cast<uint64_t>(d >> 2), stream, k0, k1);
    const A u = static_cast<A>(philox_to_unit(r.v[d & 3]));
    const int keep = (P > u) - (P < u);
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
        const scalar_t* src = purity.has_value() ? purity->data_ptr<scalar_t>() : j;
        const int64_t lds = purity.has_value() ? purity->stride(0) : J.stride(0);
        graddrop_kernel<scalar_t, A><<<blocks, kGdThreads, 0, cuda_stream>>>(
            j, J.stride(0), src, lds, leak_c.data_ptr<double>(), seed_c.data_ptr<int64_t>(),
            (int)J.size(0), D, N, static_cast<uint32_t>(stream), out.data_ptr<scalar_t>(),
            accumulate);
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
