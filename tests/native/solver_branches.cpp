// The header solvers compiled twice on the host: once as the CPU ops build them (vector
// lanes) and once through their generic branch, the one CUDA threads run (selected by
// __CUDA_ARCH__). Both solve the same Gram matrices; the program prints, per solver, the
// largest difference of the two relative to the largest weight, as "name value" lines.
// tests/test_solver_branches.py compiles and runs it, so the device branch's arithmetic
// is checked on machines without a GPU.
#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#define FASTMTL_HD
#define FASTMTL_SOLVERS_NS vector_branch
#include "fastmtl/solvers_impl.h"
#include "fastmtl/solvers_nash_qp.h"
#undef FASTMTL_SOLVERS_NS
#define __CUDA_ARCH__ 800
#define FASTMTL_SOLVERS_NS generic_branch
#include "fastmtl/solvers_impl.h"
#include "fastmtl/solvers_nash_qp.h"
#undef FASTMTL_SOLVERS_NS

namespace vb = fastmtl::vector_branch;
namespace gb = fastmtl::generic_branch;

// G = J J^T for T mixed conflicting / aligned gradients of P entries
static std::vector<double> gram(int T, int P, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform(-1.0, 2.0);
  std::vector<double> z(P), J((size_t)T * P), G((size_t)T * T);
  for (double& v : z) v = normal(rng);
  for (int i = 0; i < T; ++i) {
    const double a = uniform(rng), s = exp(0.5 * normal(rng));
    for (int k = 0; k < P; ++k) J[(size_t)i * P + k] = s * (a * z[k] + normal(rng));
  }
  for (int i = 0; i < T; ++i)
    for (int j = 0; j < T; ++j) {
      double s = 0.0;
      for (int k = 0; k < P; ++k) s += J[(size_t)i * P + k] * J[(size_t)j * P + k];
      G[(size_t)i * T + j] = s;
    }
  return G;
}

static double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0.0, size = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = fmax(diff, fabs(a[i] - b[i]));
    size = fmax(size, fabs(a[i]));
  }
  return size > 0.0 ? diff / size : diff;
}

int main() {
  std::map<std::string, double> worst;
  const auto record = [&](const std::string& name, const std::vector<double>& a,
                          const std::vector<double>& b) {
    const double d = relative_difference(a, b);
    if (!(d <= worst[name])) worst[name] = d;  // NaN sticks
  };
  for (int T : {1, 2, 3, 4, 5, 7, 8, 13, 37, 64, 65, 128}) {
    for (int P : {T + 5, 3 * T / 4 + 1}) {  // full rank, and rank deficient for T > 4
      const std::vector<double> G = gram(T, P, 1000u * T + P);
      const int64_t doubles = vb::aligned_mtl_work_doubles(T) + vb::nash_work_doubles(T) + 16 * T;
      std::vector<double> work(doubles), a(T), b(T);
      vb::imtlg_weights(G.data(), T, a.data(), work.data());
      gb::imtlg_weights(G.data(), T, b.data(), work.data());
      record("imtlg", a, b);
      vb::config_weights(G.data(), T, a.data(), work.data());
      gb::config_weights(G.data(), T, b.data(), work.data());
      record("config", a, b);
      for (int mode = 0; mode < 3; ++mode) {
        vb::aligned_mtl_weights(G.data(), T, mode, 1e-7, a.data(), work.data());
        gb::aligned_mtl_weights(G.data(), T, mode, 1e-7, b.data(), work.data());
        record("alignedmtl", a, b);
      }
      if (P > T) {  // the Nash point exists for full-rank G
        double ra = 0.0, rb = 0.0;
        vb::nash_weights(G.data(), T, a.data(), &ra, work.data(), 100, 1e-12);
        gb::nash_weights(G.data(), T, b.data(), &rb, work.data(), 100, 1e-12);
        record("nashmtl", a, b);
      }
      std::vector<double> V((size_t)T * T), A((size_t)T * T), e(T);
      vb::symmetric_eigh(G.data(), T, a.data(), V.data(), A.data(), e.data());
      gb::symmetric_eigh(G.data(), T, b.data(), V.data(), A.data(), e.data());
      std::sort(a.begin(), a.end());  // unsorted as returned
      std::sort(b.begin(), b.end());
      record("eigenvalues", a, b);
    }
  }
  for (const auto& [name, value] : worst) printf("%s %.3e\n", name.c_str(), value);
  return 0;
}
