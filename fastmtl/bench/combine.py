"""Combiner micro-benchmark: combine time as a multiple of one ``J.sum()`` pass.

Every figure is a ratio measured in the same process, with the calls alternated with
``J.sum()`` calls (:func:`time_ratio`), so the load of a noisy shared machine falls on both
sides alike: ``J.sum()`` reads ``J`` once, and a Gramian combine step must read it twice
(``G = J J^T``, then ``d = w^T J``), so about 2 is the floor. TorchJD's matching
aggregators are timed side by side when ``torchjd`` is installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from .. import ops
from .._native import native_available
from ..api import make_combiner

METHODS = ("mean", "sum", "pcgrad", "mgda", "cagrad", "imtlg", "alignedmtl", "config",
           "gradvac", "rgw", "nashmtl", "upgrad", "dualproj", "graddrop")
# torchjd aggregators / weightings with the same definition (see tests for conventions).
TORCHJD_MATCH = {
    "mean": ("Mean", "MeanWeighting", {}),
    "sum": ("Sum", "SumWeighting", {}),
    "pcgrad": ("PCGrad", "PCGradWeighting", {}),
    "mgda": ("MGDA", "MGDAWeighting", {}),
    "cagrad": ("CAGrad", "CAGradWeighting", {"c": 0.4}),
    "imtlg": ("IMTLG", "IMTLGWeighting", {}),
    "alignedmtl": ("AlignedMTL", "AlignedMTLWeighting", {}),
    "config": ("ConFIG", None, {}),
    "gradvac": ("GradVac", "GradVacWeighting", {}),
    "rgw": ("Random", "RandomWeighting", {}),
    # torchjd's NashMTL is an aggregator only (it needs J and n_tasks): see _make_peer.
    "nashmtl": ("NashMTL", "NashMTL", {}),
    "upgrad": ("UPGrad", "UPGradWeighting", {}),
    "dualproj": ("DualProj", "DualProjWeighting", {}),
    "graddrop": ("GradDrop", None, {}),
}


@dataclass
class CombineRow:
    T: int
    P: int
    dtype: str
    device: str
    sum_ms: float
    ratios: dict[str, float] = field(default_factory=dict)
    #: achieved read bandwidth (bytes of J / time) of J.sum(), gram and combine_rows
    bandwidth_gbps: dict[str, float] = field(default_factory=dict)


@dataclass
class SolverRow:
    method: str
    T: int
    fastmtl_ms: float
    torchjd_ms: float | None = None

    @property
    def speedup(self) -> float | None:
        return None if self.torchjd_ms is None else self.torchjd_ms / self.fastmtl_ms


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1,
              budget_s: float = 20.0, min_time_s: float = 0.0) -> float:
    """Median wall time of ``fn`` in seconds over at least ``repeats`` calls, and more until
    ``min_time_s`` is spent (so that calls of tens of microseconds get a steady median);
    stops early once ``budget_s`` is spent."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def time_ratio(fn: Callable[[], object], baseline: Callable[[], object], device: torch.device,
               repeats: int, warmup: int = 1, budget_s: float = 20.0) -> float:
    """Median time of ``fn`` over the median time of ``baseline``, the two called in turn.

    Alternating the calls exposes both to the same load on a shared machine, so the ratio
    is steadier than one of two medians taken minutes apart.
    """
    for _ in range(warmup):
        fn()
        baseline()
    _sync(device)
    times: dict[str, list[float]] = {"fn": [], "baseline": []}
    start = time.perf_counter()
    for _ in range(repeats):
        for key, f in (("baseline", baseline), ("fn", fn)):
            t0 = time.perf_counter()
            f()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times["fn"]) >= 3:
            break
    return statistics.median(times["fn"]) / statistics.median(times["baseline"])


def _torchjd():
    try:
        import torchjd.aggregation as agg
    except ImportError:
        return None
    return agg


def _fixed_order_combiner(method: str, T: int):
    # A fixed order keeps the random draw out of the timing (it is T x T, negligible).
    if method in ("pcgrad", "gradvac"):
        return make_combiner(method, order=list(range(T)))
    return make_combiner(method)


def bench_combine(
    Ts: list[int], Ps: list[int], *, device: str = "cpu", dtype: torch.dtype = torch.float32,
    repeats: int = 5, methods: tuple[str, ...] = METHODS, with_peers: bool = True,
    log: Callable[[str], None] = print,
) -> list[CombineRow]:
    """Times gram, J @ J.T and every method's combine (with and without ``out=``)."""
    agg = _torchjd() if with_peers else None
    rows = []
    for P in Ps:
        for T in Ts:
            rows.append(_bench_one(T, P, torch.device(device), dtype, repeats, methods, agg))
            log(f"  T={T:<3d} P={P:<9d} done")
    return rows


def _bench_one(T: int, P: int, dev: torch.device, dtype: torch.dtype, repeats: int,
               methods: tuple[str, ...], agg) -> CombineRow:
    J = torch.randn(T, P, device=dev, dtype=dtype)
    out = torch.empty(P, device=dev, dtype=dtype)
    t_sum = time_call(lambda: J.sum(), dev, repeats)
    row = CombineRow(T, P, str(dtype).replace("torch.", ""), dev.type, t_sum * 1e3)

    def ratio(fn: Callable[[], object], reps: int = repeats) -> float:
        return time_ratio(fn, lambda: J.sum(), dev, reps)

    w = torch.rand(T, device=dev, dtype=torch.float64)
    row.ratios["gram"] = ratio(lambda: ops.gram(J))
    row.ratios["combine_rows"] = ratio(lambda: ops.combine_rows(w, J, out=out))
    row.ratios["J @ J.T"] = ratio(lambda: J @ J.T)
    gigabytes = J.numel() * J.element_size() / 1e9
    row.bandwidth_gbps = {"J.sum": gigabytes / t_sum,
                          "gram": gigabytes / (t_sum * row.ratios["gram"]),
                          "combine_rows": gigabytes / (t_sum * row.ratios["combine_rows"])}
    for m in methods:
        comb = _fixed_order_combiner(m, T)
        row.ratios[f"{m} out="] = ratio(partial(comb, J, out=out))
        row.ratios[m] = ratio(partial(comb, J))
        peer = _make_peer(agg, TORCHJD_MATCH[m][0], TORCHJD_MATCH[m][2], T) if agg else None
        if peer is not None:
            row.ratios[f"torchjd {m}"] = ratio(partial(peer, J), max(1, repeats // 2))
    return row


def _make_peer(agg, name: str | None, kwargs: dict, T: int):
    if name is None:
        return None
    if name == "NashMTL":
        kwargs = kwargs | {"n_tasks": T}
    try:
        return getattr(agg, name)(**kwargs)
    except Exception:  # a peer missing an optional dependency is just not compared
        return None


def solver_jacobian(T: int, seed: int = 0, P: int = 512) -> torch.Tensor:
    """T float64 mixed conflicting/aligned gradients, as in the golden values' random cases:
    g_t = s_t (a_t z0 + n_t), a_t ~ U(-1, 2), s_t = exp(N(0, 1/4))."""
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(1, P, generator=g, dtype=torch.float64)
    a = torch.rand(T, 1, generator=g, dtype=torch.float64) * 3 - 1
    s = torch.exp(0.5 * torch.randn(T, 1, generator=g, dtype=torch.float64))
    return s * (a * z0 + torch.randn(T, P, generator=g, dtype=torch.float64))


def solver_gram(T: int, seed: int = 0, P: int = 512) -> torch.Tensor:
    """The Gram matrix of :func:`solver_jacobian`."""
    J = solver_jacobian(T, seed, P)
    return J @ J.T


def bench_solvers(T: int = 128, *, repeats: int = 5, methods: tuple[str, ...] = METHODS,
                  with_peers: bool = True, seed: int = 0) -> list[SolverRow]:
    """``combiner.weights(G)`` against TorchJD's ``*Weighting`` on the same float64 G."""
    J = solver_jacobian(T, seed)
    G = J @ J.T
    cpu = torch.device("cpu")
    agg = _torchjd() if with_peers else None
    rows = []
    for m in methods:
        if m in ("mean", "sum", "rgw", "graddrop"):  # no solver
            continue
        comb = make_combiner(m)
        # check=False: the solve alone (TorchJD's weightings do not check G either)
        weights = partial(comb.weights, G, generator=torch.Generator().manual_seed(0), check=False)
        row = SolverRow(m, T, time_call(weights, cpu, repeats, warmup=3, min_time_s=0.2) * 1e3)
        name = TORCHJD_MATCH[m][1]
        peer = _make_peer(agg, name, TORCHJD_MATCH[m][2], T) if agg else None
        if peer is not None:  # NashMTL: the aggregator on J (it has no Weighting)
            arg = J if name == "NashMTL" else G
            t_peer = time_call(partial(peer, arg), cpu, max(1, repeats // 2), warmup=2,
                               budget_s=10.0, min_time_s=0.2)
            row.torchjd_ms = t_peer * 1e3
        rows.append(row)
    return rows


def format_combine_table(rows: list[CombineRow]) -> str:
    """One line per (T, P, method): with out=, allocating, and TorchJD's aggregator."""
    head = f"{'T':>4} {'P':>10}  {'method':<10} {'out=':>7} {'alloc':>7} {'torchjd':>8}"
    lines = [head, "-" * len(head)]

    def cell(value: float | None, width: int) -> str:
        return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"

    for r in rows:
        lines.append(f"{r.T:>4} {r.P:>10}  {'gram':<10} {cell(r.ratios['gram'], 7)}")
        lines.append(f"{r.T:>4} {r.P:>10}  {'rows':<10} {cell(r.ratios['combine_rows'], 7)}")
        lines.append(f"{r.T:>4} {r.P:>10}  {'J @ J.T':<10} {cell(r.ratios['J @ J.T'], 7)}")
        for m in METHODS:
            if m not in r.ratios:
                continue
            lines.append(
                f"{r.T:>4} {r.P:>10}  {m:<10} {cell(r.ratios.get(m + ' out='), 7)} "
                f"{cell(r.ratios.get(m), 7)} {cell(r.ratios.get('torchjd ' + m), 8)}"
            )
    return "\n".join(lines)


def format_solver_table(rows: list[SolverRow]) -> str:
    lines = [f"{'method':>10} {'T':>4} {'fastmtl ms':>11} {'torchjd ms':>11} {'speed-up':>9}",
             "-" * 49]
    for r in rows:
        tj = f"{r.torchjd_ms:>11.2f}" if r.torchjd_ms is not None else f"{'-':>11}"
        sp = f"{r.speedup:>8.0f}x" if r.speedup is not None else f"{'-':>9}"
        lines.append(f"{r.method:>10} {r.T:>4} {r.fastmtl_ms:>11.3f} {tj} {sp}")
    return "\n".join(lines)


def environment() -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "native": native_available(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "command": " ".join(sys.argv),
    }
    try:
        info["torchjd"] = importlib.metadata.version("torchjd")
    except importlib.metadata.PackageNotFoundError:
        info["torchjd"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run(args) -> dict:
    """Entry point of ``fastmtl bench combine``."""
    dtype = getattr(torch, args.dtype)
    if args.quick:
        Ts, Ps, repeats, solver_T = [2, 10], [4_000_000], 3, 32
    else:
        Ts, Ps, repeats, solver_T = [2, 3, 10, 40], [1_000_000, 10_000_000], 5, 128
    Ts = args.T or Ts
    Ps = args.P or Ps
    repeats = args.repeats or repeats
    print(f"fastmtl bench combine: device={args.device} dtype={args.dtype} native="
          f"{native_available()} (ratios: time / time of one J.sum() pass)")
    rows = bench_combine(Ts, Ps, device=args.device, dtype=dtype, repeats=repeats,
                         with_peers=not args.no_peers)
    print()
    print(format_combine_table(rows))
    print("\n(gram, rows: the ops alone; out=: combine into a preallocated buffer; alloc: "
          "a fresh output;\n torchjd: its matching aggregator, when installed)")
    for r in rows:
        bw = ", ".join(f"{k} {v:.1f}" for k, v in r.bandwidth_gbps.items())
        print(f"  T={r.T} P={r.P}: read bandwidth GB/s: {bw}")
    solver_rows = bench_solvers(solver_T, repeats=repeats, with_peers=not args.no_peers)
    print()
    print(f"solver alone, combiner.weights(G), float64 G of T={solver_T} on CPU")
    print(format_solver_table(solver_rows))
    result = {
        "environment": environment(),
        "combine": [asdict(r) for r in rows],
        "solvers": [asdict(r) | {"speedup": r.speedup} for r in solver_rows],
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"\nwrote {args.json}")
    return result
