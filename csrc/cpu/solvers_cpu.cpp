// CPU bodies of the batched solver ops: a parallel loop over independent problems,
// each solved by the shared header-only routines in include/fastmtl/solvers.h.
#include <ATen/Parallel.h>

#include <memory>
#include <vector>

#include "../ops_common.h"
#include "cpu_features.h"
#include "fastmtl/solvers.h"

// The same routines compiled a second time for AVX2+FMA, in namespace solvers_avx2, and
// chosen per call where the CPU has them: GCC vectorises the dot products and row
// updates of the factorisations 4-wide there, against 2-wide for the x86-64 baseline.
// Only the header-only solvers go in the target region, so nothing shared with ATen
// (whose inline functions would otherwise be compiled for AVX2 too) ends up in it.
#if FASTMTL_CPU_AVX2_CLONE
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FASTMTL_SOLVERS_NS solvers_avx2
#define FASTMTL_SOLVERS_VEC4 1
#include "fastmtl/solvers_impl.h"
#include "fastmtl/solvers_nash_qp.h"
#undef FASTMTL_SOLVERS_VEC4
#undef FASTMTL_SOLVERS_NS
#pragma GCC pop_options
#define FASTMTL_SOLVE(NAME, ...)                                                      \
  (::fastmtl::cpu_avx2_fma_enabled() ? ::fastmtl::solvers_avx2::NAME(__VA_ARGS__) \
                                     : ::fastmtl::solvers::NAME(__VA_ARGS__))
#else
#define FASTMTL_SOLVE(NAME, ...) ::fastmtl::solvers::NAME(__VA_ARGS__)
#endif

namespace fastmtl {
namespace {

at::Tensor pcgrad_coefficients_cpu(const at::Tensor& G_in, const at::Tensor& order_in,
                                   bool include_self, double eps, bool eps_on_norm) {
  const int64_t T = check_gram_batch(G_in, "G");
  check_order(order_in, G_in);
  const at::Tensor G = G_in.contiguous(), order = order_in.contiguous();
  at::Tensor C = at::empty_like(G);
  const int64_t batch = G.numel() / (T * T);
  const double* g = G.const_data_ptr<double>();
  const int64_t* o = order.const_data_ptr<int64_t>();
  double* c = C.data_ptr<double>();
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      FASTMTL_SOLVE(pcgrad_coefficients, g + b * T * T, (int)T, o + b * T * T, include_self,
                    eps, eps_on_norm, c + b * T * T);
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
      okp[b] = FASTMTL_SOLVE(min_norm_point, g + b * T * T, (int)T, nullptr, wp + b * T,
                             dwork.data(), iwork.data(), (int)max_iter, tol);
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
      okp[b] = FASTMTL_SOLVE(cagrad_weights, g + b * T * T, (int)T, c, (int)rescale,
                             ws + b * T, wt + b * T, dwork.data(), iwork.data(),
                             (int)max_outer, (int)max_inner);
  });
  return {weights, w_star, ok};
}

// Runs fn(b, workspace) for every problem of a batch, in parallel, with one float64
// workspace of `work` doubles per thread.
template <typename F>
void for_each_problem(int64_t batch, int64_t work, const F& fn) {
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    // uninitialised: every solver writes its workspace before reading it, and zeroing a
    // large one (Aligned-MTL's rotation log) would cost as much as a small solve
    std::unique_ptr<double[]> ws(new double[std::max<int64_t>(work, 1)]);
    for (int64_t b = b0; b < b1; ++b) fn(b, ws.get());
  });
}

std::tuple<at::Tensor, at::Tensor> symmetric_eigh_cpu(const at::Tensor& G_in) {
  const int64_t T = check_gram_batch(G_in, "G");
  const at::Tensor G = G_in.contiguous();
  at::Tensor lambda = at::empty(batch_shape(G, 1), G.options());
  at::Tensor V = at::empty_like(G);
  const double* g = G.const_data_ptr<double>();
  double *lp = lambda.data_ptr<double>(), *vp = V.data_ptr<double>();
  for_each_problem(G.numel() / (T * T), T * T + T, [&](int64_t b, double* ws) {
    FASTMTL_SOLVE(symmetric_eigh, g + b * T * T, (int)T, lp + b * T, vp + b * T * T, ws,
                  ws + T * T);
  });
  return {lambda, V};
}

// Shared body of the ops that map each G to weights w and a per-problem flag or count.
// work(T): doubles of workspace per problem.
template <typename Flag, typename F>
std::tuple<at::Tensor, at::Tensor> weights_op(const at::Tensor& G_in, at::ScalarType flag_type,
                                              int64_t (*work)(int), const F& solve) {
  const int64_t T = check_gram_batch(G_in, "G");
  const at::Tensor G = G_in.contiguous();
  at::Tensor w = at::empty(batch_shape(G, 1), G.options());
  at::Tensor flag = at::empty(batch_shape(G, 2), G.options().dtype(flag_type));
  const double* g = G.const_data_ptr<double>();
  double* wp = w.data_ptr<double>();
  Flag* fp = flag.data_ptr<Flag>();
  for_each_problem(G.numel() / (T * T), work((int)T), [&](int64_t b, double* ws) {
    fp[b] = solve(g + b * T * T, (int)T, wp + b * T, ws);
  });
  return {w, flag};
}

std::tuple<at::Tensor, at::Tensor> imtlg_weights_cpu(const at::Tensor& G) {
  return weights_op<bool>(G, at::kBool, &solvers::eig_work_doubles,
                          [](const double* g, int T, double* w, double* ws) {
                            return FASTMTL_SOLVE(imtlg_weights, g, T, w, ws);
                          });
}

std::tuple<at::Tensor, at::Tensor> config_weights_cpu(const at::Tensor& G) {
  return weights_op<bool>(G, at::kBool, &solvers::eig_work_doubles,
                          [](const double* g, int T, double* w, double* ws) {
                            return FASTMTL_SOLVE(config_weights, g, T, w, ws);
                          });
}

std::tuple<at::Tensor, at::Tensor> aligned_mtl_weights_cpu(const at::Tensor& G,
                                                           int64_t scale_mode, double rank_eps) {
  TORCH_CHECK_VALUE(scale_mode >= 0 && scale_mode <= 2, "scale_mode must be 0, 1 or 2");
  return weights_op<int64_t>(G, at::kLong, &solvers::aligned_mtl_work_doubles,
                             [&](const double* g, int T, double* w, double* ws) {
                               return (int64_t)FASTMTL_SOLVE(aligned_mtl_weights, g, T,
                                                             (int)scale_mode, rank_eps, w, ws);
                             });
}

at::Tensor gradvac_coefficients_cpu(const at::Tensor& G_in, const at::Tensor& order_in,
                                    at::Tensor rho, double beta, double eps) {
  const int64_t T = check_gram_batch(G_in, "G");
  check_order(order_in, G_in);
  TORCH_CHECK_VALUE(rho.sizes() == G_in.sizes() && rho.scalar_type() == at::kDouble &&
                        rho.is_contiguous(),
                    "rho must be a contiguous float64 tensor of the shape of G");
  const at::Tensor G = G_in.contiguous(), order = order_in.contiguous();
  at::Tensor C = at::empty_like(G);
  const double* g = G.const_data_ptr<double>();
  const int64_t* o = order.const_data_ptr<int64_t>();
  double *r = rho.data_ptr<double>(), *c = C.data_ptr<double>();
  for_each_problem(G.numel() / (T * T), 0, [&](int64_t b, double*) {
    FASTMTL_SOLVE(gradvac_coefficients, g + b * T * T, (int)T, o + b * T * T, r + b * T * T,
                  beta, eps, c + b * T * T);
  });
  return C;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nash_weights_cpu(const at::Tensor& G_in,
                                                                int64_t max_iter, double tol) {
  const int64_t T = check_gram_batch(G_in, "G");
  const at::Tensor G = G_in.contiguous();
  at::Tensor alpha = at::empty(batch_shape(G, 1), G.options());
  at::Tensor residual = at::empty(batch_shape(G, 2), G.options());
  at::Tensor ok = at::empty(batch_shape(G, 2), G.options().dtype(at::kBool));
  const double* g = G.const_data_ptr<double>();
  double *ap = alpha.data_ptr<double>(), *rp = residual.data_ptr<double>();
  bool* okp = ok.data_ptr<bool>();
  for_each_problem(G.numel() / (T * T), solvers::nash_work_doubles((int)T),
                   [&](int64_t b, double* ws) {
                     okp[b] = FASTMTL_SOLVE(nash_weights, g + b * T * T, (int)T, ap + b * T,
                                            rp + b, ws, (int)max_iter, tol);
                   });
  return {alpha, residual, ok};
}

std::tuple<at::Tensor, at::Tensor> dual_cone_weights_cpu(const at::Tensor& G_in,
                                                         const at::Tensor& U_in, double norm_eps,
                                                         double reg_eps, int64_t max_iter) {
  const int64_t T = check_gram_batch(G_in, "G");
  check_dual_cone_args(G_in, U_in, T);
  const at::Tensor G = G_in.contiguous(), U = U_in.contiguous();
  const int64_t K = U.size(0), batch = G.numel() / (T * T);
  at::Tensor W = at::empty(dual_cone_shape(G, K), G.options());
  at::Tensor ok = at::empty({batch, K}, G.options().dtype(at::kBool));
  const double *g = G.const_data_ptr<double>(), *u = U.const_data_ptr<double>();
  double* wp = W.data_ptr<double>();
  bool* okp = ok.data_ptr<bool>();
  const int t = (int)T;
  at::parallel_for(0, batch * K, 1, [&](int64_t p0, int64_t p1) {
    std::vector<double> dwork(T * T + solvers::lower_bound_qp_work_doubles(t));
    std::vector<int> iwork(solvers::lower_bound_qp_work_ints(t));
    int64_t built = -1;  // the batch entry whose A is in dwork
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / K, k = p % K;
      if (b != built) {
        FASTMTL_SOLVE(dual_cone_matrix, g + b * T * T, t, norm_eps, reg_eps, dwork.data());
        built = b;
      }
      okp[p] = FASTMTL_SOLVE(lower_bound_qp, dwork.data(), t, u + k * T, wp + p * T,
                             dwork.data() + T * T, iwork.data(), (int)max_iter);
    }
  });
  return {W, ok.all(-1).reshape(batch_shape(G, 2))};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("nash_weights", &nash_weights_cpu);
  m.impl("dual_cone_weights", &dual_cone_weights_cpu);
  m.impl("symmetric_eigh", &symmetric_eigh_cpu);
  m.impl("imtlg_weights", &imtlg_weights_cpu);
  m.impl("aligned_mtl_weights", &aligned_mtl_weights_cpu);
  m.impl("config_weights", &config_weights_cpu);
  m.impl("gradvac_coefficients", &gradvac_coefficients_cpu);
  m.impl("pcgrad_coefficients", &pcgrad_coefficients_cpu);
  m.impl("min_norm_weights", &min_norm_weights_cpu);
  m.impl("cagrad_weights", &cagrad_weights_cpu);
}

}  // namespace fastmtl
