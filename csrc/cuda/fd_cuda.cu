// CUDA body of the Feature Disentanglement op (see csrc/cpu/fd_cpu.cpp for the definition).
//
// Map mode: one grid-stride pass writing 1 - H_j / log T per element. Scalar modes: each
// block reduces its grid-stride share into [sum H, count, sum s H, sum s] (float64, shared
// memory tree), writes them to partial[block], and a one-block kernel adds the blocks in a
// fixed order and writes the 0-d result: deterministic, no atomics, no host sync.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "../fd_common.h"

namespace fastmtl {
namespace {

constexpr int kFdThreads = 256;

template <typename S>
using fd_acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

__device__ inline float fd_log(float x) { return logf(x); }
__device__ inline double fd_log(double x) { return log(x); }
__device__ inline float fd_exp(float x) { return expf(x); }
__device__ inline double fd_exp(double x) { return exp(x); }

// Entropy of the task distribution of element k; s receives the total saliency.
template <typename S, typename A>
__device__ inline A fd_entropy(const S* __restrict__ g, int64_t ld, int T, int64_t k,
                               A inv_temp, A& s) {
  A sum = 0, H = 0;
  if (inv_temp == A(0)) {
    for (int t = 0; t < T; ++t) sum += fabs(static_cast<A>(g[t * ld + k]));
    const A inv = A(1) / (sum == A(0) ? A(1) : sum);
    for (int t = 0; t < T; ++t) {
      const A p = fabs(static_cast<A>(g[t * ld + k])) * inv;
      if (!(p == A(0))) H -= p * fd_log(p);
    }
  } else {
    A mx = 0;
    for (int t = 0; t < T; ++t) {
      const A a = fabs(static_cast<A>(g[t * ld + k]));
      sum += a;
      mx = a > mx ? a : mx;
    }
    mx = mx * inv_temp + sum * A(0);  // NaN/Inf input: NaN
    A Z = 0, dot = 0;
    for (int t = 0; t < T; ++t) {
      const A d = fabs(static_cast<A>(g[t * ld + k])) * inv_temp - mx;
      const A e = fd_exp(d);
      Z += e;
      dot += e * d;
    }
    H = fd_log(Z) - dot / Z;
  }
  s = sum;
  return H;
}

template <typename S, typename A>
__global__ void fd_map_kernel(const S* __restrict__ g, int64_t ld, int T, int64_t N,
                              A inv_temp, A inv_log_t, A* __restrict__ out) {
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < N;
       k += (int64_t)gridDim.x * blockDim.x) {
    A s;
    const A H = fd_entropy<S, A>(g, ld, T, k, inv_temp, s);
    out[k] = s == A(0) ? A(0) : A(1) - H * inv_log_t;
  }
}

template <typename S, typename A>
__global__ void fd_sums_kernel(const S* __restrict__ g, int64_t ld, int T, int64_t N,
                               A inv_temp, double* __restrict__ partial) {
  __shared__ double red[kFdSums][kFdThreads];
  double acc[kFdSums] = {0, 0, 0, 0};
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < N;
       k += (int64_t)gridDim.x * blockDim.x) {
    A s;
    const A H = fd_entropy<S, A>(g, ld, T, k, inv_temp, s);
    if (!(s == A(0))) {
      acc[0] += H;
      acc[1] += 1.0;
      acc[2] += static_cast<double>(s) * H;
      acc[3] += s;
    }
  }
  for (int i = 0; i < kFdSums; ++i) red[i][threadIdx.x] = acc[i];
  __syncthreads();
  for (int stride = kFdThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride)
      for (int i = 0; i < kFdSums; ++i) red[i][threadIdx.x] += red[i][threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x < kFdSums) partial[(int64_t)blockIdx.x * kFdSums + threadIdx.x] =
      red[threadIdx.x][0];
}

template <typename A>
__global__ void fd_finish_kernel(const double* __restrict__ partial, int parts, int reduce,
                                 double log_t, A* __restrict__ out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double tot[kFdSums] = {0, 0, 0, 0};
  for (int b = 0; b < parts; ++b)
    for (int i = 0; i < kFdSums; ++i) tot[i] += partial[(int64_t)b * kFdSums + i];
  const double num = reduce == 1 ? tot[0] : tot[2];
  const double den = reduce == 1 ? tot[1] : tot[3];
  *out = static_cast<A>(den != 0.0 ? 1.0 - num / (den * log_t) : 0.0);
}

at::Tensor feature_disentanglement_cuda(const at::Tensor& grads, double temperature,
                                        int64_t reduce) {
  check_fd_args(grads, temperature, reduce);
  c10::cuda::CUDAGuard guard(grads.device());
  const int T = (int)grads.size(0);
  const int64_t N = grads.size(1), ld = grads.stride(0);
  const double log_t = std::log((double)T);
  const auto acc_dtype = gram_dtype(grads.scalar_type());
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>((N + kFdThreads - 1) / kFdThreads, 8LL * sms));
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor out = reduce == 0 ? at::empty({N}, grads.options().dtype(acc_dtype))
                               : at::empty({}, grads.options().dtype(acc_dtype));
  at::Tensor partial;
  if (reduce != 0) partial = at::empty({blocks, kFdSums}, grads.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads.scalar_type(),
                                  "fastmtl::feature_disentanglement", [&] {
    using A = fd_acc_t<scalar_t>;
    const A inv_temp = temperature > 0.0 ? static_cast<A>(1.0 / temperature) : A(0);
    const scalar_t* g = grads.const_data_ptr<scalar_t>();
    if (reduce == 0) {
      if (N == 0) return;
      fd_map_kernel<scalar_t, A><<<(unsigned)blocks, kFdThreads, 0, stream>>>(
          g, ld, T, N, inv_temp, static_cast<A>(1.0 / log_t), out.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      fd_sums_kernel<scalar_t, A><<<(unsigned)blocks, kFdThreads, 0, stream>>>(
          g, ld, T, N, inv_temp, partial.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fd_finish_kernel<A><<<1, 32, 0, stream>>>(partial.const_data_ptr<double>(), (int)blocks,
                                                 (int)reduce, log_t, out.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("feature_disentanglement", &feature_disentanglement_cuda);
}

}  // namespace fastmtl
