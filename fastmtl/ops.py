r"""Typed wrappers over the native ops ``torch.ops.fastmtl.*``.

Each wrapper calls the compiled CPU or CUDA kernel when one is registered for the input's
device, and the pure-PyTorch reference in :mod:`fastmtl.reference` otherwise. Fake (meta)
kernels are registered here so that every op traces under ``torch.compile``.

Streaming ops (one pass over ``J``):

- :func:`gram`: :math:`G = J J^\top`, accumulated in float32 (float64 for float64 input).
- :func:`combine_rows`: :math:`d = w^\top J`, optionally into / onto an existing buffer.

Solver ops (batched over leading dimensions of ``G``, solved in float64, no host sync):

- :func:`pcgrad_coefficients`, :func:`min_norm_weights`, :func:`cagrad_weights`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._native import native_available

__all__ = [
    "gram",
    "combine_rows",
    "pcgrad_coefficients",
    "min_norm_weights",
    "cagrad_weights",
    "feature_disentanglement",
    "graddrop",
    "gram_combine",
    "FusedSolve",
    "has_native_kernel",
]


_OPS = (
    "gram", "combine_rows", "pcgrad_coefficients", "min_norm_weights", "cagrad_weights",
    "symmetric_eigh", "imtlg_weights", "aligned_mtl_weights", "config_weights",
    "gradvac_coefficients", "nash_weights", "dual_cone_weights", "feature_disentanglement",
    "graddrop", "gram_combine",
)


def _registered_kernels() -> frozenset[tuple[str, str]]:
    # Looked up once at import: a plain set lookup is traceable by torch.compile.
    if not native_available():
        return frozenset()
    def has(op: str, key: str) -> bool:
        try:
            return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmtl::{op}", key)
        except RuntimeError:  # an older build of _C without this op: use the reference
            return False

    # gram_combine is one composite kernel that dispatches its stages: native on a device
    # where the streaming ops are
    return frozenset(
        (op, device) for op in _OPS for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if has(op, key) or (has(op, "CompositeExplicitAutograd") and has("gram", key))
    )


_KERNELS = _registered_kernels()


def _solver_params() -> dict[str, list[tuple[str, str]]]:
    # (name, type) of every op argument after G, read once at import: schema objects are
    # not traceable by torch.compile, a dict of strings is.
    if not native_available():
        return {}
    params = {}
    for op in _OPS:
        packet = getattr(torch.ops.fastmtl, op, None)
        if packet is not None:
            params[op] = [(a.name, str(a.type)) for a in packet.default._schema.arguments[1:]]
    return params


_SOLVER_PARAMS = _solver_params()


def has_native_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.fastmtl.<op>`` has a compiled kernel for ``device_type``."""
    return (op, device_type) in _KERNELS


def gram(J: Tensor) -> Tensor:
    r"""Gram matrix :math:`G = J J^\top` of ``J`` ``[T, P]`` in one streaming pass.

    ``J`` must have unit stride along ``P`` (rows may be strided). The result is float32
    for float16/bfloat16/float32 input and float64 for float64 input.
    """
    if has_native_kernel("gram", J.device.type):
        return torch.ops.fastmtl.gram(J)
    return reference.gram(J)


def combine_rows(
    w: Tensor, J: Tensor, *, out: Tensor | None = None, accumulate: bool = False
) -> Tensor:
    r"""Combination :math:`d = w^\top J` of the rows of ``J`` ``[T, P]``.

    With ``out`` (``P`` contiguous elements of ``J``'s dtype) the result is written into it,
    or added to it with ``accumulate=True``, and nothing of size ``P`` is allocated.
    Accumulates in float32 (float64 for float64 input).
    """
    native = has_native_kernel("combine_rows", J.device.type)
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an `out` tensor to add to")
        return torch.ops.fastmtl.combine_rows(w, J) if native else reference.combine_rows(w, J)
    if native:
        torch.ops.fastmtl.combine_rows_out(w, J, out, accumulate)
    else:
        d = reference.combine_rows(w, J).view(out.shape)
        out.add_(d) if accumulate else out.copy_(d)
    return out


def pcgrad_coefficients(
    G: Tensor, order: Tensor, *, include_self: bool = True, eps: float = 0.0,
    eps_on_norm: bool = False,
) -> Tensor:
    """PCGrad coefficients ``C`` with ``pc = C @ J``.

    See :func:`fastmtl.reference.pcgrad_coefficients` for the rule.
    """
    if has_native_kernel("pcgrad_coefficients", G.device.type):
        return torch.ops.fastmtl.pcgrad_coefficients(G, order, include_self, eps, eps_on_norm)
    return reference.pcgrad_coefficients(G, order, include_self, eps, eps_on_norm)


def default_max_iter(T: int) -> int:
    """Iteration cap of the min-norm solver: Wolfe's algorithm is finite, typically ~2T steps."""
    return 50 * T + 100


def min_norm_weights(
    G: Tensor, *, max_iter: int | None = None, tol: float = 1e-14
) -> tuple[Tensor, Tensor]:
    r"""Exact min-norm point of the convex hull of the rows, from ``G`` ``[..., T, T]``.

    Returns ``(w, converged)``: ``w`` on the simplex minimising :math:`w^\top G w`, and a
    boolean flag per problem. ``tol`` is Wolfe's optimality tolerance relative to
    :math:`\max_i \|g_i\|^2`.
    """
    max_iter = default_max_iter(G.shape[-1]) if max_iter is None else max_iter
    if has_native_kernel("min_norm_weights", G.device.type):
        return torch.ops.fastmtl.min_norm_weights(G, max_iter, tol)
    return reference.min_norm_weights(G, max_iter, tol)


def cagrad_weights(
    G: Tensor, c: float, rescale: int, *, max_outer: int = 100, max_inner: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""CAGrad weights from ``G`` ``[..., T, T]``: ``(weights, w_star, converged)``.

    ``weights`` give the direction :math:`d = \sum_i \text{weights}_i g_i
    = (g_0 + \lambda g_{w^*}) / s`; ``w_star`` is the dual solution on the simplex.
    """
    max_inner = default_max_iter(G.shape[-1]) if max_inner is None else max_inner
    if has_native_kernel("cagrad_weights", G.device.type):
        return torch.ops.fastmtl.cagrad_weights(G, c, rescale, max_outer, max_inner)
    return reference.cagrad_weights(G, c, rescale, max_outer, max_inner)


def eigh(G: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (unsorted) and eigenvectors (columns) of symmetric float64 ``G``, by
    Householder tridiagonalisation and implicit QL (the routine the eigen-based solvers
    use; cyclic Jacobi as its fallback)."""
    if has_native_kernel("symmetric_eigh", G.device.type):
        return torch.ops.fastmtl.symmetric_eigh(G)
    return reference.eigh(G)


def imtlg_weights(G: Tensor) -> tuple[Tensor, Tensor]:
    """IMTL-G weights and a per-problem flag (False where no weights exist); see the class."""
    if has_native_kernel("imtlg_weights", G.device.type):
        return torch.ops.fastmtl.imtlg_weights(G)
    return reference.imtlg_weights(G)


def aligned_mtl_weights(G: Tensor, scale_mode: int, rank_eps: float) -> tuple[Tensor, Tensor]:
    """Aligned-MTL weights and the rank kept (scale_mode 0 min, 1 median, 2 rmse)."""
    if has_native_kernel("aligned_mtl_weights", G.device.type):
        return torch.ops.fastmtl.aligned_mtl_weights(G, scale_mode, rank_eps)
    return reference.aligned_mtl_weights(G, scale_mode, rank_eps)


def config_weights(G: Tensor) -> tuple[Tensor, Tensor]:
    """ConFIG weights and a per-problem flag (False when the direction is undefined)."""
    if has_native_kernel("config_weights", G.device.type):
        return torch.ops.fastmtl.config_weights(G)
    return reference.config_weights(G)


def gradvac_coefficients(G: Tensor, order: Tensor, rho: Tensor, *, beta: float,
                         eps: float) -> Tensor:
    """GradVac coefficients ``C`` (``pc = C @ J``); updates the EMA targets ``rho`` in place."""
    if has_native_kernel("gradvac_coefficients", G.device.type):
        return torch.ops.fastmtl.gradvac_coefficients(G, order, rho, beta, eps)
    return reference.gradvac_coefficients(G, order, rho, beta, eps)


def nash_weights(G: Tensor, *, max_iter: int = 100, tol: float = 1e-12
                 ) -> tuple[Tensor, Tensor, Tensor]:
    r"""Nash-MTL weights from ``G`` ``[..., T, T]``: ``(alpha, residual, converged)``.

    :math:`\alpha > 0` solves :math:`G\alpha = 1/\alpha`; ``residual`` is
    :math:`\max_i |\alpha_i (G\alpha)_i - 1|`. ``converged`` is False where no such point
    exists (then ``alpha`` solves the problem regularised by :math:`10^{-8} I` in the
    normalised units).
    """
    if has_native_kernel("nash_weights", G.device.type):
        return torch.ops.fastmtl.nash_weights(G, max_iter, tol)
    return reference.nash_weights(G, max_iter, tol)


def dual_cone_weights(G: Tensor, U: Tensor, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                      max_iter: int | None = None) -> tuple[Tensor, Tensor]:
    r"""Projections of UPGrad and DualProj: ``(W, converged)`` with ``W`` ``[..., K, T]``.

    Row :math:`k` of ``W`` is :math:`\arg\min_{v \ge u_k} v^\top A v` for row :math:`u_k`
    of ``U`` ``[K, T]``, where :math:`A = G/\operatorname{tr}G + \text{reg\_eps}\, I` (the
    first term is 0 when the trace is below ``norm_eps``): torchjd's conventions.
    """
    max_iter = 4 * G.shape[-1] + 20 if max_iter is None else max_iter
    if has_native_kernel("dual_cone_weights", G.device.type):
        return torch.ops.fastmtl.dual_cone_weights(G, U, norm_eps, reg_eps, max_iter)
    return reference.dual_cone_weights(G, U, norm_eps, reg_eps, max_iter)
def feature_disentanglement(grads: Tensor, temperature: float, reduce: int) -> Tensor:
    r"""Feature Disentanglement of ``grads`` ``[T, N]`` in one pass (no host sync).

    ``reduce``: 0 the per-element map ``[N]``, 1 the mean (0-d), 2 the saliency-weighted mean
    (0-d); see :func:`fastmtl.reference.feature_disentanglement` for the definition. ``grads``
    must have unit stride along ``N``. Float32 result (float64 for float64 input).
    """
    if has_native_kernel("feature_disentanglement", grads.device.type):
        return torch.ops.fastmtl.feature_disentanglement(grads, temperature, reduce)
    return reference.feature_disentanglement(grads, temperature, reduce)


def graddrop(
    J: Tensor, leak: Tensor, seed: Tensor, *, purity: Tensor | None = None, stream: int = 0,
    out: Tensor | None = None, accumulate: bool = False,
) -> Tensor:
    r"""GradDrop of ``J`` ``[T, N]`` in one pass: the sign-purity masks with Philox uniforms
    under key ``seed`` (int64 ``[2]``, on ``J``'s device) and ``stream``, and the masked sum
    :math:`d_n = \sum_t (k_t + (1 - k_t) M_{tn}) J_{tn}` with ``leak`` :math:`k` (float64
    ``[T]``). ``purity`` ``[T, D]`` (``N = B D``) gives the signs and purity of column
    ``n mod D`` instead of ``J`` itself (the batch-separated rule). With ``out`` the result is
    written into it (or added, ``accumulate=True``). See :func:`fastmtl.reference.graddrop`.
    """
    native = has_native_kernel("graddrop", J.device.type)
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an `out` tensor to add to")
        if native:
            return torch.ops.fastmtl.graddrop(J, leak, seed, purity, stream)
        return reference.graddrop(J, leak, seed, purity, stream)
    if native:
        torch.ops.fastmtl.graddrop_out(J, leak, seed, purity, stream, out, accumulate)
    else:
        d = reference.graddrop(J, leak, seed, purity, stream).view(out.shape)
        out.add_(d) if accumulate else out.copy_(d)
    return out


# A Gramian method's solve as data for gram_combine: the weight op's name (a fastmtl op
# taking G first; "" for equal weights), its arguments after G in schema order, and the
# factor applied to the weights (row sums for coefficient matrices).
FusedSolve = tuple[str, tuple, float]


def gram_combine(J: Tensor, solve: FusedSolve) -> tuple[Tensor, Tensor, Tensor]:
    r"""One combine step of a Gramian method as a single op: ``(d, w, G)`` with

    .. math::  G = J J^\top, \qquad w = s \cdot \mathrm{solver}(G, \ldots)
               \;(\text{rows summed for a } K \times T \text{ result}),
               \qquad d = w^\top J .

    ``solve`` is a :data:`FusedSolve` (what ``Combiner._fused_solve`` returns). Natively
    the three stages are queued by one C++ op on ``J``'s device (CPU or CUDA) with no host
    synchronisation; without the extension the same stages run in Python on the reference
    ops. ``G`` is float32 (float64 for float64 ``J``), ``w`` float64.
    """
    solver, args, scale = solve
    # gram_combine counts as native only where gram is (see _registered_kernels)
    native = has_native_kernel("gram_combine", J.device.type) and (
        not solver or has_native_kernel(solver, J.device.type))
    if native:
        tensors, floats, ints = _solver_argument_lists(solver, args)
        return torch.ops.fastmtl.gram_combine(J, solver, tensors, floats, ints, float(scale))
    return reference.gram_combine(J, solve)


def _solver_argument_lists(solver: str, args: tuple) -> tuple[list, list, list]:
    """``args`` sorted into gram_combine's tensor, float and int lists by the solver op's
    schema (so an int given for a float argument is converted, not misplaced)."""
    params = _SOLVER_PARAMS.get(solver, []) if solver else []
    if solver and solver not in _SOLVER_PARAMS:
        raise ValueError(f"gram_combine: {solver!r} is not a fastmtl weight op")
    if len(args) != len(params):
        raise TypeError(f"gram_combine: {solver or 'equal weights'!r} takes {len(params)} "
                        f"arguments after G, got {len(args)}")
    tensors: list[Tensor] = []
    floats: list[float] = []
    ints: list[int] = []
    for (name, kind), value in zip(params, args, strict=True):
        if kind == "Tensor" and isinstance(value, Tensor):
            tensors.append(value)
        elif kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            floats.append(float(value))
        elif kind in ("int", "bool") and isinstance(value, (int, bool)):
            ints.append(int(value))
        else:
            raise TypeError(f"gram_combine: argument {name!r} of {solver!r} must be "
                            f"{kind}, got {type(value).__name__}")
    return tensors, floats, ints


if native_available():

    @torch.library.register_fake("fastmtl::gram")
    def _gram_fake(J: Tensor) -> Tensor:
        torch._check(J.dim() == 2, lambda: "J must be 2-D [T, P]")
        return J.new_empty((J.shape[0], J.shape[0]), dtype=reference.gram_dtype(J.dtype))

    @torch.library.register_fake("fastmtl::combine_rows")
    def _combine_rows_fake(w: Tensor, J: Tensor) -> Tensor:
        torch._check(J.dim() == 2, lambda: "J must be 2-D [T, P]")
        return J.new_empty((J.shape[1],))

    @torch.library.register_fake("fastmtl::combine_rows_out")
    def _combine_rows_out_fake(w: Tensor, J: Tensor, out: Tensor, accumulate: bool = False):
        return None

    @torch.library.register_fake("fastmtl::pcgrad_coefficients")
    def _pcgrad_fake(G, order, include_self=True, eps=0.0, eps_on_norm=False):
        return torch.empty_like(G)

    @torch.library.register_fake("fastmtl::min_norm_weights")
    def _min_norm_fake(G, max_iter, tol):
        return G.new_empty(G.shape[:-1]), G.new_empty(G.shape[:-2], dtype=torch.bool)

    @torch.library.register_fake("fastmtl::cagrad_weights")
    def _cagrad_fake(G, c, rescale, max_outer, max_inner):
        w = G.new_empty(G.shape[:-1])
        return w, torch.empty_like(w), G.new_empty(G.shape[:-2], dtype=torch.bool)

    @torch.library.register_fake("fastmtl::symmetric_eigh")
    def _eigh_fake(G):
        return G.new_empty(G.shape[:-1]), torch.empty_like(G)

    def _weights_and_flag(G, flag_dtype):
        return G.new_empty(G.shape[:-1]), G.new_empty(G.shape[:-2], dtype=flag_dtype)

    @torch.library.register_fake("fastmtl::imtlg_weights")
    def _imtlg_fake(G):
        return _weights_and_flag(G, torch.bool)

    @torch.library.register_fake("fastmtl::config_weights")
    def _config_fake(G):
        return _weights_and_flag(G, torch.bool)

    @torch.library.register_fake("fastmtl::aligned_mtl_weights")
    def _aligned_fake(G, scale_mode, rank_eps):
        return _weights_and_flag(G, torch.int64)

    @torch.library.register_fake("fastmtl::gradvac_coefficients")
    def _gradvac_fake(G, order, rho, beta, eps):
        return torch.empty_like(G)

    @torch.library.register_fake("fastmtl::nash_weights")
    def _nash_fake(G, max_iter, tol):
        batch = G.shape[:-2]
        return G.new_empty(G.shape[:-1]), G.new_empty(batch), G.new_empty(batch, dtype=torch.bool)

    if hasattr(torch.ops.fastmtl, "gram_combine"):

        @torch.library.register_fake("fastmtl::gram_combine")
        def _gram_combine_fake(J, solver, tensors, floats, ints, scale):
            torch._check(J.dim() == 2, lambda: "J must be 2-D [T, P]")
            T, P = J.shape
            return (J.new_empty((P,)), J.new_empty((T,), dtype=torch.float64),
                    J.new_empty((T, T), dtype=reference.gram_dtype(J.dtype)))

    @torch.library.register_fake("fastmtl::dual_cone_weights")
    def _dual_cone_fake(G, U, norm_eps, reg_eps, max_iter):
        torch._check(U.dim() == 2, lambda: "U must be [K, T]")
        W = G.new_empty((*G.shape[:-2], U.shape[0], G.shape[-1]))
        return W, G.new_empty(G.shape[:-2], dtype=torch.bool)
if native_available() and hasattr(torch.ops.fastmtl, "feature_disentanglement"):

    @torch.library.register_fake("fastmtl::feature_disentanglement")
    def _fd_fake(grads, temperature, reduce):
        torch._check(grads.dim() == 2, lambda: "grads must be 2-D [T, N]")
        dtype = reference.gram_dtype(grads.dtype)
        shape = (grads.shape[1],) if reduce == 0 else ()
        return grads.new_empty(shape, dtype=dtype)

if native_available() and hasattr(torch.ops.fastmtl, "graddrop"):

    @torch.library.register_fake("fastmtl::graddrop")
    def _graddrop_fake(J, leak, seed, purity=None, stream=0):
        torch._check(J.dim() == 2, lambda: "J must be 2-D [T, N]")
        return J.new_empty((J.shape[1],))

    @torch.library.register_fake("fastmtl::graddrop_out")
    def _graddrop_out_fake(J, leak, seed, purity, stream, out, accumulate=False):
        return None
