// Argument checks of the GradDrop op, shared by its CPU and CUDA bodies.
#pragma once

#include <c10/util/Optional.h>

#include "ops_common.h"

namespace fastmtl {

// J [T, N] (unit stride along N), leak float64 [T], seed int64 [2] (the Philox key), all on
// one device. purity, if given, is [T, D] with N = B * D: the signs and purity of element
// n = b * D + d come from column d of purity (GradDrop's batch-separated rule); otherwise
// from J itself (D = N). Returns D.
inline int64_t check_graddrop_args(const at::Tensor& J, const at::Tensor& leak,
                                   const at::Tensor& seed,
                                   const c10::optional<at::Tensor>& purity, int64_t stream) {
  check_matrix(J, "J");
  const int64_t T = J.size(0), N = J.size(1);
  TORCH_CHECK_VALUE(leak.dim() == 1 && leak.size(0) == T, "leak must have shape [T] = [", T,
                    "], got ", leak.sizes());
  TORCH_CHECK_TYPE(leak.scalar_type() == at::kDouble, "leak must be float64, got ",
                   leak.scalar_type());
  TORCH_CHECK_VALUE(seed.dim() == 1 && seed.size(0) == 2, "seed must have shape [2], got ",
                    seed.sizes());
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "seed must be int64, got ",
                   seed.scalar_type());
  TORCH_CHECK_VALUE(leak.device() == J.device() && seed.device() == J.device(),
                    "leak and seed must be on J's device ", J.device());
  TORCH_CHECK_VALUE(stream >= 0 && stream <= 0xffffffffLL,
                    "stream must be in [0, 2^32), got ", stream);
  if (!purity.has_value()) return N;
  const at::Tensor& S = *purity;
  check_matrix(S, "purity");
  TORCH_CHECK_VALUE(S.size(0) == T, "purity must have T = ", T, " rows, got ", S.size(0));
  TORCH_CHECK_TYPE(S.scalar_type() == J.scalar_type(), "purity must have J's dtype ",
                   J.scalar_type(), ", got ", S.scalar_type());
  TORCH_CHECK_VALUE(S.device() == J.device(), "purity must be on J's device ", J.device());
  const int64_t D = S.size(1);
  TORCH_CHECK_VALUE(D >= 1 && N % D == 0, "purity's ", D,
                    " columns must divide J's N = ", N, " (N = batch * D)");
  return D;
}

}  // namespace fastmtl
