r"""Task losses and the standard task metrics of the multi-task benchmarks.

Metrics (all over the whole evaluation set, not averaged per batch):

- classification: ``accuracy`` (fraction correct);
- segmentation: ``miou`` = mean over classes that occur (in prediction or target) of
  :math:`|P_c \cap Y_c| / |P_c \cup Y_c|`, and ``pixel_acc``; target ids < 0 are ignored;
- depth: ``abs_err`` = mean :math:`|\hat d - d|` and ``rel_err`` = mean :math:`|\hat d - d| / d`
  over valid pixels (:math:`d > 0`; 0 marks missing depth, as in the NYUv2 files);
- normals: the angle between prediction and target, in degrees, over valid pixels (non-zero
  target): ``angle_mean``, ``angle_median`` and the fraction ``within_11.25``, ``within_22.5``,
  ``within_30``.

:data:`HIGHER_IS_BETTER` gives the direction of every metric (for Δm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import TaskSpec

__all__ = [
    "task_loss",
    "classification_metrics",
    "segmentation_metrics",
    "depth_metrics",
    "normal_metrics",
    "task_metrics",
    "HIGHER_IS_BETTER",
]

HIGHER_IS_BETTER = {
    "accuracy": True, "miou": True, "pixel_acc": True, "abs_err": False, "rel_err": False,
    "angle_mean": False, "angle_median": False, "within_11.25": True, "within_22.5": True,
    "within_30": True,
}


def task_loss(task: TaskSpec, pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy (ignore id -1) for labels, L1 on valid depth, 1 - cosine on valid normals."""
    if task.kind in ("classification", "segmentation"):
        return F.cross_entropy(pred, target, ignore_index=-1)
    if task.kind == "depth":
        mask = (target > 0).to(pred.dtype)
        return ((pred - target).abs() * mask).sum() / mask.sum().clamp_min(1.0)
    if task.kind == "normal":
        mask = (target.abs().sum(1) > 0).to(pred.dtype)
        cos = F.cosine_similarity(pred, target, dim=1, eps=1e-6)
        return ((1.0 - cos) * mask).sum() / mask.sum().clamp_min(1.0)
    raise ValueError(f"unknown task kind {task.kind!r}")


def classification_metrics(logits: Tensor, target: Tensor) -> dict[str, float]:
    """``accuracy``: the fraction of argmax predictions equal to the target."""
    if logits.shape[0] != target.shape[0]:
        raise ValueError(f"logits and target disagree in batch: {logits.shape} vs {target.shape}")
    return {"accuracy": (logits.argmax(1) == target).double().mean().item()}


def segmentation_metrics(logits: Tensor, target: Tensor, n_classes: int) -> dict[str, float]:
    """``miou`` and ``pixel_acc`` from a confusion matrix; target ids < 0 are ignored.

    A class absent from both prediction and target is left out of the mean (no 0/0).
    """
    pred = logits.argmax(1).reshape(-1)
    target = target.reshape(-1)
    if pred.shape != target.shape:
        raise ValueError("logits [N, C, H, W] and target [N, H, W] disagree in shape")
    valid = target >= 0
    pred, target = pred[valid], target[valid]
    if target.numel() == 0:
        return {"miou": float("nan"), "pixel_acc": float("nan")}
    conf = torch.bincount(target * n_classes + pred, minlength=n_classes**2)
    conf = conf.reshape(n_classes, n_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return {"miou": (inter[present] / union[present]).mean().item(),
            "pixel_acc": (inter.sum() / conf.sum()).item()}


def depth_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """``abs_err`` and ``rel_err`` over pixels with target depth > 0."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    valid = target > 0
    if not valid.any():
        return {"abs_err": float("nan"), "rel_err": float("nan")}
    err = (pred[valid] - target[valid]).abs().double()
    return {"abs_err": err.mean().item(), "rel_err": (err / target[valid].double()).mean().item()}


def normal_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """Angle (degrees) between predicted and target normals ``[N, 3, H, W]`` over valid pixels
    (non-zero target): mean, median and the fraction within 11.25, 22.5 and 30 degrees."""
    if pred.shape != target.shape or pred.dim() < 2 or pred.shape[1] != 3:
        raise ValueError(f"pred and target must both be [N, 3, ...], got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    valid = target.abs().sum(1) > 0
    cos = F.cosine_similarity(pred.double(), target.double(), dim=1, eps=1e-12)[valid]
    if cos.numel() == 0:
        keys = ("angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30")
        return dict.fromkeys(keys, float("nan"))
    ang = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
    return {"angle_mean": ang.mean().item(),
            # torch.median is the lower median; quantile interpolates (the usual median)
            "angle_median": ang.quantile(0.5).item() if ang.numel() < 2**24 else
            ang.median().item(),
            "within_11.25": (ang < 11.25).double().mean().item(),
            "within_22.5": (ang < 22.5).double().mean().item(),
            "within_30": (ang < 30.0).double().mean().item()}


def task_metrics(task: TaskSpec, pred: Tensor, target: Tensor) -> dict[str, float]:
    """The metrics of ``task.kind`` for a whole evaluation set."""
    if task.kind == "classification":
        return classification_metrics(pred, target)
    if task.kind == "segmentation":
        return segmentation_metrics(pred, target, task.channels)
    if task.kind == "depth":
        return depth_metrics(pred, target)
    if task.kind == "normal":
        return normal_metrics(pred, target)
    raise ValueError(f"unknown task kind {task.kind!r}")

