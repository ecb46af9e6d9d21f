// gram_combine: one combine step of a Gramian method as a single op (fastmtl.fork's backward):
//   G = gram(J);  w = solver(float64 G, args...) (rows summed and scaled);  d = w^T J.
// The solver is any fastmtl weight op named by the caller; its arguments after G are taken
// in schema order from `tensors`, `floats` and `ints` (bools as ints), so the op needs no
// per-method code and each method's rule stays in its own solver. Registered for
// CompositeExplicitAutograd: the three stages dispatch to the CPU or CUDA kernels of J's
// device, queued in order on the current stream with no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace fastmtl {
namespace {

c10::OperatorHandle fastmtl_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(("fastmtl::" + name).c_str(), "");
}

// The solver's arguments after G, from the three lists in schema order.
torch::jit::Stack solver_stack(const c10::OperatorHandle& op, const at::Tensor& G,
                               const std::vector<at::Tensor>& tensors,
                               c10::ArrayRef<double> floats, c10::ArrayRef<int64_t> ints) {
  const auto& args = op.schema().arguments();
  TORCH_CHECK(!args.empty() && args[0].type()->kind() == c10::TypeKind::TensorType,
              "gram_combine: solver ", op.schema().name(), " must take G first");
  torch::jit::Stack stack{G};
  size_t nt = 0, nf = 0, ni = 0;
  for (size_t a = 1; a < args.size(); ++a) {
    const c10::TypeKind kind = args[a].type()->kind();
    if (kind == c10::TypeKind::TensorType) {
      TORCH_CHECK(nt < tensors.size(), "gram_combine: too few tensors for ", op.schema().name());
      stack.emplace_back(tensors[nt++]);
    } else if (kind == c10::TypeKind::FloatType) {
      TORCH_CHECK(nf < floats.size(), "gram_combine: too few floats for ", op.schema().name());
      stack.emplace_back(floats[nf++]);
    } else if (kind == c10::TypeKind::IntType || kind == c10::TypeKind::BoolType) {
      TORCH_CHECK(ni < ints.size(), "gram_combine: too few ints for ", op.schema().name());
      if (kind == c10::TypeKind::BoolType)
        stack.emplace_back(ints[ni++] != 0);
      else
        stack.emplace_back(ints[ni++]);
    } else {
      TORCH_CHECK(false, "gram_combine: unsupported argument type of ", op.schema().name());
    }
  }
  TORCH_CHECK(nt == tensors.size() && nf == floats.size() && ni == ints.size(),
              "gram_combine: more arguments than ", op.schema().name(), " takes");
  return stack;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_combine(
    const at::Tensor& J, c10::string_view solver, at::TensorList tensors,
    c10::ArrayRef<double> floats, c10::ArrayRef<int64_t> ints, double scale) {
  TORCH_CHECK(J.dim() == 2, "gram_combine: J must be 2-D [T, P], got ", J.dim(), "-D");
  static const auto gram = fastmtl_op("gram").typed<at::Tensor(const at::Tensor&)>();
  static const auto combine =
      fastmtl_op("combine_rows").typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  const at::Tensor G = gram.call(J);
  const int64_t T = J.size(0);
  at::Tensor w;
  if (solver.empty()) {  // equal weights
    TORCH_CHECK(tensors.empty() && floats.empty() && ints.empty(),
                "gram_combine: no arguments for equal weights (solver \"\")");
    w = at::full({T}, scale, G.options().dtype(at::kDouble));
  } else {
    const c10::OperatorHandle op = fastmtl_op(std::string(solver));
    torch::jit::Stack stack =
        solver_stack(op, G.to(at::kDouble), tensors.vec(), floats, ints);
    op.callBoxed(&stack);
    TORCH_CHECK(!stack.empty() && stack[0].isTensor(), "gram_combine: ",
                op.schema().name(), " must return the weights (a tensor) first");
    w = stack[0].toTensor();
    // coefficient matrices (PCGrad's C, the dual-cone projections W): d = 1^T C J
    if (w.dim() == 2) w = w.sum(0);
    TORCH_CHECK(w.dim() == 1 && w.size(0) == T, "gram_combine: ", op.schema().name(),
                " returned weights of shape ", w.sizes(), ", expected [", T, "]");
    if (scale != 1.0) w = w * scale;
  }
  return {combine.call(w, J), w, G};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CompositeExplicitAutograd, m) {
  m.impl("gram_combine", &gram_combine);
}

}  // namespace fastmtl
