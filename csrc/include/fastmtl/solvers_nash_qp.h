// Nash bargaining weights (Nash-MTL) and lower-bounded QPs (UPGrad, DualProj).
//
// Same conventions as solvers.h: one float64 T x T matrix per call, row-major, caller-owned
// workspaces, capped iterations, success reported by the return value.
// Included by solvers.h after solvers_impl.h, into the same namespace (no include guard:
// see solvers_impl.h).

namespace fastmtl {
namespace FASTMTL_SOLVERS_NS {

// ---------------------------------------------------------------------------
// Nash-MTL (Navon et al. 2022): alpha > 0 with G alpha = 1 / alpha (element-wise), the
// stationary point of the self-concordant convex function
//     f(a) = 1/2 a^T M a - sum_i log a_i,   M = G / s (s = trace(G) / T),
// solved by Newton's method: while the Newton decrement lambda >= 1/4, a backtracking
// (Armijo) line search inside a > 0 followed by the exact minimisation of f along the ray
// {g a : g > 0}; full steps after, which converge quadratically. alpha = a / sqrt(s).
// The point exists iff no non-zero v >= 0 has J^T v = 0. When it does not (a zero row,
// opposite rows, 0 inside the cone), Newton does not settle within max_iter and the
// problem is solved again with M + delta I (delta = 1e-8): a large but finite alpha whose
// direction J^T alpha is ~0 on the degenerate part. Writes the Nash residual
// max_i |alpha_i (G alpha)_i - 1| to *residual; returns whether the unregularised
// solve met tol (beyond the rounding floor of nash_excess_residual).
// ---------------------------------------------------------------------------
FASTMTL_HD inline int64_t nash_work_doubles(int T) { return 2 * (int64_t)T * T + 4 * (int64_t)T; }

// max_i |a_i (M a)_i - 1| beyond what rounding in M a allows: cancellation leaves an
// error of about T eps a_i sum_j |M_ij a_j| in a_i (M a)_i, which no solver can beat
// (1e-8 for nearly opposite gradients with alpha ~ 1e4). A floor above 1e-2 means a
// diverges (no Nash point) and gives no allowance.
FASTMTL_HD inline double nash_excess_residual(const double* M, int T, const double* a, double* Ma,
                                              double* raw) {
  double excess = 0.0, worst = 0.0;
  for (int i = 0; i < T; ++i) {
    const double* Mi = M + (int64_t)i * T;
    double size = 0.0;
    for (int j = 0; j < T; ++j) size += fabs(Mi[j] * a[j]);
    Ma[i] = dot(Mi, a, T);
    const double r = fabs(a[i] * Ma[i] - 1.0);
    worst = fmax(worst, r);
    const double floor = 8.0 * (T + 1) * kEps64 * a[i] * size;
    excess = fmax(excess, floor < 1e-2 ? r - floor : r);  // a huge floor: a is diverging
  }
  if (raw) *raw = worst;
  return excess;
}

FASTMTL_HD inline double nash_residual(const double* M, int T, const double* a, double* Ma) {
  double raw = 0.0;
  nash_excess_residual(M, T, a, Ma, &raw);
  return raw;
}

// Scales a onto its best multiple, argmin_g f(g a): g^2 = T / a^T M a (keeps Ma in step).
FASTMTL_HD inline void nash_ray_scale(int T, double* a, double* Ma) {
  const double q = dot(a, Ma, T);
  if (!(q > 0.0) || !(q < 1e300)) return;
  const double g = sqrt(T / q);
  for (int i = 0; i < T; ++i) {
    a[i] *= g;
    Ma[i] *= g;
  }
}

FASTMTL_HD inline double nash_objective(int T, const double* a, const double* Ma) {
  double f = 0.0;
  for (int i = 0; i < T; ++i) f += 0.5 * a[i] * Ma[i] - log(a[i]);
  return f;
}

FASTMTL_HD inline bool nash_newton(const double* M, int T, double* a, double* work, int max_iter,
                                   double tol) {
  double* H = work;
  double* Ma = H + (int64_t)T * T;
  double* step = Ma + T;
  double* trial = step + T;
  double* Mtrial = trial + T;
  int polish = 2;  // two more Newton steps once tol is met: they are cheap and gain digits
  for (int i = 0; i < T; ++i) Ma[i] = dot(M + (int64_t)i * T, a, T);
  nash_ray_scale(T, a, Ma);
  for (int it = 0; it < max_iter; ++it) {
    const double res = nash_excess_residual(M, T, a, Ma, nullptr);
    if (!(res == res)) return false;
    if (res <= tol && polish-- <= 0) return true;
    for (int i = 0; i < T; ++i) {
      const double* Mi = M + (int64_t)i * T;
      double* Hi = H + (int64_t)i * T;
      for (int j = i; j < T; ++j) Hi[j] = Mi[j];
      Hi[i] += 1.0 / (a[i] * a[i]);
      step[i] = 1.0 / a[i] - Ma[i];  // -grad f
    }
    // in place (H's upper triangle becomes its factor); trial holds the reciprocal pivots
    // until the line search needs it
    if (!cholesky_factor(H, T, 0.0, H, T, trial)) return false;
    cholesky_apply(H, T, T, step, step);
    double decrement2 = 0.0;  // step^T H step = -grad^T step
    for (int i = 0; i < T; ++i) decrement2 += step[i] * (1.0 / a[i] - Ma[i]);
    if (!(decrement2 > 0.0)) return res <= tol;  // no descent left at this precision
    if (decrement2 < 0.0625) {  // lambda < 1/4: the full step stays feasible and converges
      for (int i = 0; i < T; ++i) a[i] += step[i];
      for (int i = 0; i < T; ++i) Ma[i] = dot(M + (int64_t)i * T, a, T);
      continue;
    }
    // Far from the solution: the largest step of the form 0.99 * (distance to a_i = 0),
    // halved until f decreases enough (Armijo), then the best point on the new ray.
    double t = 1.0;
    for (int i = 0; i < T; ++i)
      if (step[i] < 0.0) t = fmin(t, -0.99 * a[i] / step[i]);
    const double f0 = nash_objective(T, a, Ma);
    for (int k = 0; k < 60; ++k, t *= 0.5) {
      for (int i = 0; i < T; ++i) trial[i] = a[i] + t * step[i];
      for (int i = 0; i < T; ++i) Mtrial[i] = dot(M + (int64_t)i * T, trial, T);
      if (nash_objective(T, trial, Mtrial) <= f0 - 1e-4 * t * decrement2) break;
    }
    for (int i = 0; i < T; ++i) {
      a[i] = trial[i];
      Ma[i] = Mtrial[i];
    }
    // The exact minimum along the ray through a: with the line search this cuts Newton
    // from ~30 steps to ~7 at T = 128 when the gradients share a common component.
    nash_ray_scale(T, a, Ma);
  }
  return nash_excess_residual(M, T, a, Ma, nullptr) <= tol;
}

FASTMTL_HD inline bool nash_weights(const double* G, int T, double* alpha, double* residual,
                                    double* work, int max_iter, double tol) {
  double s = 0.0;
  for (int i = 0; i < T; ++i) s += G[(int64_t)i * T + i];
  s /= T;
  double* M = work;
  double* inner = work + (int64_t)T * T;
  if (!(s > 0.0)) {  // every gradient is zero: no Nash point; alpha = 1 gives d = 0
    for (int i = 0; i < T; ++i) alpha[i] = 1.0;
    *residual = 1.0;
    return false;
  }
  for (int64_t k = 0; k < (int64_t)T * T; ++k) M[k] = G[k] / s;
  // Start at the solution for orthogonal gradients, 1 / ||g_i|| (normalised units).
  for (int i = 0; i < T; ++i) {
    const double mii = M[(int64_t)i * T + i];
    alpha[i] = mii > 1e-12 ? 1.0 / sqrt(mii) : 1.0;
  }
  bool ok = nash_newton(M, T, alpha, inner, max_iter, tol);
  if (!ok) {
    for (int i = 0; i < T; ++i) {
      M[(int64_t)i * T + i] += 1e-8;
      alpha[i] = 1.0;
    }
    nash_newton(M, T, alpha, inner, max_iter, tol);
    for (int i = 0; i < T; ++i) M[(int64_t)i * T + i] -= 1e-8;
  }
  *residual = nash_residual(M, T, alpha, inner);
  const double to_raw = 1.0 / sqrt(s);
  for (int i = 0; i < T; ++i) alpha[i] *= to_raw;
  return ok;
}

// ---------------------------------------------------------------------------
// Lower-bounded QP, the projection step of UPGrad and DualProj (Quinton & Rey 2024):
//     v = argmin 1/2 v^T A v  subject to  v >= u,
// solved for x = v - u >= 0 (min 1/2 x^T A x + c^T x, c = A u) by the Lawson-Hanson
// active-set method: the free set grows by the most negative gradient entry, the
// equality-constrained minimiser on it comes from an updated Cholesky factor, and a step
// that would cross x = 0 stops there and frees the blocking variable. Finite for positive
// definite A; for a singular A a column dependent on the free set is skipped (its
// gradient is then zero up to rounding). Returns whether the KKT test held within tol.
// ---------------------------------------------------------------------------
FASTMTL_HD inline int64_t lower_bound_qp_work_doubles(int T) {
  return min_norm_work_doubles(T) + 2 * (int64_t)T;
}
FASTMTL_HD inline int64_t lower_bound_qp_work_ints(int T) { return min_norm_work_ints(T); }

FASTMTL_HD inline bool lower_bound_qp(const double* A, int T, const double* u, double* v,
                                      double* dwork, int* iwork, int max_iter) {
  MinNormWork w(dwork, iwork, T);  // lam: x on the free set; alpha: its trial minimiser
  double* grad = w.Gx;
  double* c = dwork + min_norm_work_doubles(T);
  double* scratch = c + T;
  double scale = 0.0;
  for (int k = 0; k < T; ++k) {
    c[k] = dot(A + (int64_t)k * T, u, T);
    grad[k] = c[k];
    w.in_S[k] = 0;  // 0: at its bound, 1: free, 2: skipped (dependent on the free set)
    scale += fabs(u[k]);
  }
  scale *= max_diagonal(A, T);
  const double tol = 1e-13 * scale;
  int s = 0;
  bool converged = false;
  for (int it = 0; it < max_iter; ++it) {
    int j = -1;
    for (int k = 0; k < T; ++k)
      if (w.in_S[k] == 0 && (j < 0 || grad[k] < grad[j])) j = k;
    if (j < 0 || !(grad[j] < -tol)) {
      converged = true;
      break;
    }
    if (!chol_append(A, T, 0.0, w, s, j, 1e-12)) {
      w.in_S[j] = 2;
      continue;
    }
    w.lam[s++] = 0.0;
    bool removed_other = false;
    for (int inner = 0; inner <= T; ++inner) {
      for (int p = 0; p < s; ++p) w.alpha[p] = -c[w.S[p]];
      chol_solve(T, w, s, w.alpha);
      int blocking = -1;
      double theta = 1.0;
      for (int p = 0; p < s; ++p) {
        if (w.alpha[p] > 0.0) continue;
        const double denom = w.lam[p] - w.alpha[p];
        const double t = denom > 0.0 ? w.lam[p] / denom : 0.0;
        if (blocking < 0 || t < theta) {
          theta = t;
          blocking = p;
        }
      }
      if (blocking < 0) {
        for (int p = 0; p < s; ++p) w.lam[p] = w.alpha[p];
        break;
      }
      for (int p = 0; p < s; ++p) w.lam[p] += theta * (w.alpha[p] - w.lam[p]);
      w.lam[blocking] = 0.0;
      for (int p = s - 1; p >= 0; --p) {
        if (w.lam[p] <= 0.0) {
          removed_other |= w.S[p] != j;
          chol_remove(T, w, s, p, scratch);
          --s;
        }
      }
    }
    if (removed_other) {  // the free set lost a column: skipped ones may be independent again
      for (int k = 0; k < T; ++k)
        if (w.in_S[k] == 2) w.in_S[k] = 0;
    }
    if (w.in_S[j] == 0) w.in_S[j] = 2;  // rounding pushed the entering variable straight out
    // grad = c + A x over the free columns, as rows of the symmetric A: contiguous axpys.
    for (int k = 0; k < T; ++k) grad[k] = c[k];
    for (int p = 0; p < s; ++p) {
      const double* Ap = A + (int64_t)w.S[p] * T;
      const double x = w.lam[p];
      for (int k = 0; k < T; ++k) grad[k] += x * Ap[k];
    }
  }
  for (int k = 0; k < T; ++k) v[k] = u[k];
  for (int p = 0; p < s; ++p) v[w.S[p]] += w.lam[p];
  return converged;
}

// torchjd's normalisation of G for UPGrad and DualProj: A = G / trace(G) (0 when the
// trace is below norm_eps, an absolute threshold) + reg_eps I.
FASTMTL_HD inline void dual_cone_matrix(const double* G, int T, double norm_eps, double reg_eps,
                                        double* A) {
  double trace = 0.0;
  for (int i = 0; i < T; ++i) trace += G[(int64_t)i * T + i];
  const double f = trace >= norm_eps && trace > 0.0 ? 1.0 / trace : 0.0;
  for (int64_t k = 0; k < (int64_t)T * T; ++k) A[k] = G[k] * f;
  for (int i = 0; i < T; ++i) A[(int64_t)i * T + i] += reg_eps;
}

}  // namespace FASTMTL_SOLVERS_NS
}  // namespace fastmtl
