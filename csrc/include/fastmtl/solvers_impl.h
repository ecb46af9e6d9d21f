// The dense solvers' routines, in namespace fastmtl::FASTMTL_SOLVERS_NS. Include
// solvers.h, not this file: it has no include guard, so that csrc/cpu/solvers_cpu.cpp can
// compile it a second time for another instruction set under another namespace.

namespace fastmtl {
namespace FASTMTL_SOLVERS_NS {

constexpr double kEps64 = 2.220446049250313e-16;

// Dot products with several partial sums: a single running sum would serialise every
// multiply-add on the adder's latency, which dominates these small solves. On the host
// the partial sums are vector lanes (GCC keeps scalar sums scalar, as it may not reorder
// them); on the device, four scalars. The two differ by rounding only. dots_4x1 forms
// the dot products of four rows with one vector at once, loading the vector once.
#if defined(__CUDA_ARCH__) || !defined(__GNUC__)
FASTMTL_HD inline double dot(const double* a, const double* b, int n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += a[k] * b[k];
    s1 += a[k + 1] * b[k + 1];
    s2 += a[k + 2] * b[k + 2];
    s3 += a[k + 3] * b[k + 3];
  }
  for (; k < n; ++k) s0 += a[k] * b[k];
  return (s0 + s1) + (s2 + s3);
}

FASTMTL_HD inline void dots_4x1(const double* const* a, const double* b, int n, double* out) {
  for (int r = 0; r < 4; ++r) out[r] = dot(a[r], b, n);
}
#else
// 4-wide vectors with AVX (one register each), 2-wide with SSE2 only (a 4-wide vector
// there would be split into halves less well). FASTMTL_SOLVERS_VEC4 asks for the AVX form
// where the target is set by a pragma (GCC does not define __AVX__ inside `#pragma GCC
// target` regions of C++ code).
#if defined(__AVX__) || defined(FASTMTL_SOLVERS_VEC4)
constexpr int kLanes = 4;
#else
constexpr int kLanes = 2;
#endif
typedef double lanes_t __attribute__((vector_size(kLanes * sizeof(double))));

FASTMTL_HD inline lanes_t load_lanes(const double* p) {
  lanes_t v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

FASTMTL_HD inline double sum_lanes(lanes_t v) {
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += v[l];
  return total;
}

// 8 partial sums per step
FASTMTL_HD inline double dot(const double* a, const double* b, int n) {
  constexpr int R = 8 / kLanes;
  lanes_t s[R] = {};
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int r = 0; r < R; ++r) {
      const int q = k + r * kLanes;
      s[r] += load_lanes(a + q) * load_lanes(b + q);
    }
  for (int r = 1; r < R; ++r) s[0] += s[r];
  double total = sum_lanes(s[0]);
  for (; k < n; ++k) total += a[k] * b[k];
  return total;
}

// out[r] = a_r . b for four rows a_r: b is loaded once for the four, and two steps at a
// time keep 8 independent sums.
FASTMTL_HD inline void dots_4x1(const double* const* a, const double* b, int n, double* out) {
  lanes_t s0 = {}, s1 = {}, s2 = {}, s3 = {}, t0 = {}, t1 = {}, t2 = {}, t3 = {};
  const double *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  int k = 0;
  for (; k + 2 * kLanes <= n; k += 2 * kLanes) {
    const lanes_t y = load_lanes(b + k), z = load_lanes(b + k + kLanes);
    s0 += load_lanes(a0 + k) * y;
    s1 += load_lanes(a1 + k) * y;
    s2 += load_lanes(a2 + k) * y;
    s3 += load_lanes(a3 + k) * y;
    t0 += load_lanes(a0 + k + kLanes) * z;
    t1 += load_lanes(a1 + k + kLanes) * z;
    t2 += load_lanes(a2 + k + kLanes) * z;
    t3 += load_lanes(a3 + k + kLanes) * z;
  }
  const lanes_t sums[4] = {s0 + t0, s1 + t1, s2 + t2, s3 + t3};
  for (int r = 0; r < 4; ++r) {
    double total = sum_lanes(sums[r]);
    for (int q = k; q < n; ++q) total += a[r][q] * b[q];
    out[r] = total;
  }
}

#endif

// sum_p a[idx[p]] * b[p]
FASTMTL_HD inline double gather_dot(const double* a, const int* idx, const double* b, int n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += a[idx[k]] * b[k];
    s1 += a[idx[k + 1]] * b[k + 1];
    s2 += a[idx[k + 2]] * b[k + 2];
    s3 += a[idx[k + 3]] * b[k + 3];
  }
  for (; k < n; ++k) s0 += a[idx[k]] * b[k];
  return (s0 + s1) + (s2 + s3);
}

FASTMTL_HD inline double max_diagonal(const double* G, int T) {
  double m = 0.0;
  for (int i = 0; i < T; ++i) m = fmax(m, G[(int64_t)i * T + i]);
  return m;
}

// ---------------------------------------------------------------------------
// PCGrad (Yu et al. 2020) as coefficients.
//
// Every projected gradient stays a linear combination of the original rows,
// pc_i = sum_k C[i, k] g_k, so the sequential projections only need G:
//   p.g_j = sum_k C[i, k] G[k, j],   p -= (p.g_j / ||g_j||^2) g_j  <=>  C[i, j] -= ...
// order[i, :] is the visiting order of task i. include_self visits j == i (the
// rule of the paper's code); eps is added to the denominator ||g_j||^2, or, with
// eps_on_norm, to ||g_j|| before squaring (the CAGrad repository's unit vectors).
// ---------------------------------------------------------------------------
FASTMTL_HD inline void pcgrad_coefficients(const double* G, int T, const int64_t* order,
                                           bool include_self, double eps, bool eps_on_norm,
                                           double* C) {
  for (int i = 0; i < T; ++i) {
    double* c = C + (int64_t)i * T;
    for (int m = 0; m < T; ++m) c[m] = 0.0;
    c[i] = 1.0;
    const int64_t* visit = order + (int64_t)i * T;
    for (int k = 0; k < T; ++k) {
      const int j = (int)visit[k];
      if (j < 0 || j >= T || (!include_self && j == i)) continue;
      const double* gj = G + (int64_t)j * T;  // G is symmetric: row j == column j
      const double pg = dot(c, gj, T);
      if (!(pg < 0.0)) continue;
      const double gjj = gj[j];
      double denom;
      if (eps_on_norm) {
        const double n = sqrt(fmax(gjj, 0.0)) + eps;
        denom = n * n;
      } else {
        denom = gjj + eps;
      }
      if (denom > 0.0) c[j] -= pg / denom;
    }
  }
}

// ---------------------------------------------------------------------------
// Min-norm point of the convex hull of the rows (MGDA, Sener & Koltun 2018):
//   w* = argmin_{w >= 0, sum w = 1} w^T G w.
//
// Wolfe's (1976) finite algorithm, written on G alone. A "corral" S is a set of
// affinely independent points whose affine minimiser lies inside their hull.
// Affine independence of {g_i} is linear independence of {(g_i, 1)}, whose Gram
// matrix is M = G + shift * 1 1^T (shift > 0). On the affine set sum(a) = 1,
// a^T M a = a^T G a + shift, so the affine minimiser over S is a ∝ M_S^{-1} 1,
// and M_S is SPD exactly when S is affinely independent. We keep a Cholesky
// factor L of M_S, appended and down-dated in O(|S|^2) as points enter and leave.
//
// The iteration starts from a warm start (support of w_init), else from all T
// points when they are affinely independent (optimal supports are large in
// practice, so few points then leave), else from the shortest row.
// ---------------------------------------------------------------------------
FASTMTL_HD inline int64_t min_norm_work_doubles(int T) { return (int64_t)T * T + 4 * (int64_t)T; }
FASTMTL_HD inline int64_t min_norm_work_ints(int T) { return 2 * (int64_t)T; }

struct MinNormWork {
  double* L;      // T x T, lower Cholesky factor of M_S (row p = position p in S)
  double* lam;    // current weights, by position in S
  double* alpha;  // affine minimiser, by position in S
  double* Gx;     // (G lam) for every task
  int* S;         // task index at each position
  int* in_S;      // 1 if the task is in S

  FASTMTL_HD MinNormWork(double* dwork, int* iwork, int T)
      : L(dwork), lam(dwork + (int64_t)T * T), alpha(lam + T), Gx(alpha + T),
        S(iwork), in_S(iwork + T) {}
};

// Appends task j to the factor of M_S; false when (g_j, 1) is numerically in the
// span of the current points (squared distance below rel_tol * M_jj).
FASTMTL_HD inline bool chol_append(const double* G, int T, double shift, MinNormWork& w, int s,
                                   int j, double rel_tol) {
  double* row = w.L + (int64_t)s * T;
  double sq = 0.0;
  const double* gj = G + (int64_t)j * T;
  for (int p = 0; p < s; ++p) {
    const double* Lp = w.L + (int64_t)p * T;
    const double v = (gj[w.S[p]] + shift - dot(Lp, row, p)) / Lp[p];
    row[p] = v;
    sq += v * v;
  }
  const double mjj = G[(int64_t)j * T + j] + shift;
  const double d2 = mjj - sq;
  if (!(d2 > rel_tol * mjj)) return false;
  row[s] = sqrt(d2);
  w.S[s] = j;
  w.in_S[j] = 1;
  return true;
}

// Removes position p from S and its factor: the rows below move up one, and the
// trailing block absorbs the removed column by a rank-one Cholesky update.
FASTMTL_HD inline void chol_remove(int T, MinNormWork& w, int s, int p, double* x) {
  const int n = s - 1 - p;  // size of the trailing block
  for (int k = 0; k < n; ++k) x[k] = w.L[(int64_t)(p + 1 + k) * T + p];
  for (int r = p + 1; r < s; ++r) {
    const double* src = w.L + (int64_t)r * T;
    double* dst = w.L + (int64_t)(r - 1) * T;
    for (int c = 0; c < p; ++c) dst[c] = src[c];
    for (int c = p + 1; c <= r; ++c) dst[c - 1] = src[c];
  }
  for (int k = 0; k < n; ++k) {
    double* Lk = w.L + (int64_t)(p + k) * T;
    const double lkk = Lk[p + k];
    const double r = sqrt(lkk * lkk + x[k] * x[k]);
    const double cth = r / lkk, sth = x[k] / lkk, inv_c = lkk / r;
    Lk[p + k] = r;
    for (int i = k + 1; i < n; ++i) {  // independent across i: no serial chain
      double* Li = w.L + (int64_t)(p + i) * T;
      const double l = (Li[p + k] + sth * x[i]) * inv_c;
      Li[p + k] = l;
      x[i] = cth * x[i] - sth * l;
    }
  }
  w.in_S[w.S[p]] = 0;
  for (int q = p; q < s - 1; ++q) {
    w.S[q] = w.S[q + 1];
    w.lam[q] = w.lam[q + 1];
  }
}

// alpha = M_S^{-1} 1 / (1^T M_S^{-1} 1), by two triangular solves.
FASTMTL_HD inline void affine_minimiser(int T, MinNormWork& w, int s) {
  double* a = w.alpha;
  for (int p = 0; p < s; ++p) {
    const double* Lp = w.L + (int64_t)p * T;
    a[p] = (1.0 - dot(Lp, a, p)) / Lp[p];
  }
  // L^T a = y by columns of L^T (rows of L): independent updates, contiguous reads.
  for (int q = s - 1; q >= 0; --q) {
    const double* Lq = w.L + (int64_t)q * T;
    a[q] /= Lq[q];
    for (int p = 0; p < q; ++p) a[p] -= Lq[p] * a[q];
  }
  double total = 0.0;
  for (int p = 0; p < s; ++p) total += a[p];
  for (int p = 0; p < s; ++p) a[p] /= total;
}

// Builds the starting corral from `start` (task flags); returns its size, 0 on failure.
FASTMTL_HD inline int corral_from(const double* G, int T, double shift, MinNormWork& w,
                                  const double* start_weights) {
  for (int k = 0; k < T; ++k) w.in_S[k] = 0;
  int s = 0;
  double total = 0.0;
  for (int k = 0; k < T; ++k) {
    const double wk = start_weights ? start_weights[k] : 1.0;
    if (!(wk > 0.0)) continue;
    if (!chol_append(G, T, shift, w, s, k, 1e-10)) {
      for (int q = 0; q < T; ++q) w.in_S[q] = 0;
      return 0;
    }
    w.lam[s++] = wk;
    total += wk;
  }
  for (int p = 0; p < s; ++p) w.lam[p] /= total;
  return s;
}

// Returns true when Wolfe's optimality test held (within tol * max ||g||^2).
FASTMTL_HD inline bool min_norm_point(const double* G, int T, const double* w_init, double* w_out,
                                      double* dwork, int* iwork, int max_iter, double tol) {
  const double scale = max_diagonal(G, T);
  if (!(scale > 0.0)) {  // every row is zero: every w is optimal; keep the symmetric one
    for (int k = 0; k < T; ++k) w_out[k] = 1.0 / T;
    return true;
  }
  const double shift = scale;
  MinNormWork w(dwork, iwork, T);
  double* scratch = w.Gx;  // free while the factor is being edited

  int s = 0;
  if (w_init) s = corral_from(G, T, shift, w, w_init);
  if (s == 0 && T > 1) s = corral_from(G, T, shift, w, nullptr);
  if (s == 0) {
    int i0 = 0;
    for (int k = 1; k < T; ++k)
      if (G[(int64_t)k * T + k] < G[(int64_t)i0 * T + i0]) i0 = k;
    for (int k = 0; k < T; ++k) w.in_S[k] = 0;
    chol_append(G, T, shift, w, 0, i0, 0.0);
    w.lam[0] = 1.0;
    s = 1;
  }

  bool converged = false;
  int last_added = -1;
  for (int it = 0; it < max_iter; ++it) {
    affine_minimiser(T, w, s);
    // Minor cycle: step towards the affine minimiser until a weight hits zero.
    int blocking = -1;
    double theta = 1.0;
    for (int p = 0; p < s; ++p) {
      if (w.alpha[p] > 1e-14) continue;
      const double denom = w.lam[p] - w.alpha[p];
      const double t = denom > 0.0 ? w.lam[p] / denom : 0.0;
      if (blocking < 0 || t < theta) {
        theta = t;
        blocking = p;
      }
    }
    if (blocking >= 0) {
      if (theta <= 0.0 && w.S[blocking] == last_added) {
        converged = true;  // the entering point cannot move: rounding stalls Wolfe here
        chol_remove(T, w, s, blocking, scratch);
        --s;
        break;
      }
      double total = 0.0;
      for (int p = 0; p < s; ++p) {
        w.lam[p] += theta * (w.alpha[p] - w.lam[p]);
        if (w.lam[p] < 0.0) w.lam[p] = 0.0;
      }
      w.lam[blocking] = 0.0;
      for (int p = s - 1; p >= 0; --p) {
        if (w.lam[p] <= 1e-16 && s > 1) {
          chol_remove(T, w, s, p, scratch);
          --s;
        }
      }
      for (int p = 0; p < s; ++p) total += w.lam[p];
      for (int p = 0; p < s; ++p) w.lam[p] /= total;
      continue;
    }
    for (int p = 0; p < s; ++p) w.lam[p] = w.alpha[p];

    // Major cycle: is there a point beyond the supporting hyperplane at x?
    double xx = 0.0;
    for (int k = 0; k < T; ++k) w.Gx[k] = gather_dot(G + (int64_t)k * T, w.S, w.lam, s);
    for (int p = 0; p < s; ++p) xx += w.lam[p] * w.Gx[w.S[p]];
    int j = -1;
    for (int k = 0; k < T; ++k)
      if (!w.in_S[k] && (j < 0 || w.Gx[k] < w.Gx[j])) j = k;
    if (j < 0 || xx - w.Gx[j] <= tol * scale) {
      converged = true;
      break;
    }
    if (!chol_append(G, T, shift, w, s, j, 1e-14)) {
      converged = true;  // (g_j, 1) lies in the span of S to rounding: nothing left to gain
      break;
    }
    w.lam[s++] = 0.0;
    last_added = j;
  }
  for (int k = 0; k < T; ++k) w_out[k] = 0.0;
  for (int p = 0; p < s; ++p) w_out[w.S[p]] = w.lam[p];
  return converged;
}

// ---------------------------------------------------------------------------
// CAGrad (Liu et al. 2021), dual over the simplex:
//   w* = argmin_{w in simplex} b^T w + kappa sqrt(w^T G w),
//   b = G 1 / T (b_i = g_i . g0),  kappa = c ||g0||.
// Writing sqrt(q) = min_{s>0} q/(2s) + s/2 turns it into the family of
//   min_w 1/2 w^T G w + beta b^T w = 1/2 ||J^T w + beta g0||^2 + const,
// i.e. the min-norm point of the rows shifted by beta g0, whose Gram matrix is
//   G'(beta) = G + beta (b 1^T + 1 b^T) + beta^2 ||g0||^2 1 1^T.
// The optimum is the root of phi(beta) = kappa beta - sqrt(q(w(beta))) on
// [0, max||g|| / kappa], found by Illinois regula falsi with warm-started solves.
// ---------------------------------------------------------------------------
FASTMTL_HD inline int64_t cagrad_work_doubles(int T) {
  return 2 * (int64_t)T * T + 3 * (int64_t)T + min_norm_work_doubles(T);
}
FASTMTL_HD inline int64_t cagrad_work_ints(int T) { return min_norm_work_ints(T); }

FASTMTL_HD inline double quadratic_form(const double* G, int T, const double* w) {
  double q = 0.0;
  for (int i = 0; i < T; ++i) q += w[i] * dot(G + (int64_t)i * T, w, T);
  return q;
}

// Solves M_S x = rhs in place with the factor in w (M_S = L L^T).
FASTMTL_HD inline void chol_solve(int T, const MinNormWork& w, int s, double* x) {
  for (int p = 0; p < s; ++p) {
    const double* Lp = w.L + (int64_t)p * T;
    x[p] = (x[p] - dot(Lp, x, p)) / Lp[p];
  }
  for (int q = s - 1; q >= 0; --q) {
    const double* Lq = w.L + (int64_t)q * T;
    x[q] /= Lq[q];
    for (int p = 0; p < q; ++p) x[p] -= Lq[p] * x[q];
  }
}

// The CAGrad root beta* = ||g_w*|| / kappa if the optimum has the support of w (a guess).
// On a support S the KKT conditions b_S + kappa G_S w / sqrt(q) = mu 1, sum w = 1 have a
// closed form through M_S = G_S + c 1 1^T (c = max ||g||^2): with u = M_S^{-1} 1,
// v = M_S^{-1} b_S, A = 1.u, B = 1.v, C = b_S.v,
//   beta*^2 = (1/A - c) / (kappa^2 - C + B^2/A).
// Returns -1 when S is not affinely independent or the formula has no root.
FASTMTL_HD inline double cagrad_support_root(const double* G, int T, const double* b,
                                             double kappa, double scale, const double* w_guess,
                                             double* dwork, int* iwork) {
  MinNormWork w(dwork, iwork, T);
  const int s = corral_from(G, T, scale, w, w_guess);
  if (s == 0) return -1.0;
  double* u = w.alpha;
  double* v = w.Gx;
  for (int p = 0; p < s; ++p) {
    u[p] = 1.0;
    v[p] = b[w.S[p]];
  }
  chol_solve(T, w, s, u);
  chol_solve(T, w, s, v);
  double A = 0.0, B = 0.0, C = 0.0;
  for (int p = 0; p < s; ++p) {
    A += u[p];
    B += v[p];
    C += b[w.S[p]] * v[p];
  }
  if (!(A > 0.0)) return -1.0;
  const double num = 1.0 / A - scale, den = kappa * kappa - C + B * B / A;
  if (!(num > 0.0) || !(den > 0.0)) return -1.0;
  return sqrt(num / den);
}

// Writes w* (the dual solution) and weights = (1/T + lambda w*) / s, with
// lambda = kappa / ||J^T w*||; returns whether every inner solve converged.
FASTMTL_HD inline bool cagrad_weights(const double* G, int T, double c, int rescale,
                                      double* w_star, double* weights, double* dwork, int* iwork,
                                      int max_outer, int max_inner) {
  const double s_div = rescale == 1 ? 1.0 + c * c : (rescale == 2 ? 1.0 + c : 1.0);
  double* Gp = dwork;
  double* b = Gp + (int64_t)T * T;
  double* w_try = b + T;
  double* w_best = w_try + T;
  double* inner = w_best + T;  // min-norm workspace

  double g0sq = 0.0;
  for (int i = 0; i < T; ++i) {
    double v = 0.0;
    for (int j = 0; j < T; ++j) v += G[(int64_t)i * T + j];
    b[i] = v / T;
    g0sq += b[i];
  }
  g0sq /= T;
  const double scale = max_diagonal(G, T);
  for (int k = 0; k < T; ++k) w_star[k] = 1.0 / T;
  if (!(g0sq > 0.0) || !(c > 0.0) || !(scale > 0.0)) {
    for (int k = 0; k < T; ++k) weights[k] = 1.0 / (T * s_div);
    return true;
  }
  const double kappa = c * sqrt(g0sq);

  bool converged = true;
  bool have_warm = false;
  double best_abs_phi = 0.0;
  bool have_best = false;
  // phi(beta); leaves the inner solution in w_try and keeps the best in w_best.
  auto phi = [&](double beta) -> double {
    for (int i = 0; i < T; ++i)
      for (int j = 0; j < T; ++j)
        Gp[(int64_t)i * T + j] = G[(int64_t)i * T + j] + beta * (b[i] + b[j]) + beta * beta * g0sq;
    converged &= min_norm_point(Gp, T, have_warm ? w_try : nullptr, w_try, inner,
                                iwork, max_inner, 1e-15);
    have_warm = true;
    const double f = kappa * beta - sqrt(fmax(quadratic_form(G, T, w_try), 0.0));
    if (!have_best || fabs(f) < best_abs_phi) {
      best_abs_phi = fabs(f);
      have_best = true;
      for (int k = 0; k < T; ++k) w_best[k] = w_try[k];
    }
    return f;
  };

  double lo = 0.0, hi = sqrt(scale) / kappa * (1.0 + 1e-12);
  double f_lo = phi(lo);
  if (f_lo >= 0.0) {
    // 0 lies in the hull (phi(0) = 0); look for the positive root beyond it.
    double probe = hi;
    bool found = false;
    for (int k = 0; k < 60 && !found; ++k) {
      probe *= 0.5;
      const double f = phi(probe);
      if (f < 0.0) {
        lo = probe;
        f_lo = f;
        found = true;
      }
    }
    if (!found) {
      // The optimum is at g_w = 0: drop the undefined g_w term, d = g0 / s.
      for (int k = 0; k < T; ++k) {
        w_star[k] = w_best[k];
        weights[k] = 1.0 / (T * s_div);
      }
      return converged;
    }
  }
  // Forget phi(0) = 0 when 0 lies in the hull: it is not the root we want.
  have_best = false;
  // phi(hi) > 0 is known (kappa hi >= max||g|| >= sqrt(q)); it is evaluated only if the
  // support steps leave the bracket and regula falsi needs its value.
  double f_hi = 0.0;
  bool have_f_hi = false;
  int side = 0;
  for (int it = 0; it < max_outer; ++it) {
    // Exact root for the support of the latest inner solution; regula falsi otherwise.
    double beta = cagrad_support_root(G, T, b, kappa, scale, w_try, inner, iwork);
    if (!(beta > lo && beta < hi)) {
      if (!have_f_hi) {
        beta = hi;
      } else {
        beta = (lo * f_hi - hi * f_lo) / (f_hi - f_lo);
        if (!(beta > lo && beta < hi)) beta = 0.5 * (lo + hi);
      }
    }
    const double f = phi(beta);
    if (beta == hi) {
      f_hi = f > 0.0 ? f : 1e-300;  // only rounding can make it non-positive
      have_f_hi = true;
      continue;
    }
    if (f > 0.0) {
      hi = beta;
      f_hi = f;
      have_f_hi = true;
      if (side == 1) f_lo *= 0.5;
      side = 1;
    } else if (f < 0.0) {
      lo = beta;
      f_lo = f;
      if (side == -1 && have_f_hi) f_hi *= 0.5;
      side = -1;
    } else {
      break;
    }
    // Relative to the root's own size: ||g_w*|| can be far below max ||g||.
    if (hi - lo <= 1e-14 * hi || fabs(f) <= 1e-14 * kappa * beta) break;
    if (it == max_outer - 1) converged = false;
  }
  // ||g_w*|| at 1e-12 max||g|| was seen to be root-search noise around an optimum at
  // g_w = 0 (a zero task gradient beside rows 1e3 times longer): its direction then decided
  // d and depended on the task order. 1e-10 keeps genuine small optima (the golden
  // near-zero-row case has 7.8e-9) and drops that noise.
  const double gw = sqrt(fmax(quadratic_form(G, T, w_best), 0.0));
  const double lambda = gw > 1e-10 * sqrt(scale) ? kappa / gw : 0.0;
  for (int k = 0; k < T; ++k) {
    w_star[k] = w_best[k];
    weights[k] = (1.0 / T + lambda * w_best[k]) / s_div;
  }
  return converged;
}

// ---------------------------------------------------------------------------
// Symmetric eigen-decomposition by cyclic Jacobi rotations: accurate to rounding
// relative to max|lambda| and simple enough to run in one GPU thread.
// Writes lambda (unsorted) and V (row-major, eigenvector k in column k).
// ---------------------------------------------------------------------------
FASTMTL_HD inline int64_t eig_work_doubles(int T) { return 3 * (int64_t)T * T + 6 * (int64_t)T; }

FASTMTL_HD inline bool jacobi_eigh(const double* G, int T, double* lambda, double* V, double* A,
                                   int max_sweeps) {
  for (int64_t e = 0; e < (int64_t)T * T; ++e) A[e] = G[e];
  for (int i = 0; i < T; ++i)
    for (int j = 0; j < T; ++j) V[(int64_t)i * T + j] = i == j ? 1.0 : 0.0;
  bool converged = T <= 1;
  for (int sweep = 0; sweep < max_sweeps && !converged; ++sweep) {
    double off = 0.0, diag = 0.0;
    for (int p = 0; p < T; ++p) {
      diag += A[(int64_t)p * T + p] * A[(int64_t)p * T + p];
      for (int q = p + 1; q < T; ++q) off += A[(int64_t)p * T + q] * A[(int64_t)p * T + q];
    }
    if (off <= 1e-32 * diag || off == 0.0) {
      converged = true;
      break;
    }
    for (int p = 0; p < T - 1; ++p) {
      for (int q = p + 1; q < T; ++q) {
        const double apq = A[(int64_t)p * T + q];
        if (apq == 0.0) continue;
        const double theta = (A[(int64_t)q * T + q] - A[(int64_t)p * T + p]) / (2.0 * apq);
        const double t = (theta >= 0.0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
        const double c = 1.0 / sqrt(t * t + 1.0), sn = t * c;
        for (int k = 0; k < T; ++k) {  // columns p, q
          const double akp = A[(int64_t)k * T + p], akq = A[(int64_t)k * T + q];
          A[(int64_t)k * T + p] = c * akp - sn * akq;
          A[(int64_t)k * T + q] = sn * akp + c * akq;
        }
        for (int k = 0; k < T; ++k) {  // rows p, q
          const double apk = A[(int64_t)p * T + k], aqk = A[(int64_t)q * T + k];
          A[(int64_t)p * T + k] = c * apk - sn * aqk;
          A[(int64_t)q * T + k] = sn * apk + c * aqk;
        }
        A[(int64_t)p * T + q] = A[(int64_t)q * T + p] = 0.0;
        for (int k = 0; k < T; ++k) {
          const double vkp = V[(int64_t)k * T + p], vkq = V[(int64_t)k * T + q];
          V[(int64_t)k * T + p] = c * vkp - sn * vkq;
          V[(int64_t)k * T + q] = sn * vkp + c * vkq;
        }
      }
    }
  }
  for (int k = 0; k < T; ++k) lambda[k] = A[(int64_t)k * T + k];
  return converged;
}

// ---------------------------------------------------------------------------
// Symmetric eigen-decomposition by Householder reduction to tridiagonal form followed by
// the implicit QL algorithm with Wilkinson-type shifts: O(T^3) with a small constant, the
// fast path for larger T. It is built from the three steps below, which Aligned-MTL also
// uses on their own (it needs the eigenvectors only applied to two vectors).
// ---------------------------------------------------------------------------

// Reduces the symmetric a (row-major, in place; its lower triangle is read) to tridiagonal
// form Q^T a Q with Q = H_{T-1} ... H_1, H_i = I - u_i u_i^T / h_i acting on coordinates
// [0, i). Afterwards row i of a holds u_i in [0, i), a(i, i) the diagonal entry, h[i] the
// scalar h_i (0: no reflection) and e[k] the entry coupling k and k + 1 (e[T - 1] = 0,
// as implicit_ql takes it). With
// store_scaled, a(j, i) = u_i[j] / h_i above the diagonal, for householder_accumulate.
FASTMTL_HD inline void householder_tridiagonal(double* a, int T, double* h, double* e,
                                               bool store_scaled) {
#define FASTMTL_A(i, j) a[(int64_t)(i) * T + (j)]
  for (int i = T - 1; i > 0; --i) {
    const int l = i - 1;
    double hi = 0.0;
    if (l > 0) {
      double scale = 0.0;
      for (int k = 0; k <= l; ++k) scale += fabs(FASTMTL_A(i, k));
      if (scale == 0.0) {
        e[i] = FASTMTL_A(i, l);
      } else {
        for (int k = 0; k <= l; ++k) {
          FASTMTL_A(i, k) /= scale;
          hi += FASTMTL_A(i, k) * FASTMTL_A(i, k);
        }
        double f = FASTMTL_A(i, l);
        double g = f >= 0.0 ? -sqrt(hi) : sqrt(hi);
        e[i] = scale * g;
        hi -= f * g;
        FASTMTL_A(i, l) = f - g;
        // e = B x / h, with B the symmetric leading block (its lower triangle is stored)
        // and x = row i; by rows, so that every access is contiguous and vectorises: row j
        // adds B[j][k] x[k] to e[j] (a dot product) and B[j][k] x[j] to e[k] (an axpy),
        // k < j. Four rows at a time: their dot products run together (dots_4x1; one
        // running sum chained T^3 / 6 multiply-adds) and share one axpy pass over e.
        const double* x = &FASTMTL_A(i, 0);
        for (int j = 0; j <= l; ++j) {
          if (store_scaled) FASTMTL_A(j, i) = x[j] / hi;
          e[j] = 0.0;
        }
        const int blocked = (l + 1) / 4 * 4;
        for (int j = 0; j < blocked; j += 4) {
          const double* rows[4] = {&FASTMTL_A(j, 0), &FASTMTL_A(j + 1, 0), &FASTMTL_A(j + 2, 0),
                                   &FASTMTL_A(j + 3, 0)};
          const double x0 = x[j], x1 = x[j + 1], x2 = x[j + 2], x3 = x[j + 3];
          double dots[4];
          dots_4x1(rows, x, j, dots);
          for (int k = 0; k < j; ++k)
            e[k] += (rows[0][k] * x0 + rows[1][k] * x1) + (rows[2][k] * x2 + rows[3][k] * x3);
          for (int q = 0; q < 4; ++q) {  // the block's own lower triangle
            double sum = dots[q];
            for (int c = 0; c < q; ++c) {
              sum += rows[q][j + c] * x[j + c];
              e[j + c] += rows[q][j + c] * x[j + q];
            }
            e[j + q] += sum + rows[q][j + q] * x[j + q];
          }
        }
        for (int j = blocked; j <= l; ++j) {
          const double* row = &FASTMTL_A(j, 0);
          const double xj = x[j];
          const double dot_j = dot(row, x, j);
          for (int k = 0; k < j; ++k) e[k] += row[k] * xj;
          e[j] += dot_j + row[j] * xj;
        }
        f = 0.0;
        for (int j = 0; j <= l; ++j) {
          e[j] /= hi;
          f += e[j] * x[j];
        }
        const double hh = f / (hi + hi);
        for (int j = 0; j <= l; ++j) {
          f = FASTMTL_A(i, j);
          e[j] = g = e[j] - hh * f;
          for (int k = 0; k <= j; ++k) FASTMTL_A(j, k) -= f * e[k] + g * FASTMTL_A(i, k);
        }
      }
    } else {
      e[i] = FASTMTL_A(i, l);
    }
    h[i] = hi;
  }
  if (T > 0) h[0] = 0.0;
  for (int i = 1; i < T; ++i) e[i - 1] = e[i];  // e[i] coupled i - 1 and i above
  if (T > 0) e[T - 1] = 0.0;
}

// Overwrites a (reduced with store_scaled) with Q and writes the diagonal into d; h may
// be d (each h[i] is read before d[i] is written). g: T doubles of scratch.
FASTMTL_HD inline void householder_accumulate(double* a, int T, const double* h, double* d,
                                              double* g) {
  for (int i = 0; i < T; ++i) {
    if (h[i] != 0.0) {
      // g = row i times the leading i x i block, then that block -= column i times g;
      // row by row (contiguous), the same sums as column by column
      for (int j = 0; j < i; ++j) g[j] = 0.0;
      for (int k = 0; k < i; ++k) {
        const double aik = FASTMTL_A(i, k);
        const double* row = &FASTMTL_A(k, 0);
        for (int j = 0; j < i; ++j) g[j] += aik * row[j];
      }
      for (int k = 0; k < i; ++k) {
        const double aki = FASTMTL_A(k, i);
        double* row = &FASTMTL_A(k, 0);
        for (int j = 0; j < i; ++j) row[j] -= g[j] * aki;
      }
    }
    d[i] = FASTMTL_A(i, i);
    FASTMTL_A(i, i) = 1.0;
    for (int j = 0; j < i; ++j) FASTMTL_A(j, i) = FASTMTL_A(i, j) = 0.0;
  }
}
#undef FASTMTL_A

// y <- Q y, or Q^T y with transpose, from the reflections householder_tridiagonal left
// in a and h: O(T^2), without forming Q.
FASTMTL_HD inline void householder_apply(const double* a, const double* h, int T, double* y,
                                         bool transpose) {
  for (int n = 1; n < T; ++n) {
    const int i = transpose ? T - n : n;
    if (h[i] == 0.0) continue;
    const double* u = a + (int64_t)i * T;
    const double s = dot(u, y, i) / h[i];
    for (int k = 0; k < i; ++k) y[k] -= s * u[k];
  }
}

// The Givens rotations of an implicit QL run, in order: rotation n mixes entries
// row[n] and row[n] + 1 with (c[n], s[n]).
struct GivensLog {
  double* c;
  double* s;
  double* row;
  int64_t capacity;
  int64_t count;
};

// sqrt(a^2 + b^2) without hypot's cost (a libm call that guards every input; it took a
// third of Aligned-MTL's time at T = 128): the direct form is within about an ulp while
// a^2 + b^2 neither overflows nor underflows, and hypot takes the rest.
FASTMTL_HD inline double safe_hypot(double a, double b) {
  const double s = a * a + b * b;
  return s < 1e300 && s > 1e-300 ? sqrt(s) : hypot(a, b);
}

// Implicit QL on the tridiagonal (d, e), e[k] coupling k and k + 1 (e[T - 1] = 0): d ends
// holding the eigenvalues (unsorted). Each rotation is applied to the rows of Z (T x T,
// row-major; rows i, i + 1) and to the entries of y, each of which may be null, and
// appended to log (if not null). False if an eigenvalue needed over 60 QL steps or the
// log is full.
FASTMTL_HD inline bool implicit_ql(double* d, double* e, int T, double* Z, double* y,
                                   GivensLog* log) {
  for (int l = 0; l < T; ++l) {
    int iter = 0, m;
    do {
      for (m = l; m < T - 1; ++m) {
        const double dd = fabs(d[m]) + fabs(d[m + 1]);
        if (fabs(e[m]) <= kEps64 * dd) break;
      }
      if (m != l) {
        if (iter++ == 60) return false;
        double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
        double r = safe_hypot(g, 1.0);
        g = d[m] - d[l] + e[l] / (g + (g >= 0.0 ? fabs(r) : -fabs(r)));
        double sn = 1.0, c = 1.0, p = 0.0;
        int i = m - 1;
        for (; i >= l; --i) {
          double f = sn * e[i];
          const double b = c * e[i];
          e[i + 1] = (r = safe_hypot(f, g));
          if (r == 0.0) {
            d[i + 1] -= p;
            e[m] = 0.0;
            break;
          }
          sn = f / r;
          c = g / r;
          g = d[i + 1] - p;
          r = (d[i] - g) * sn + 2.0 * c * b;
          d[i + 1] = g + (p = sn * r);
          g = c * r - b;
          if (Z != nullptr) {  // rotate rows i, i + 1
            double* zi = Z + (int64_t)i * T;
            double* zi1 = zi + T;
            for (int k = 0; k < T; ++k) {
              f = zi1[k];
              zi1[k] = sn * zi[k] + c * f;
              zi[k] = c * zi[k] - sn * f;
            }
          }
          if (y != nullptr) {
            f = y[i + 1];
            y[i + 1] = sn * y[i] + c * f;
            y[i] = c * y[i] - sn * f;
          }
          if (log != nullptr) {
            if (log->count == log->capacity) return false;
            log->c[log->count] = c;
            log->s[log->count] = sn;
            log->row[log->count++] = i;
          }
        }
        if (r == 0.0 && i >= l) continue;
        d[l] -= p;
        e[l] = g;
        e[m] = 0.0;
      }
    } while (m != l);
  }
  return true;
}

// The eigen-decomposition: lambda (unsorted) and V (row-major, eigenvector k in column k).
// A (T x T) and e (T) are scratch; V is scratch until the end. With vectors=false only the
// eigenvalues are computed (A is not touched): no accumulation of Q and no rotations of
// eigenvectors, about a third of the work. False if an eigenvalue needed over 60 QL steps.
FASTMTL_HD inline bool tridiag_ql_eigh(const double* G, int T, double* lambda, double* V,
                                       double* A, double* e, bool vectors = true) {
  double* a = V;  // Householder reduction in place in V, then Q^T into A (row k = column k)
  double* d = lambda;
  for (int64_t k = 0; k < (int64_t)T * T; ++k) a[k] = G[k];
  householder_tridiagonal(a, T, d, e, vectors);
  if (vectors) {
    householder_accumulate(a, T, d, d, A);
    for (int i = 0; i < T; ++i)
      for (int k = 0; k < T; ++k) A[(int64_t)k * T + i] = a[(int64_t)i * T + k];
  } else {
    for (int i = 0; i < T; ++i) d[i] = a[(int64_t)i * T + i];
  }
  const bool ok = implicit_ql(d, e, T, vectors ? A : nullptr, nullptr, nullptr);
  for (int i = 0; i < T && vectors && ok; ++i)
    for (int k = 0; k < T; ++k) V[(int64_t)k * T + i] = A[(int64_t)i * T + k];
  return ok;
}

// The eigen-decomposition the solvers use: tridiagonal QL, with Jacobi as a fallback in the
// (never observed) case that QL runs out of iterations. A: T x T scratch, e: T scratch.
FASTMTL_HD inline void symmetric_eigh(const double* G, int T, double* lambda, double* V,
                                      double* A, double* e) {
  if (!tridiag_ql_eigh(G, T, lambda, V, A, e)) jacobi_eigh(G, T, lambda, V, A, 100);
}

// x = M^+ y from an eigen-decomposition, keeping lambda_k > cutoff (others are the
// null space and rounding noise of a positive semi-definite M).
FASTMTL_HD inline void eig_pinv_apply(const double* lambda, const double* V, int T, double cutoff,
                                      const double* y, double* x, double* tmp) {
  for (int k = 0; k < T; ++k) {
    double proj = 0.0;
    for (int i = 0; i < T; ++i) proj += V[(int64_t)i * T + k] * y[i];
    tmp[k] = lambda[k] > cutoff ? proj / lambda[k] : 0.0;
  }
  for (int i = 0; i < T; ++i) x[i] = dot(V + (int64_t)i * T, tmp, T);
}

FASTMTL_HD inline double max_abs(const double* v, int T) {
  double m = 0.0;
  for (int k = 0; k < T; ++k) m = fmax(m, fabs(v[k]));
  return m;
}

// The Cholesky factor is upper, M - shift I = U^T U with U row-major: row j of U is
// column j of the lower factor, so a panel of four rows of U is updated by contiguous
// vectors of the rows above it (axpy form, no horizontal sums).
//
// A row stride of T = 64 k doubles maps a column of U onto few cache sets, and the update
// walks U down its columns; cholesky_ld pads such T by a cache line (the factor at
// T = 128: 26 -> 22 us, what T = 130 took unpadded).
FASTMTL_HD inline int cholesky_ld(int T) { return T % 64 == 0 ? T + 8 : T; }

// Update of panel rows j0 .. j0 + 3 (all below T) at column i by the rows of U above:
// U[j0 + r][i] = M[j0 + r][i] - sum_{k < j0} U[k][j0 + r] U[k][i].
FASTMTL_HD inline void cholesky_update_column(const double* M, double* U, int T, int ld, int j0,
                                              int i) {
  double v[4];
  for (int r = 0; r < 4; ++r) v[r] = M[(int64_t)(j0 + r) * T + i];
  for (int k = 0; k < j0; ++k) {
    const double* Uk = U + (int64_t)k * ld;
    for (int r = 0; r < 4; ++r) v[r] -= Uk[j0 + r] * Uk[i];
  }
  for (int r = 0; r < 4; ++r) U[(int64_t)(j0 + r) * ld + i] = v[r];
}

#if defined(__CUDA_ARCH__) || !defined(__GNUC__)
FASTMTL_HD inline void cholesky_update_panel(const double* M, double* U, int T, int ld, int j0) {
  for (int i = j0; i < T; ++i) cholesky_update_column(M, U, T, ld, j0, i);
}
#else
// Columns j0 .. T - 1, 2 kLanes at a time: each row above loads 2 vectors and broadcasts
// 4 entries for 8 multiply-adds into 8 independent sums.
FASTMTL_HD inline void cholesky_update_panel(const double* M, double* U, int T, int ld, int j0) {
  constexpr int W = 2 * kLanes;
  int i = j0;
  for (; i + W <= T; i += W) {
    lanes_t lo[4], hi[4];
    for (int r = 0; r < 4; ++r) {
      lo[r] = load_lanes(M + (int64_t)(j0 + r) * T + i);
      hi[r] = load_lanes(M + (int64_t)(j0 + r) * T + i + kLanes);
    }
    for (int k = 0; k < j0; ++k) {
      const double* Uk = U + (int64_t)k * ld;
      const lanes_t x0 = load_lanes(Uk + i), x1 = load_lanes(Uk + i + kLanes);
      for (int r = 0; r < 4; ++r) {
        const double b = Uk[j0 + r];
        lo[r] -= b * x0;
        hi[r] -= b * x1;
      }
    }
    for (int r = 0; r < 4; ++r) {
      __builtin_memcpy(U + (int64_t)(j0 + r) * ld + i, &lo[r], sizeof(lanes_t));
      __builtin_memcpy(U + (int64_t)(j0 + r) * ld + i + kLanes, &hi[r], sizeof(lanes_t));
    }
  }
  if (i + kLanes <= T) {  // one vector left: even and odd k in separate sums, 8 chains again
    lanes_t even[4], odd[4];
    for (int r = 0; r < 4; ++r) {
      even[r] = load_lanes(M + (int64_t)(j0 + r) * T + i);
      odd[r] = lanes_t{};
    }
    int k = 0;
    for (; k + 1 < j0; k += 2) {
      const double* Uk = U + (int64_t)k * ld;
      const double* Uk1 = Uk + ld;
      const lanes_t x0 = load_lanes(Uk + i), x1 = load_lanes(Uk1 + i);
      for (int r = 0; r < 4; ++r) {
        even[r] -= Uk[j0 + r] * x0;
        odd[r] -= Uk1[j0 + r] * x1;
      }
    }
    for (; k < j0; ++k) {
      const double* Uk = U + (int64_t)k * ld;
      const lanes_t x0 = load_lanes(Uk + i);
      for (int r = 0; r < 4; ++r) even[r] -= Uk[j0 + r] * x0;
    }
    for (int r = 0; r < 4; ++r) {
      const lanes_t v = even[r] + odd[r];
      __builtin_memcpy(U + (int64_t)(j0 + r) * ld + i, &v, sizeof(lanes_t));
    }
    i += kLanes;
  }
  for (; i < T; ++i) cholesky_update_column(M, U, T, ld, j0, i);
}
#endif

// Upper Cholesky factor U of M - shift I (T x T, row-major, M symmetric: of M only the
// upper triangle and the 4 x 4 diagonal blocks are read). U's rows are ld apart (ld >= T;
// U may be M when ld = T); its entries below the diagonal are left alone outside those
// blocks and are scratch inside them. False where a pivot is not positive. Panels of four
// rows: the update by the rows above (cholesky_update_panel, most of the work), the factor
// of the small diagonal block, then the panel's rows to its right solved against that
// block. inv: T doubles of scratch, the reciprocal pivots, so that the panel multiplies
// rather than divides.
FASTMTL_HD inline bool cholesky_factor(const double* M, int T, double shift, double* U, int ld,
                                       double* inv) {
  for (int j0 = 0; j0 < T; j0 += 4) {
    const int nb = T - j0 < 4 ? T - j0 : 4;
    if (nb == 4) {
      cholesky_update_panel(M, U, T, ld, j0);
    } else {  // the last, short panel: its diagonal block alone
      for (int r = 0; r < nb; ++r)
        for (int c = r; c < nb; ++c) {
          double v = M[(int64_t)(j0 + r) * T + j0 + c];
          for (int k = 0; k < j0; ++k) {
            const double* Uk = U + (int64_t)k * ld + j0;
            v -= Uk[r] * Uk[c];
          }
          U[(int64_t)(j0 + r) * ld + j0 + c] = v;
        }
    }
    double P[4][4];  // P[r][q] = U[j0 + q][j0 + r], the diagonal block's factor, transposed
    for (int r = 0; r < nb; ++r) {
      double* Ur = U + (int64_t)(j0 + r) * ld + j0;
      double d = Ur[r] - shift;
      for (int q = 0; q < r; ++q) d -= P[r][q] * P[r][q];
      if (!(d > 0.0)) return false;
      Ur[r] = sqrt(d);
      inv[j0 + r] = 1.0 / Ur[r];
      for (int c = r + 1; c < nb; ++c) {
        double v = Ur[c];
        for (int q = 0; q < r; ++q) v -= P[r][q] * P[c][q];
        Ur[c] = v * inv[j0 + r];
        P[c][r] = Ur[c];
      }
    }
    if (nb < 4) break;
    double* Ur[4] = {U + (int64_t)j0 * ld, U + (int64_t)(j0 + 1) * ld,
                     U + (int64_t)(j0 + 2) * ld, U + (int64_t)(j0 + 3) * ld};
    for (int i = j0 + 4; i < T; ++i) {  // P^T X = (updated rows), column by column
      const double x0 = Ur[0][i] * inv[j0];
      const double x1 = (Ur[1][i] - P[1][0] * x0) * inv[j0 + 1];
      const double x2 = (Ur[2][i] - P[2][0] * x0 - P[2][1] * x1) * inv[j0 + 2];
      const double x3 = (Ur[3][i] - P[3][0] * x0 - P[3][1] * x1 - P[3][2] * x2) * inv[j0 + 3];
      Ur[0][i] = x0;
      Ur[1][i] = x1;
      Ur[2][i] = x2;
      Ur[3][i] = x3;
    }
  }
  return true;
}

// Pointers to rows i0 .. i0 + 3 of the matrix M of T rows ld apart, the first of them
// repeated past row T - 1 (for blocks of four rows whose last block is shorter).
FASTMTL_HD inline void block_rows(const double* M, int T, int ld, int i0, const double** rows) {
  for (int a = 0; a < 4; ++a) rows[a] = M + (int64_t)(i0 + a < T ? i0 + a : i0) * ld;
}

// x = (U^T U)^{-1} y by two triangular solves (x may be y; U's rows ld apart), four rows
// of U at a time: U^T z = y in axpy form (a block's four rows update the rest in one
// pass), U x = z by dot products of a block's rows with the solved part, run together
// (dots_4x1).
FASTMTL_HD inline void cholesky_apply(const double* U, int T, int ld, const double* y,
                                      double* x) {
  if (x != y)
    for (int i = 0; i < T; ++i) x[i] = y[i];
  const double* Ub[4];
  for (int k0 = 0; k0 < T; k0 += 4) {
    const int nb = T - k0 < 4 ? T - k0 : 4;
    block_rows(U, T, ld, k0, Ub);
    for (int r = 0; r < nb; ++r) {
      x[k0 + r] /= Ub[r][k0 + r];
      for (int c = r + 1; c < nb; ++c) x[k0 + c] -= Ub[r][k0 + c] * x[k0 + r];
    }
    if (nb < 4) break;
    const double z0 = x[k0], z1 = x[k0 + 1], z2 = x[k0 + 2], z3 = x[k0 + 3];
    for (int i = k0 + 4; i < T; ++i)
      x[i] -= (Ub[0][i] * z0 + Ub[1][i] * z1) + (Ub[2][i] * z2 + Ub[3][i] * z3);
  }
  for (int q0 = (T - 1) / 4 * 4; q0 >= 0; q0 -= 4) {
    const int nb = T - q0 < 4 ? T - q0 : 4;
    block_rows(U, T, ld, q0, Ub);
    const double* tail[4];
    for (int r = 0; r < 4; ++r) tail[r] = Ub[r] + q0 + nb;
    double s[4];
    dots_4x1(tail, x + q0 + nb, T - q0 - nb, s);
    for (int r = nb - 1; r >= 0; --r) {
      double v = x[q0 + r] - s[r];
      for (int c = r + 1; c < nb; ++c) v -= Ub[r][q0 + c] * x[q0 + c];
      x[q0 + r] = v / Ub[r][q0 + r];
    }
  }
}

// x = M^{-1} y by iterative refinement on the factor U of M - shift I:
//   x <- x + (M - shift I)^{-1} (y - M x),
// whose error is multiplied by -rho, rho = shift / (lambda - shift), per step along each
// eigenvector of M (eigenvalue lambda). True once a correction is below a few ulps of x,
// or once the next one, predicted from the last two (dx_k^2 / dx_{k-1}), is; or once the
// corrections stop halving below 1e-8 |x| (the rounding floor). False when they stop
// halving above that (lambda_min near 2 shift, or a condition number beyond ~1e8, where a
// direct solve takes over).
// The prediction saves the step that would only confirm convergence. Per eigenvector the
// error left after step k is rho / (1 + rho) times dx_k, so accepting on the prediction
// leaves ||e||_2 <= rho / (1 + rho) sqrt(8 T eps) |x|_inf (dx_k^2 <= 4 eps |x| dx_{k-1} and
// dx_{k-1} < 2 |x|). A direct solve's error, cond_2(M) eps |x|, is at least
// rho / ((1 + rho) (T + 2)^2 sqrt(T)) |x| for this shift (||M||_1 <= sqrt(T) lambda_max):
// the bound stays below that for T up to about 250 (by 10x at T = 128), so larger T take
// the confirming step (one O(T^2) step against the O(T^3) factor).
// r and dx: T doubles of scratch each.
FASTMTL_HD inline bool refined_solve(const double* M, const double* U, int T, int ld,
                                     const double* y, double* x, double* r, double* dx) {
  for (int i = 0; i < T; ++i) x[i] = 0.0;
  double previous = INFINITY;
  for (int step = 0; step < 12; ++step) {
    if (step == 0) {
      cholesky_apply(U, T, ld, y, dx);  // the residual of x = 0
    } else {
      const double* Mi[4];
      for (int i0 = 0; i0 < T; i0 += 4) {
        block_rows(M, T, T, i0, Mi);
        double s[4];
        dots_4x1(Mi, x, T, s);
        for (int a = 0; a < 4 && i0 + a < T; ++a) r[i0 + a] = y[i0 + a] - s[a];
      }
      cholesky_apply(U, T, ld, r, dx);
    }
    double size = 0.0, change = 0.0;
    for (int i = 0; i < T; ++i) {
      x[i] += dx[i];
      size = fmax(size, fabs(x[i]));
      change = fmax(change, fabs(dx[i]));
    }
    if (change <= 4.0 * kEps64 * size) return true;
    // Corrections stop halving at the rounding floor (about cond(M) eps |x|, as good as a
    // direct solve), or when lambda_min is near 2 shift (they stay large); accept the first.
    if (!(change < 0.5 * previous)) return change <= 1e-8 * size;
    if (step > 0 && T <= 250 && (change / size) * (change / previous) <= 4.0 * kEps64)
      return true;
    previous = change;
  }
  return false;
}

// max_j sum_i |M_ij| (= ||M||_inf for symmetric M), summed down the columns so that each
// column's sum is its own chain and a row of M is one vectorisable pass; col: T doubles.
FASTMTL_HD inline double one_norm(const double* M, int T, double* col) {
  for (int j = 0; j < T; ++j) col[j] = 0.0;
  for (int i = 0; i < T; ++i)
    for (int j = 0; j < T; ++j) col[j] += fabs(M[(int64_t)i * T + j]);
  return max_abs(col, T);
}

// x = M^+ y for positive semi-definite M, keeping the eigenvalues above T eps max|lambda|
// (torch.linalg.pinv's rule).
//
// Fast path, a certificate that every eigenvalue is kept (then M^+ = M^{-1}): the factor
// of M - tau I with tau = (T + 2)^2 eps ||M||_inf (= ||M||_1, as M is symmetric). The
// computed factor is exact for M - tau I + E with ||E||_2 <= T gamma_{T+1} max_i M_ii
// (Cholesky's backward error), so its existence gives
// lambda_min(M) >= tau - ||E|| >= T eps ||M||_inf >= T eps lambda_max.
// x then comes by refinement on that factor (a few O(T^2) steps), or, if that stalls, by
// a Cholesky solve with M itself. Otherwise (rank-deficient or condition number beyond
// ~1 / ((T + 2)^2 eps)): the eigenvalues decide, then Cholesky when all are kept, else
// the eigenvectors. Cholesky pivots of M alone do not bound lambda_min, hence the shift.
FASTMTL_HD inline void psd_pinv_solve(const double* M, int T, const double* y, double* x,
                                      double* work) {
  double* lambda = work;
  double* V = lambda + T;
  double* A = V + (int64_t)T * T;
  double* tmp = A + (int64_t)T * T;
  if (T == 0) return;
  // The Cholesky paths: U (rows ld apart, T ld <= T^2 + 8 T doubles) over V and the start
  // of A; the reciprocal pivots in tmp after the refinement's T doubles (the callers leave
  // tmp 3 T doubles at least).
  const int ld = cholesky_ld(T);
  double* inv = tmp + T;
  const double tau = (double)(T + 2) * (T + 2) * kEps64 * one_norm(M, T, lambda);
  if (tau > 0.0 && cholesky_factor(M, T, tau, V, ld, inv)) {
    if (refined_solve(M, V, T, ld, y, x, lambda, tmp)) return;
    if (cholesky_factor(M, T, 0.0, V, ld, inv)) return cholesky_apply(V, T, ld, y, x);
  }
  if (tridiag_ql_eigh(M, T, lambda, V, A, tmp, /*vectors=*/false)) {
    double lmin = lambda[0];
    for (int k = 1; k < T; ++k) lmin = fmin(lmin, lambda[k]);
    if (lmin > T * kEps64 * max_abs(lambda, T) && cholesky_factor(M, T, 0.0, V, ld, inv))
      return cholesky_apply(V, T, ld, y, x);
  }
  symmetric_eigh(M, T, lambda, V, A, tmp);
  eig_pinv_apply(lambda, V, T, T * kEps64 * max_abs(lambda, T), y, x, tmp);
}

// ---------------------------------------------------------------------------
// IMTL-G (Liu et al. 2021): d = J^T w has equal projections on every unit gradient and
// sum(w) = 1, i.e. G w = mu n with n_i = ||g_i||: w = G^+ n / (1^T G^+ n). The pseudo-
// inverse keeps |lambda| > T eps max|lambda| (torch.linalg.pinv's default). Returns false
// (and w = 0) when 1^T G^+ n vanishes, where no such direction exists.
// ---------------------------------------------------------------------------
FASTMTL_HD inline bool imtlg_weights(const double* G, int T, double* w, double* work) {
  double* n = work;
  for (int i = 0; i < T; ++i) n[i] = sqrt(fmax(G[(int64_t)i * T + i], 0.0));
  psd_pinv_solve(G, T, n, w, n + T);
  double total = 0.0, size = 0.0;
  for (int i = 0; i < T; ++i) {
    total += w[i];
    size += fabs(w[i]);
  }
  if (!(fabs(total) > 1e-12 * size) || !(size > 0.0)) {
    for (int i = 0; i < T; ++i) w[i] = 0.0;
    return false;
  }
  for (int i = 0; i < T; ++i) w[i] /= total;
  return true;
}

// ---------------------------------------------------------------------------
// Aligned-MTL (Senushkin et al. 2023): G = V diag(lambda) V^T; keep lambda > lambda_max T
// rank_eps; B = sqrt(sigma) V diag(lambda^-1/2) V^T over the kept ones, with sigma the
// smallest (mode 0), lower median (1) or mean (2) kept eigenvalue; w = B 1.
//
// V is never formed: with G = Q Tri Q^T (Householder) and Tri = Z Lambda Z^T (implicit QL,
// Z the product of its Givens rotations), w = Q Z c with c_k = f(lambda_k) (Z^T Q^T 1)_k.
// Q^T 1 and Q z take O(T^2) from the reflections; Z^T y is y rotated along with the QL
// run, and Z c is c rotated back through the logged rotations in reverse. That saves the
// accumulation of Q and the rotation of T-long eigenvector rows, most of the work. When
// the log overflows (or QL stalls), the full eigen-decomposition is used instead.
// Returns the rank kept.
// ---------------------------------------------------------------------------
// Rotations a QL run logs: 1.0 - 1.7 T^2 were counted at T = 40 and 128 (full rank, rank
// 1 - 100, near-identity); beyond the capacity the explicit eigen path takes over.
FASTMTL_HD inline int64_t aligned_mtl_log_capacity(int T) { return 2 * (int64_t)T * T + 64; }

FASTMTL_HD inline int64_t aligned_mtl_work_doubles(int T) {
  const int64_t fast = (int64_t)T * T + 5 * (int64_t)T + 3 * aligned_mtl_log_capacity(T);
  return fast > eig_work_doubles(T) ? fast : eig_work_doubles(T);
}

// Moves v[root] down into the max-heap v[0 .. end).
FASTMTL_HD inline void sift_down(double* v, int root, int end) {
  for (int child = 2 * root + 1; child < end; child = 2 * root + 1) {
    if (child + 1 < end && v[child + 1] > v[child]) ++child;
    if (!(v[child] > v[root])) return;
    const double t = v[root];
    v[root] = v[child];
    v[child] = t;
    root = child;
  }
}

// Sorts v[0 .. n) ascending in place, in O(n log n) without recursion (an insertion sort
// here took 5% of Aligned-MTL's time at T = 128).
FASTMTL_HD inline void heap_sort(double* v, int n) {
  for (int root = n / 2 - 1; root >= 0; --root) sift_down(v, root, n);
  for (int end = n - 1; end > 0; --end) {
    const double t = v[0];
    v[0] = v[end];
    v[end] = t;
    sift_down(v, 0, end);
  }
}

// sqrt(sigma) for the kept eigenvalues (lambda > cutoff, > 0); kept: T doubles of scratch.
// Writes the cutoff and returns the rank (0: sigma undefined).
FASTMTL_HD inline int aligned_mtl_scale(const double* lambda, int T, int scale_mode,
                                        double rank_eps, double* kept, double* cutoff,
                                        double* root_sigma) {
  double lmax = 0.0;
  for (int k = 0; k < T; ++k) lmax = fmax(lmax, lambda[k]);
  *cutoff = lmax * T * rank_eps;
  int rank = 0;
  for (int k = 0; k < T; ++k)
    if (lambda[k] > *cutoff && lambda[k] > 0.0) kept[rank++] = lambda[k];
  if (rank == 0) return 0;
  double sigma = kept[0];
  if (scale_mode == 0) {
    for (int k = 1; k < rank; ++k) sigma = fmin(sigma, kept[k]);
  } else if (scale_mode == 1) {
    heap_sort(kept, rank);
    sigma = kept[(rank - 1) / 2];  // torch.median: the lower of the two middle values
  } else {
    sigma = 0.0;
    for (int k = 0; k < rank; ++k) sigma += kept[k];
    sigma /= rank;
  }
  *root_sigma = sqrt(sigma);
  return rank;
}

// The same weights from the explicit eigenvectors (workspace: eig_work_doubles).
FASTMTL_HD inline int aligned_mtl_weights_eigh(const double* G, int T, int scale_mode,
                                               double rank_eps, double* w, double* work) {
  double* lambda = work;
  double* V = lambda + T;
  double* A = V + (int64_t)T * T;
  double* kept = A + (int64_t)T * T;
  symmetric_eigh(G, T, lambda, V, A, kept);
  double cutoff = 0.0, root_sigma = 0.0;
  const int rank = aligned_mtl_scale(lambda, T, scale_mode, rank_eps, kept, &cutoff, &root_sigma);
  for (int i = 0; i < T; ++i) w[i] = 0.0;
  if (rank == 0) return 0;
  for (int k = 0; k < T; ++k) {
    if (!(lambda[k] > cutoff && lambda[k] > 0.0)) continue;
    double v1 = 0.0;
    for (int i = 0; i < T; ++i) v1 += V[(int64_t)i * T + k];
    const double coef = root_sigma * v1 / sqrt(lambda[k]);
    for (int i = 0; i < T; ++i) w[i] += coef * V[(int64_t)i * T + k];
  }
  return rank;
}

// workspace: aligned_mtl_work_doubles(T)
FASTMTL_HD inline int aligned_mtl_weights(const double* G, int T, int scale_mode, double rank_eps,
                                          double* w, double* work) {
  double* a = work;
  double* h = a + (int64_t)T * T;
  double* d = h + T;
  double* e = d + T;
  double* y = e + T;
  double* kept = y + T;
  GivensLog log{kept + T, kept + T + aligned_mtl_log_capacity(T),
                kept + T + 2 * aligned_mtl_log_capacity(T), aligned_mtl_log_capacity(T), 0};
  for (int64_t k = 0; k < (int64_t)T * T; ++k) a[k] = G[k];
  householder_tridiagonal(a, T, h, e, /*store_scaled=*/false);
  for (int i = 0; i < T; ++i) {
    d[i] = a[(int64_t)i * T + i];
    y[i] = 1.0;
  }
  householder_apply(a, h, T, y, /*transpose=*/true);  // Q^T 1
  if (!implicit_ql(d, e, T, nullptr, y, &log))         // y = Z^T Q^T 1 = V^T 1
    return aligned_mtl_weights_eigh(G, T, scale_mode, rank_eps, w, work);
  double cutoff = 0.0, root_sigma = 0.0;
  const int rank = aligned_mtl_scale(d, T, scale_mode, rank_eps, kept, &cutoff, &root_sigma);
  for (int k = 0; k < T; ++k)
    w[k] = rank > 0 && d[k] > cutoff && d[k] > 0.0 ? root_sigma * y[k] / sqrt(d[k]) : 0.0;
  if (rank == 0) return 0;
  // w <- Z w: the rotations transposed, in reverse. Within a QL sweep, reversed, rotation
  // n + 1 acts on the entry rotation n just wrote (rows i, i + 1 then i + 1, i + 2): that
  // entry is carried in a register rather than reloaded, which shortens the chain.
  double carry = 0.0;
  int previous = -2;
  for (int64_t n = log.count - 1; n >= 0; --n) {
    const int i = (int)log.row[n];
    const double c = log.c[n], sn = log.s[n];
    const double wi = i == previous + 1 ? carry : w[i], wi1 = w[i + 1];
    w[i] = c * wi + sn * wi1;
    carry = c * wi1 - sn * wi;
    w[i + 1] = carry;
    previous = i;
  }
  householder_apply(a, h, T, w, /*transpose=*/false);  // Q (Z c)
  return rank;
}

// ---------------------------------------------------------------------------
// ConFIG (Liu et al. 2025): u_i = g_i / ||g_i|| (0 for a zero row), b = U^+ 1, e = b/||b||,
// d = (sum_i g_i . e) e. With Gn = U U^T, b = U^T c for c = Gn^+ 1, so
// w_j = (sum_i g_i . b) / ||b||^2 * c_j / ||g_j||. Returns false (w = 0) when b = 0.
// ---------------------------------------------------------------------------
FASTMTL_HD inline bool config_weights(const double* G, int T, double* w, double* work) {
  double* Gn = work;
  double* n = Gn + (int64_t)T * T;
  double* ones = n + T;
  double* c = w;
  for (int i = 0; i < T; ++i) {
    n[i] = sqrt(fmax(G[(int64_t)i * T + i], 0.0));
    ones[i] = n[i] > 0.0 ? 1.0 : 0.0;
  }
  for (int i = 0; i < T; ++i)
    for (int j = 0; j < T; ++j)
      Gn[(int64_t)i * T + j] = n[i] > 0.0 && n[j] > 0.0 ? G[(int64_t)i * T + j] / (n[i] * n[j]) : 0.0;
  psd_pinv_solve(Gn, T, ones, c, ones + T);
  // ||b||^2 = c^T Gn c; g_i . b = sum_j G_ij c_j / n_j
  double bb = 0.0, gb = 0.0;
  for (int i = 0; i < T; ++i) bb += c[i] * dot(Gn + (int64_t)i * T, c, T);
  for (int j = 0; j < T; ++j) {
    if (!(n[j] > 0.0)) continue;
    double col = 0.0;
    for (int i = 0; i < T; ++i) col += G[(int64_t)i * T + j];
    gb += col * c[j] / n[j];
  }
  // 1^T Gn^+ 1 = 0 exactly when 1 is orthogonal to the gradients' span (e.g. opposite unit
  // gradients); rounding leaves ~(T eps)^2 there, whose direction would be pure noise.
  if (!(bb > 1e-20)) {
    for (int j = 0; j < T; ++j) w[j] = 0.0;
    return false;
  }
  for (int j = 0; j < T; ++j) w[j] = n[j] > 0.0 ? gb / bb * c[j] / n[j] : 0.0;
  return true;
}

// ---------------------------------------------------------------------------
// GradVac (Wang et al. 2021) as coefficients, like PCGrad: for task i, p = g_i; for j in
// order[i] (j != i): rho = p.g_j / (||p|| ||g_j|| + eps); if rho < rho_hat[i, j],
//   p += g_j ||p|| (rho_hat sqrt(1 - rho^2) - rho sqrt(1 - rho_hat^2))
//        / (||g_j|| sqrt(1 - rho_hat^2) + eps);
// then rho_hat[i, j] = (1 - beta) rho_hat[i, j] + beta rho (rho from before the step).
// ||p||^2 is carried along: p + a g_j has norm^2 ||p||^2 + 2 a p.g_j + a^2 ||g_j||^2.
// ---------------------------------------------------------------------------
FASTMTL_HD inline void gradvac_coefficients(const double* G, int T, const int64_t* order,
                                            double* rho_hat, double beta, double eps,
                                            double* C) {
  for (int i = 0; i < T; ++i) {
    double* c = C + (int64_t)i * T;
    for (int m = 0; m < T; ++m) c[m] = 0.0;
    c[i] = 1.0;
    double pp = G[(int64_t)i * T + i];
    const int64_t* visit = order + (int64_t)i * T;
    for (int k = 0; k < T; ++k) {
      const int j = (int)visit[k];
      if (j < 0 || j >= T || j == i) continue;
      const double* gj = G + (int64_t)j * T;
      const double pg = dot(c, gj, T);
      const double gjj = fmax(gj[j], 0.0);
      const double np = sqrt(fmax(pp, 0.0)), nj = sqrt(gjj);
      const double r = pg / (np * nj + eps);
      double* target = rho_hat + (int64_t)i * T + j;
      const double rh = *target;
      if (r < rh) {
        const double a = np * (rh * sqrt(fmax(1.0 - r * r, 0.0)) - r * sqrt(fmax(1.0 - rh * rh, 0.0))) /
                         (nj * sqrt(fmax(1.0 - rh * rh, 0.0)) + eps);
        c[j] += a;
        pp += 2.0 * a * pg + a * a * gjj;
      }
      *target = (1.0 - beta) * rh + beta * r;
    }
  }
}

}  // namespace FASTMTL_SOLVERS_NS
}  // namespace fastmtl
