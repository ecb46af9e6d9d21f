// Argument checks of the Feature Disentanglement op, shared by its CPU and CUDA bodies.
#pragma once

#include "ops_common.h"

namespace fastmtl {

// reduce: 0 the per-element map [N], 1 the mean over used elements, 2 the saliency-weighted
// mean (see fastmtl/reference.py for the definition).
inline void check_fd_args(const at::Tensor& grads, double temperature, int64_t reduce) {
  check_matrix(grads, "grads");
  TORCH_CHECK_VALUE(grads.size(0) >= 2, "grads must hold T >= 2 task gradients, got T = ",
                    grads.size(0));
  TORCH_CHECK_VALUE(temperature >= 0.0 && temperature < INFINITY,
                    "temperature must be finite and >= 0, got ", temperature);
  TORCH_CHECK_VALUE(reduce >= 0 && reduce <= 2,
                    "reduce must be 0 (none), 1 (mean) or 2 (weighted), got ", reduce);
}

// Partial sums of the scalar reductions: [sum H, count, sum s H, sum s] per chunk.
constexpr int kFdSums = 4;

}  // namespace fastmtl
