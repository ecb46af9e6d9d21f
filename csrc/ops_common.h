// Input checks and shape helpers shared by the CPU and CUDA op bodies.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

namespace fastmtl {

// J must be [T, P] with unit stride along P; rows may be strided (views of a larger buffer).
inline void check_matrix(const at::Tensor& J, const char* name) {
  TORCH_CHECK_VALUE(J.dim() == 2, name, " must be 2-D [T, P], got ", J.dim(), "-D");
  TORCH_CHECK_VALUE(J.size(0) >= 1, name, " must have at least one row (T >= 1)");
  TORCH_CHECK_VALUE(J.size(1) <= 1 || J.stride(1) == 1, name,
                    " must be contiguous along its last dimension");
  TORCH_CHECK_TYPE(at::isFloatingType(J.scalar_type()), name,
                   " must be float16, bfloat16, float32 or float64, got ", J.scalar_type());
}

inline void check_weights(const at::Tensor& w, const at::Tensor& J) {
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == J.size(0), "w must have shape [T] = [",
                    J.size(0), "], got ", w.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), "w must be floating point, got ",
                   w.scalar_type());
  TORCH_CHECK_VALUE(w.device() == J.device(), "w and J must be on the same device, got ",
                    w.device(), " and ", J.device());
}

inline void check_out(const at::Tensor& out, const at::Tensor& J) {
  TORCH_CHECK_VALUE(out.numel() == J.size(1), "out must have P = ", J.size(1),
                    " elements, got ", out.numel());
  TORCH_CHECK_TYPE(out.scalar_type() == J.scalar_type(), "out must have dtype ",
                   J.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == J.device(), "out must be on ", J.device(), ", got ",
                    out.device());
  TORCH_CHECK_VALUE(out.is_contiguous(), "out must be contiguous");
}

// Batched square float64 matrices [..., T, T].
inline int64_t check_gram_batch(const at::Tensor& G, const char* name) {
  TORCH_CHECK_VALUE(G.dim() >= 2 && G.size(-1) == G.size(-2) && G.size(-1) >= 1, name,
                    " must be [..., T, T] with T >= 1, got ", G.sizes());
  TORCH_CHECK_TYPE(G.scalar_type() == at::kDouble, name, " must be float64, got ",
                   G.scalar_type());
  return G.size(-1);
}

// Per-task visiting orders of PCGrad and GradVac: int64 of G's shape.
inline void check_order(const at::Tensor& order, const at::Tensor& G) {
  TORCH_CHECK_VALUE(order.sizes() == G.sizes(), "order must have the shape of G ", G.sizes(),
                    ", got ", order.sizes());
  TORCH_CHECK_TYPE(order.scalar_type() == at::kLong, "order must be int64, got ",
                   order.scalar_type());
}

// The Gram matrix accumulates in float32 for 16/32-bit inputs and float64 for float64.
inline at::ScalarType gram_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline std::vector<int64_t> batch_shape(const at::Tensor& G, int64_t trailing_drop) {
  auto sizes = G.sizes().vec();
  sizes.resize(sizes.size() - trailing_drop);
  return sizes;
}

// Lower bounds of the dual-cone QPs: U [K, T] float64, shared by every G of the batch.
inline void check_dual_cone_args(const at::Tensor& G, const at::Tensor& U, int64_t T) {
  TORCH_CHECK_VALUE(U.dim() == 2 && U.size(1) == T && U.size(0) >= 1,
                    "U must be [K, T] with T = ", T, ", got ", U.sizes());
  TORCH_CHECK_TYPE(U.scalar_type() == at::kDouble, "U must be float64, got ", U.scalar_type());
  TORCH_CHECK_VALUE(U.device() == G.device(), "U and G must be on the same device");
}

// [..., K, T]: one solution per G of the batch and row of U.
inline std::vector<int64_t> dual_cone_shape(const at::Tensor& G, int64_t K) {
  auto sizes = batch_shape(G, 2);
  sizes.push_back(K);
  sizes.push_back(G.size(-1));
  return sizes;
}

}  // namespace fastmtl
