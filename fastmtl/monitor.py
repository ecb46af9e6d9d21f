r"""A training monitor: FD, gradient conflict, magnitude similarity, weights and losses.

Attach it to :func:`fastmtl.backward` or :func:`fastmtl.fork` (``monitor=m``) or feed it by
hand (:meth:`Monitor.record`). Every ``every``-th step it computes its metrics on the device
from what the combine step already holds (no extra backward pass), gathers them into one
float64 vector and reads that back to the host once, then appends a JSON line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import ops
from .metrics.fd import _stack_tasks, fd_saliency
from .metrics.identifiers import gradient_conflict, magnitude_similarity
from .reference import FD_REDUCE_CODES

__all__ = ["Monitor"]


def _finite_or_none(x: float) -> float | None:
    # JSON has no NaN/Inf.
    return x if math.isfinite(x) else None


class Monitor:
    r"""Records interference metrics every ``every`` steps, to memory and a JSON Lines file.

    Each record is one JSON object per line, with the keys available at that step::

        {"step": 10, "fd": 0.41, "conflict_fraction": 0.33, "mean_cosine": 0.05,
         "min_cosine": -0.2, "magnitude_similarity": 0.9, "norm_ratio": 1.7,
         "weights": [0.3, 0.3, 0.4], "losses": [1.2, 0.8, 2.0]}

    - ``fd``: :func:`fastmtl.metrics.feature_disentanglement` of the per-task feature
      gradients (feature level and :func:`fastmtl.fork` only);
    - ``conflict_fraction``, ``mean_cosine``, ``min_cosine``: :func:`gradient_conflict`
      from the Gram matrix ``G`` the combiner used;
    - ``magnitude_similarity`` (mean over pairs), ``norm_ratio``: :func:`magnitude_similarity`;
    - ``weights``: the combiner's task weights; ``losses``: the task losses (not available
      to :func:`fork`, which sees no losses).

    Non-finite values are written as ``null``. Records are kept in :attr:`records`.

    Args:
        every: record every ``every``-th step (steps 0, every, 2 every, ...).
        path: JSON Lines file to write (created, or truncated unless ``append=True``); None
            keeps the records in memory only.
        append: append to an existing file instead of truncating it.
        fd_temperature, fd_channel_dim, fd_reduce: options of
            :func:`fastmtl.metrics.feature_disentanglement` (``fd_reduce`` "mean" or
            "weighted").
    """

    def __init__(
        self, every: int = 1, path: str | Path | None = None, *, append: bool = False,
        fd_temperature: float = 0.0, fd_channel_dim: int | None = None, fd_reduce: str = "mean",
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if fd_reduce not in ("mean", "weighted"):
            raise ValueError(f"fd_reduce must be 'mean' or 'weighted', got {fd_reduce!r}")
        if not math.isfinite(fd_temperature) or fd_temperature < 0:
            raise ValueError(f"fd_temperature must be finite and >= 0, got {fd_temperature}")
        self.every = every
        self.path = Path(path) if path is not None else None
        self.fd_temperature = float(fd_temperature)
        self.fd_channel_dim = fd_channel_dim
        self.fd_reduce = fd_reduce
        self.records: list[dict[str, Any]] = []
        self._next_step = 0
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    # ---- recording ---------------------------------------------------------------------

    def due(self, step: int | None = None) -> bool:
        """Whether ``step`` (default: the next step) is a recording step."""
        step = self._next_step if step is None else step
        return step % self.every == 0

    def record(
        self, step: int | None = None, *, feature_grads: Tensor | Sequence[Tensor] | None = None,
        J: Tensor | Sequence[Tensor] | None = None, G: Tensor | None = None,
        weights: Tensor | Sequence[float] | None = None,
        losses: Tensor | Sequence[Tensor] | None = None,
    ) -> dict[str, Any] | None:
        r"""Records the metrics of one step if it is due; returns the record or None.

        Args:
            step: the step number (default: one more than the last step seen, from 0).
                A record is made when ``step % every == 0``.
            feature_grads: ``[T, B, ...]`` per-task feature gradients (for FD; also for the
                cosines and norms when neither ``G`` nor ``J`` is given).
            J: per-task gradients ``[T, P]`` (for the cosines and norms, if ``G`` is absent).
            G: the ``T x T`` Gram matrix (cheapest source of the cosines and norms).
            weights: the combiner's ``[T]`` task weights.
            losses: the ``T`` task losses.

        All metrics are computed on the device and read back in one transfer.
        """
        if step is None:
            step = self._next_step
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        self._next_step = step + 1
        if step % self.every != 0:
            return None
        return self._record(step, feature_grads, J, G, weights, losses)

    def _record(self, step, feature_grads, J, G, weights, losses) -> dict[str, Any]:
        names: list[tuple[str, int]] = []  # (key, length; 0 for a scalar)
        parts: list[Tensor] = []

        def add(key: str, value: Tensor, vector: bool = False) -> None:
            v = value.detach().reshape(-1).to(torch.float64)
            names.append((key, v.numel() if vector else 0))
            parts.append(v)

        fg = None
        if feature_grads is not None:
            fg = feature_grads if isinstance(feature_grads, list) and feature_grads and \
                isinstance(feature_grads[0], _Blocks) else None
            if fg is None:
                g = _stack_tasks(feature_grads, "feature_grads")
                fg = [_Blocks(g)]
            add("fd", self._fd(fg))
        if G is None:
            if J is not None:
                G = _gram(J)
            elif fg is not None:
                G = sum(ops.gram(b.flat()).to(torch.float64) for b in fg)
        if G is not None:
            gc = gradient_conflict(G, gram=True, check_finite=False)
            ms = magnitude_similarity(G, gram=True, check_finite=False)
            add("conflict_fraction", gc.conflict_fraction)
            add("mean_cosine", gc.mean_cosine)
            add("min_cosine", gc.min_cosine)
            add("magnitude_similarity", ms.mean)
            add("norm_ratio", ms.norm_ratio)
        device = parts[0].device if parts else None
        if weights is not None:
            w = weights if isinstance(weights, Tensor) else torch.tensor(weights)
            add("weights", w.to(device) if device is not None else w, vector=True)
        if losses is not None:
            if isinstance(losses, Tensor):
                lv = losses.detach().reshape(-1)
            else:
                lv = torch.stack([torch.as_tensor(x).detach().reshape(()) for x in losses])
            add("losses", lv.to(parts[0].device) if parts else lv, vector=True)
        rec: dict[str, Any] = {"step": step}
        if parts:
            device = parts[0].device
            values = torch.cat([p.to(device) for p in parts]).tolist()  # the one transfer
            i = 0
            for key, n in names:
                if n == 0:
                    rec[key] = _finite_or_none(values[i])
                    i += 1
                else:
                    rec[key] = [_finite_or_none(x) for x in values[i:i + n]]
                    i += n
        self.records.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()
        return rec

    def _fd(self, blocks: list[_Blocks]) -> Tensor:
        sal = [fd_saliency(b.g, self.fd_channel_dim) for b in blocks]
        flat = sal[0] if len(sal) == 1 else torch.cat(
            [s.abs().to(torch.float64 if s.dtype == torch.float64 else torch.float32)
             for s in sal], dim=1)
        return ops.feature_disentanglement(flat, self.fd_temperature,
                                           FD_REDUCE_CODES[self.fd_reduce])

    # ---- hooks used by fastmtl.backward / fastmtl.fork ----------------------------------

    def _observe(self, *, feature_blocks: Sequence[Tensor] | None = None,
                 G: Tensor | None = None, weights: Tensor | None = None,
                 losses: Sequence[Tensor] | None = None) -> None:
        """Called once per combine step; ``feature_blocks`` are ``[T, *z.shape]`` tensors."""
        step = self._next_step
        self._next_step = step + 1
        if step % self.every != 0:
            return
        fg = None if feature_blocks is None else [_Blocks(b) for b in feature_blocks]
        self._record(step, fg, None, G, weights, losses)

    # ---- output ------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the JSON Lines file (records stay in memory)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order
        try:
            self.close()
        except Exception:
            pass

    def plot(self, path: str | Path) -> Path:
        """Draws FD, conflict and magnitude similarity, the weights and the losses over the
        steps into a PNG at ``path`` (matplotlib's Agg canvas; the global backend is left
        alone). Returns the path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not self.records:
            raise ValueError("nothing to plot: the monitor has no records")
        panels = [("interference", ["fd", "conflict_fraction", "mean_cosine",
                                    "magnitude_similarity"]),
                  ("weights", ["weights"]), ("losses", ["losses"])]
        panels = [(t, [k for k in keys if any(k in r for r in self.records)])
                  for t, keys in panels]
        panels = [(t, keys) for t, keys in panels if keys]
        fig = Figure(figsize=(7, 2.6 * len(panels)), constrained_layout=True)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        for ax, (title, keys) in zip(axes, panels, strict=True):
            for key in keys:
                rows = [r for r in self.records if key in r]
                steps = [r["step"] for r in rows]
                if isinstance(rows[0][key], list):
                    for t in range(len(rows[0][key])):
                        ys = [_nan(r[key][t]) if t < len(r[key]) else math.nan for r in rows]
                        ax.plot(steps, ys, label=f"task {t}")
                else:
                    ax.plot(steps, [_nan(r[key]) for r in rows], label=key)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.legend(fontsize="small")
            ax.grid(alpha=0.3)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)
        return path

    @staticmethod
    def load(path: str | Path) -> list[dict[str, Any]]:
        """Reads the records of a JSON Lines file written by a monitor."""
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


class _Blocks:
    """One ``[T, *shape]`` feature-gradient tensor handed over by backward/fork."""

    __slots__ = ("g",)

    def __init__(self, g: Tensor) -> None:
        self.g = g.detach()

    def flat(self) -> Tensor:
        f = self.g.reshape(self.g.shape[0], -1)
        return f if f.shape[1] <= 1 or f.stride(1) == 1 else f.contiguous()


def _gram(J: Tensor | Sequence[Tensor]) -> Tensor:
    from .combiners.base import as_matrix

    M, _ = as_matrix(J, "J")
    return ops.gram(M).to(torch.float64)
