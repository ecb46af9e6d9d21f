"""Feature Disentanglement benchmark: FD time as a multiple of one ``x.abs().sum()`` pass.

Both read the ``[T, B, C, H, W]`` feature gradients once; ``abs().sum()`` also writes and
re-reads an ``abs`` temporary, which is what an unfused PyTorch FD would pay several times
over. The ratios are measured in one process, so a noisy shared machine cancels out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from .. import ops, reference
from ..metrics import feature_disentanglement
from .combine import environment, time_call, time_ratio

DEFAULT_SHAPE = (3, 64, 512, 16, 16)
QUICK_SHAPE = (3, 8, 512, 16, 16)


@dataclass
class FDResult:
    shape: tuple[int, ...]
    dtype: str
    device: str
    abs_sum_ms: float
    ratios: dict[str, float] = field(default_factory=dict)


def bench_fd(
    shape: tuple[int, ...] = DEFAULT_SHAPE, *, device: str = "cpu",
    dtype: torch.dtype = torch.float32, repeats: int = 7, with_reference: bool = True,
    log: Callable[[str], None] = print,
) -> FDResult:
    """Median times of the FD variants over that of ``x.abs().sum()``, called in turn."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    # ReLU-like sparsity: a third of the entries are zero, as behind a ReLU encoder.
    x = torch.randn(shape, generator=gen).clamp_min_(-0.5).to(dev, dtype)
    t_ref = time_call(lambda: x.abs().sum(), dev, repeats)
    flat = x.view(shape[0], -1)
    cases: dict[str, Callable[[], object]] = {
        "fd mean": lambda: feature_disentanglement(x),
        "fd mean (op, no check)": lambda: ops.feature_disentanglement(flat, 0.0, 1),
        "fd weighted": lambda: feature_disentanglement(x, reduce="weighted"),
        "fd temperature=1": lambda: feature_disentanglement(x, temperature=1.0),
        "fd map (reduce=none)": lambda: feature_disentanglement(x, reduce="none"),
        "fd channel_dim=2": lambda: feature_disentanglement(x, channel_dim=2),
        "x.sum()": lambda: x.sum(),
    }
    if with_reference:
        cases["pure-PyTorch reference (float64)"] = \
            lambda: reference.feature_disentanglement(flat, 0.0, 1)
    res = FDResult(tuple(shape), str(dtype).replace("torch.", ""), str(dev), t_ref * 1e3)
    for name, fn in cases.items():
        reps = 3 if name.startswith("pure") else repeats
        res.ratios[name] = time_ratio(fn, lambda: x.abs().sum(), dev, reps)
        log(f"  {name:<34} {res.ratios[name]:6.2f}")
    return res


def run(args) -> dict:
    """Entry point of ``fastmtl bench fd``."""
    shape = tuple(args.shape) if args.shape else (QUICK_SHAPE if args.quick else DEFAULT_SHAPE)
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"fastmtl bench fd: shape={list(shape)} {args.dtype} on {args.device} "
          f"(ratios: time / one x.abs().sum() pass; target for 'fd mean' <= 2)")
    res = bench_fd(shape, device=args.device, dtype=dtype, repeats=repeats,
                   with_reference=not args.no_reference)
    print(f"\nx.abs().sum(): {res.abs_sum_ms:.2f} ms; fd mean / abs-sum = "
          f"{res.ratios['fd mean']:.2f}")
    result = {"environment": environment(), "config": {"repeats": repeats},
              "fd": asdict(res)}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"\nwrote {args.json}")
    return result
