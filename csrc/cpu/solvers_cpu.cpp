// CPU bodies of the batched solver ops: a parallel loop over independent problems,
// each solved by the shared header-only routines in include/fastmtl/solvers.h.
#include <ATen/Parallel.h>

#include <vector>

#include "../ops_common.h"
#include "fastmtl/solvers.h"

namespace fastmtl {
namespace {

at::Tensor pcgrad_coefficients_cpu(const at::Tensor& G_in, const at::Tensor& order_in,
                                   bool include_self, double eps, bool eps_on_norm) {
  const int64_t T = check_gram_batch(G_in, "G");
  TORCH_CHECK_VALUE(order_in.sizes() == G_in.sizes(), "order must have the shape of G ",
                    G_in.sizes(), ", got ", order_in.sizes());
  TORCH_CHECK_TYPE(order_in.scalar_type() == at::kLong, "order must be int64");
  const at::Tensor G = G_in.contiguous(), order = order_in.contiguous();
  at::Tensor C = at::empty_like(G);
  const int64_t batch = G.numel() / (T * T);
  const double* g = G.const_data_ptr<double>();
  const int64_t* o = order.const_data_ptr<int64_t>();
  double* c = C.data_ptr<double>();
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      solvers::pcgrad_coefficients(g + b * T * T, (int)T, o + b * T * T, include_self, eps,
                                   eps_on_norm, c + b * T * T);
  });
  return C;
}

std::tuple<at::Tensor, at::Tensor> min_norm_weights_cpu(const at::Tensor& G_in, int64_t max_iter,
                                                        double tol) {
  const int64_t T = check_gram_batch(G_in, "G");
  const at::Tensor G = G_in.contiguous();
  const int64_t batch = G.numel() / (T * T);
  at::Tensor w = at::empty(batch_shape(G, 1), G.options());
  at::Tensor ok = at::empty(batch_shape(G, 2), G.options().dtype(at::kBool));
  const double* g = G.const_data_ptr<double>();
  double* wp = w.data_ptr<double>();
  bool* okp = ok.data_ptr<bool>();
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> dwork(solvers::min_norm_work_doubles((int)T));
    std::vector<int> iwork(solvers::min_norm_work_ints((int)T));
    for (int64_t b = b0; b < b1; ++b)
      okp[b] = solvers::min_norm_point(g + b * T * T, (int)T, nullptr, wp + b * T, dwork.data(),
                                       iwork.data(), (int)max_iter, tol);
  });
  return {w, ok};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cagrad_weights_cpu(const at::Tensor& G_in, double c,
                                                                  int64_t rescale,
                                                                  int64_t max_outer,
                                                                  int64_t max_inner) {
  const int64_t T = check_gram_batch(G_in, "G");
  const at::Tensor G = G_in.contiguous();
  const int64_t batch = G.numel() / (T * T);
  at::Tensor weights = at::empty(batch_shape(G, 1), G.options());
  at::Tensor w_star = at::empty_like(weights);
  at::Tensor ok = at::empty(batch_shape(G, 2), G.options().dtype(at::kBool));
  const double* g = G.const_data_ptr<double>();
  double* wt = weights.data_ptr<double>();
  double* ws = w_star.data_ptr<double>();
  bool* okp = ok.data_ptr<bool>();
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> dwork(solvers::cagrad_work_doubles((int)T));
    std::vector<int> iwork(solvers::cagrad_work_ints((int)T));
    for (int64_t b = b0; b < b1; ++b)
      okp[b] = solvers::cagrad_weights(g + b * T * T, (int)T, c, (int)rescale, ws + b * T,
                                       wt + b * T, dwork.data(), iwork.data(), (int)max_outer,
                                       (int)max_inner);
  });
  return {weights, w_star, ok};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("pcgrad_coefficients", &pcgrad_coefficients_cpu);
  m.impl("min_norm_weights", &min_norm_weights_cpu);
  m.impl("cagrad_weights", &cagrad_weights_cpu);
}

}  // namespace fastmtl
