// CUDA bodies of the batched solver ops: one thread per independent problem,
// running the same header-only routines as the CPU ops. Workspaces are device
// tensors, so no call synchronises the host.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../ops_common.h"
#include "fastmtl/solvers.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 32;

unsigned grid_for(int64_t batch) { return (unsigned)((batch + kThreads - 1) / kThreads); }

__global__ void pcgrad_kernel(const double* G, const int64_t* order, int T, int64_t batch,
                              bool include_self, double eps, bool eps_on_norm, double* C) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int64_t off = b * T * T;
  solvers::pcgrad_coefficients(G + off, T, order + off, include_self, eps, eps_on_norm, C + off);
}

__global__ void min_norm_kernel(const double* G, int T, int64_t batch, int max_iter, double tol,
                                double* w, bool* ok, double* dwork, int* iwork) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  ok[b] = solvers::min_norm_point(G + b * T * T, T, nullptr, w + b * T,
                                  dwork + b * solvers::min_norm_work_doubles(T),
                                  iwork + b * solvers::min_norm_work_ints(T), max_iter, tol);
}

__global__ void cagrad_kernel(const double* G, int T, int64_t batch, double c, int rescale,
                              int max_outer, int max_inner, double* weights, double* w_star,
                              bool* ok, double* dwork, int* iwork) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  ok[b] = solvers::cagrad_weights(G + b * T * T, T, c, rescale, w_star + b * T, weights + b * T,
                                  dwork + b * solvers::cagrad_work_doubles(T),
                                  iwork + b * solvers::cagrad_work_ints(T), max_outer, max_inner);
}

at::Tensor pcgrad_coefficients_cuda(const at::Tensor& G_in, const at::Tensor& order_in,
                                    bool include_self, double eps, bool eps_on_norm) {
  const int64_t T = check_gram_batch(G_in, "G");
  check_order(order_in, G_in);
  c10::cuda::CUDAGuard guard(G_in.device());
  const at::Tensor G = G_in.contiguous(), order = order_in.contiguous();
  at::Tensor C = at::empty_like(G);
  const int64_t batch = G.numel() / (T * T);
  if (batch == 0) return C;
  pcgrad_kernel<<<grid_for(batch), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      G.const_data_ptr<double>(), order.const_data_ptr<int64_t>(), (int)T, batch, include_self,
      eps, eps_on_norm, C.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return C;
}

std::tuple<at::Tensor, at::Tensor> min_norm_weights_cuda(const at::Tensor& G_in,
                                                         int64_t max_iter, double tol) {
  const int64_t T = check_gram_batch(G_in, "G");
  c10::cuda::CUDAGuard guard(G_in.device());
  const at::Tensor G = G_in.contiguous();
  const int64_t batch = G.numel() / (T * T);
  at::Tensor w = at::empty(batch_shape(G, 1), G.options());
  at::Tensor ok = at::empty(batch_shape(G, 2), G.options().dtype(at::kBool));
  if (batch == 0) return {w, ok};
  at::Tensor dwork = at::empty({batch * solvers::min_norm_work_doubles((int)T)}, G.options());
  at::Tensor iwork =
      at::empty({batch * solvers::min_norm_work_ints((int)T)}, G.options().dtype(at::kInt));
  min_norm_kernel<<<grid_for(batch), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      G.const_data_ptr<double>(), (int)T, batch, (int)max_iter, tol, w.data_ptr<double>(),
      ok.data_ptr<bool>(), dwork.data_ptr<double>(), iwork.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {w, ok};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cagrad_weights_cuda(const at::Tensor& G_in,
                                                                   double c, int64_t rescale,
                                                                   int64_t max_outer,
                                                                   int64_t max_inner) {
  const int64_t T = check_gram_batch(G_in, "G");
  c10::cuda::CUDAGuard guard(G_in.device());
  const at::Tensor G = G_in.contiguous();
  const int64_t batch = G.numel() / (T * T);
  at::Tensor weights = at::empty(batch_shape(G, 1), G.options());
  at::Tensor w_star = at::empty_like(weights);
  at::Tensor ok = at::empty(batch_shape(G, 2), G.options().dtype(at::kBool));
  if (batch == 0) return {weights, w_star, ok};
  at::Tensor dwork = at::empty({batch * solvers::cagrad_work_doubles((int)T)}, G.options());
  at::Tensor iwork =
      at::empty({batch * solvers::cagrad_work_ints((int)T)}, G.options().dtype(at::kInt));
  cagrad_kernel<<<grid_for(batch), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      G.const_data_ptr<double>(), (int)T, batch, c, (int)rescale, (int)max_outer, (int)max_inner,
      weights.data_ptr<double>(), w_star.data_ptr<double>(), ok.data_ptr<bool>(),
      dwork.data_ptr<double>(), iwork.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {weights, w_star, ok};
}

__global__ void eigh_kernel(const double* G, int T, int64_t batch, double* lambda, double* V,
                            double* work) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  double* ws = work + b * ((int64_t)T * T + T);
  solvers::symmetric_eigh(G + b * T * T, T, lambda + b * T, V + b * T * T, ws, ws + T * T);
}

// kind: 0 IMTL-G, 1 ConFIG, 2 Aligned-MTL (flag holds the rank as int64 then).
__host__ __device__ inline int64_t eigen_work_doubles(int T, int kind) {
  return kind == 2 ? solvers::aligned_mtl_work_doubles(T) : solvers::eig_work_doubles(T);
}

__global__ void eigen_weights_kernel(const double* G, int T, int64_t batch, int kind,
                                     int scale_mode, double rank_eps, double* w, bool* ok,
                                     int64_t* rank, double* work) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const double* g = G + b * T * T;
  double* ws = work + b * eigen_work_doubles(T, kind);
  if (kind == 0) ok[b] = solvers::imtlg_weights(g, T, w + b * T, ws);
  if (kind == 1) ok[b] = solvers::config_weights(g, T, w + b * T, ws);
  if (kind == 2)
    rank[b] = solvers::aligned_mtl_weights(g, T, scale_mode, rank_eps, w + b * T, ws);
}

__global__ void gradvac_kernel(const double* G, const int64_t* order, int T, int64_t batch,
                               double* rho, double beta, double eps, double* C) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int64_t off = b * T * T;
  solvers::gradvac_coefficients(G + off, T, order + off, rho + off, beta, eps, C + off);
}

__global__ void nash_kernel(const double* G, int T, int64_t batch, int max_iter, double tol,
                            double* alpha, double* residual, bool* ok, double* work) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  ok[b] = solvers::nash_weights(G + b * T * T, T, alpha + b * T, residual + b,
                                work + b * solvers::nash_work_doubles(T), max_iter, tol);
}

// One thread per (G, row of U) problem; each builds its own normalised matrix A.
__global__ void dual_cone_kernel(const double* G, const double* U, int T, int64_t K,
                                 int64_t problems, double norm_eps, double reg_eps, int max_iter,
                                 double* W, bool* ok, double* dwork, int* iwork) {
  const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= problems) return;
  const int64_t b = p / K, k = p % K;
  double* A = dwork + p * ((int64_t)T * T + solvers::lower_bound_qp_work_doubles(T));
  solvers::dual_cone_matrix(G + b * T * T, T, norm_eps, reg_eps, A);
  ok[p] = solvers::lower_bound_qp(A, T, U + k * T, W + p * T, A + (int64_t)T * T,
                                  iwork + p * solvers::lower_bound_qp_work_ints(T), max_iter);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nash_weights_cuda(const at::Tensor& G_in,
                                                                 int64_t max_iter, double tol) {
  const int64_t T = check_gram_batch(G_in, "G");
  c10::cuda::CUDAGuard guard(G_in.device());
  const at::Tensor G = G_in.contiguous();
  const int64_t batch = G.numel() / (T * T);
  at::Tensor alpha = at::empty(batch_shape(G, 1), G.options());
  at::Tensor residual = at::empty(batch_shape(G, 2), G.options());
  at::Tensor ok = at::empty(batch_shape(G, 2), G.options().dtype(at::kBool));
  if (batch == 0) return {alpha, residual, ok};
  at::Tensor work = at::empty({batch * solvers::nash_work_doubles((int)T)}, G.options());
  nash_kernel<<<grid_for(batch), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      G.const_data_ptr<double>(), (int)T, batch, (int)max_iter, tol, alpha.data_ptr<double>(),
      residual.data_ptr<double>(), ok.data_ptr<bool>(), work.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {alpha, residual, ok};
}

std::tuple<at::Tensor, at::Tensor> dual_cone_weights_cuda(const at::Tensor& G_in,
                                                          const at::Tensor& U_in,
                                                          double norm_eps, double reg_eps,
                                                          int64_t max_iter) {
  const int64_t T = check_gram_batch(G_in, "G");
  check_dual_cone_args(G_in, U_in, T);
  c10::cuda::CUDAGuard guard(G_in.device());
  const at::Tensor G = G_in.contiguous(), U = U_in.contiguous();
  const int64_t K = U.size(0), batch = G.numel() / (T * T), problems = batch * K;
  at::Tensor W = at::empty(dual_cone_shape(G, K), G.options());
  at::Tensor ok = at::empty({batch, K}, G.options().dtype(at::kBool));
  if (problems > 0) {
    at::Tensor dwork = at::empty(
        {problems * (T * T + solvers::lower_bound_qp_work_doubles((int)T))}, G.options());
    at::Tensor iwork = at::empty({problems * solvers::lower_bound_qp_work_ints((int)T)},
                                 G.options().dtype(at::kInt));
    dual_cone_kernel<<<grid_for(problems), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        G.const_data_ptr<double>(), U.const_data_ptr<double>(), (int)T, K, problems, norm_eps,
        reg_eps, (int)max_iter, W.data_ptr<double>(), ok.data_ptr<bool>(),
        dwork.data_ptr<double>(), iwork.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {W, ok.all(-1).reshape(batch_shape(G, 2))};
}

std::tuple<at::Tensor, at::Tensor> symmetric_eigh_cuda(const at::Tensor& G_in) {
  const int64_t T = check_gram_batch(G_in, "G");
  c10::cuda::CUDAGuard guard(G_in.device());
  const at::Tensor G = G_in.contiguous();
  at::Tensor lambda = at::empty(batch_shape(G, 1), G.options());
  at::Tensor V = at::empty_like(G);
  const int64_t batch = G.numel() / (T * T);
  if (batch == 0) return {lambda, V};
  at::Tensor work = at::empty({batch * (T * T + T)}, G.options());
  eigh_kernel<<<grid_for(batch), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      G.const_data_ptr<double>(), (int)T, batch, lambda.data_ptr<double>(), V.data_ptr<double>(),
      work.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {lambda, V};
}

std::tuple<at::Tensor, at::Tensor> eigen_weights_cuda(const at::Tensor& G_in, int kind,
                                                      int64_t scale_mode, double rank_eps) {
  const int64_t T = check_gram_batch(G_in, "G");
  c10::cuda::CUDAGuard guard(G_in.device());
  const at::Tensor G = G_in.contiguous();
  const int64_t batch = G.numel() / (T * T);
  at::Tensor w = at::empty(batch_shape(G, 1), G.options());
  at::Tensor flag = at::empty(batch_shape(G, 2),
                              G.options().dtype(kind == 2 ? at::kLong : at::kBool));
  if (batch == 0) return {w, flag};
  at::Tensor work = at::empty({batch * eigen_work_doubles((int)T, kind)}, G.options());
  eigen_weights_kernel<<<grid_for(batch), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      G.const_data_ptr<double>(), (int)T, batch, kind, (int)scale_mode, rank_eps,
      w.data_ptr<double>(), kind == 2 ? nullptr : flag.data_ptr<bool>(),
      kind == 2 ? flag.data_ptr<int64_t>() : nullptr, work.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {w, flag};
}

std::tuple<at::Tensor, at::Tensor> imtlg_weights_cuda(const at::Tensor& G) {
  return eigen_weights_cuda(G, 0, 0, 0.0);
}

std::tuple<at::Tensor, at::Tensor> config_weights_cuda(const at::Tensor& G) {
  return eigen_weights_cuda(G, 1, 0, 0.0);
}

std::tuple<at::Tensor, at::Tensor> aligned_mtl_weights_cuda(const at::Tensor& G,
                                                            int64_t scale_mode, double rank_eps) {
  TORCH_CHECK_VALUE(scale_mode >= 0 && scale_mode <= 2, "scale_mode must be 0, 1 or 2");
  return eigen_weights_cuda(G, 2, scale_mode, rank_eps);
}

at::Tensor gradvac_coefficients_cuda(const at::Tensor& G_in, const at::Tensor& order_in,
                                     at::Tensor rho, double beta, double eps) {
  const int64_t T = check_gram_batch(G_in, "G");
  check_order(order_in, G_in);
  TORCH_CHECK_VALUE(rho.sizes() == G_in.sizes() && rho.scalar_type() == at::kDouble &&
                        rho.is_contiguous() && rho.device() == G_in.device(),
                    "rho must be a contiguous float64 tensor of the shape of G on its device");
  c10::cuda::CUDAGuard guard(G_in.device());
  const at::Tensor G = G_in.contiguous(), order = order_in.contiguous();
  at::Tensor C = at::empty_like(G);
  const int64_t batch = G.numel() / (T * T);
  if (batch == 0) return C;
  gradvac_kernel<<<grid_for(batch), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      G.const_data_ptr<double>(), order.const_data_ptr<int64_t>(), (int)T, batch,
      rho.data_ptr<double>(), beta, eps, C.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return C;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("nash_weights", &nash_weights_cuda);
  m.impl("dual_cone_weights", &dual_cone_weights_cuda);
  m.impl("symmetric_eigh", &symmetric_eigh_cuda);
  m.impl("imtlg_weights", &imtlg_weights_cuda);
  m.impl("aligned_mtl_weights", &aligned_mtl_weights_cuda);
  m.impl("config_weights", &config_weights_cuda);
  m.impl("gradvac_coefficients", &gradvac_coefficients_cuda);
  m.impl("pcgrad_coefficients", &pcgrad_coefficients_cuda);
  m.impl("min_norm_weights", &min_norm_weights_cuda);
  m.impl("cagrad_weights", &cagrad_weights_cuda);
}

}  // namespace fastmtl
