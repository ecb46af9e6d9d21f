r"""Data sets of the benchmark study: two that need no download, two loaders for the public ones.

- ``multidigits``: scikit-learn's bundled 8x8 handwritten digits (real scans), two per canvas;
  tasks: left digit, right digit and (optionally) the parity of their sum (classification).
- ``scenes``: procedural 64x64 scenes (a slanted background plane, rectangles, triangles and
  spheres at random depths) rendered with semantic labels, depth and surface normals: the three
  NYUv2 tasks, small enough for a CPU.
- ``nyuv2`` / ``cityscapes``: the preprocessed ``.npy`` layout distributed with MTAN and used by
  LibMTL (see :func:`load_npy_benchmark` for what is assumed).

Every builder is deterministic in its ``seed``; a data set is a :class:`MultiTaskData` holding
tensors for the train and the held-out split and one :class:`TaskSpec` per task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TaskSpec",
    "MultiTaskData",
    "make_multidigits",
    "make_scenes",
    "load_npy_benchmark",
    "load_dataset",
    "DATASETS",
]

DATASETS = ("multidigits", "scenes", "nyuv2", "cityscapes")


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, kind (``classification``, ``segmentation``, ``depth``, ``normal``)
    and output channels (classes for the first two, 1 for depth, 3 for normals)."""

    name: str
    kind: str
    channels: int


@dataclass
class MultiTaskData:
    """Inputs ``x`` ``[N, C, H, W]`` float32 and one target tensor per task, for each split."""

    name: str
    tasks: list[TaskSpec]
    x_train: Tensor
    y_train: list[Tensor]
    x_test: Tensor
    y_test: list[Tensor]

    @property
    def dense(self) -> bool:
        return self.tasks[0].kind != "classification"

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    def subset_tasks(self, index: int) -> MultiTaskData:
        """The same data with one task only (for single-task baselines)."""
        return MultiTaskData(self.name, [self.tasks[index]], self.x_train,
                             [self.y_train[index]], self.x_test, [self.y_test[index]])


# ---- multidigits ------------------------------------------------------------------------


def make_multidigits(n_train: int = 4000, n_test: int = 1000, *, seed: int = 0,
                     parity: bool = True, noise: float = 0.1, scale: int = 1) -> MultiTaskData:
    r"""Two of scikit-learn's 8x8 digit scans side by side on a ``[1, 8s + 2, 16s + 4]`` canvas
    (``s = scale``; ``[1, 10, 20]`` by default).

    The 1797 source scans are split 75/25 (by a permutation drawn from ``seed``) before any
    pair is made, so no scan appears in both splits. Each digit is upscaled ``scale`` times
    (nearest neighbour) and placed with a random jitter of up to 2 pixels in its half;
    Gaussian noise of standard deviation ``noise`` is added (pixel range [0, 1]). Tasks:
    ``left`` and ``right`` (10 classes each) and, with ``parity``, ``parity`` = (left + right)
    mod 2.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    cut = int(0.75 * len(images))
    pools = (order[:cut], order[cut:])

    def compose(pool: np.ndarray, n: int) -> tuple[Tensor, list[Tensor]]:
        left = rng.choice(pool, n)
        right = rng.choice(pool, n)
        s = 8 * scale
        canvas = np.zeros((n, 1, s + 2, 2 * s + 4), np.float32)
        big = images.repeat(scale, axis=1).repeat(scale, axis=2)  # [N, s, s]
        jit = rng.integers(0, 3, size=(n, 4))
        for i in range(n):
            r0, c0, r1, c1 = jit[i]
            canvas[i, 0, r0:r0 + s, c0:c0 + s] = big[left[i]]
            right_box = canvas[i, 0, r1:r1 + s, s + 2 + c1:2 * s + 2 + c1]
            np.maximum(right_box, big[right[i]], out=right_box)
        canvas += noise * rng.standard_normal(canvas.shape).astype(np.float32)
        ys = [torch.from_numpy(labels[left]), torch.from_numpy(labels[right])]
        if parity:
            ys.append((ys[0] + ys[1]) % 2)
        return torch.from_numpy(canvas), ys

    x_train, y_train = compose(pools[0], n_train)
    x_test, y_test = compose(pools[1], n_test)
    tasks = [TaskSpec("left", "classification", 10), TaskSpec("right", "classification", 10)]
    if parity:
        tasks.append(TaskSpec("parity", "classification", 2))
    return MultiTaskData("multidigits", tasks, x_train, y_train, x_test, y_test)


# ---- scenes -----------------------------------------------------------------------------

SCENE_CLASSES = ("background", "box", "triangle", "sphere")


def _unit(nx: float, ny: float) -> np.ndarray:
    """The unit normal (nx, ny, 1)/|.| as a [3, 1, 1] array (a plane's constant normal)."""
    n = np.array([nx, ny, 1.0], np.float32)
    return (n / np.linalg.norm(n))[:, None, None]


def _render_scene(rng: np.random.Generator, size: int, max_shapes: int):
    """One scene: image [3,H,W], label [H,W], depth [1,H,W], normal [3,H,W]."""
    H = W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    u, v = xx / (W - 1) - 0.5, yy / (H - 1) - 0.5  # in [-0.5, 0.5]
    # Background: a plane z = c + a u + b v, farther at the top (a floor seen at an angle).
    a, b = rng.uniform(-0.5, 0.5), rng.uniform(-2.0, -0.5)
    depth = 6.0 + a * u + b * v
    normal = np.broadcast_to(_unit(-a, -b), (3, H, W)).copy()
    label = np.zeros((H, W), np.int64)
    albedo = np.broadcast_to(rng.uniform(0.3, 0.7, 3)[:, None, None], (3, H, W)).copy()
    shapes = []
    for _ in range(rng.integers(1, max_shapes + 1)):
        shapes.append((rng.integers(1, 4), rng.uniform(1.5, 5.0)))
    shapes.sort(key=lambda s: -s[1])  # painter's order: far first
    for cls, z0 in shapes:
        cx, cy = rng.uniform(-0.35, 0.35, 2)
        r = rng.uniform(0.08, 0.2)
        color = rng.uniform(0.1, 1.0, 3)
        if cls == 3:  # sphere: curved depth and normals
            d2 = ((u - cx) ** 2 + (v - cy) ** 2) / r**2
            mask = d2 < 1.0
            h = np.sqrt(np.clip(1.0 - d2, 0.0, None))
            n = np.stack([(u - cx) / r, (v - cy) / r, h])
            z = z0 - r * 4.0 * h
        else:  # a slanted planar box or triangle
            su, sv = rng.uniform(-1.0, 1.0, 2)
            if cls == 1:
                hw, hh = r, rng.uniform(0.6, 1.4) * r
                mask = (np.abs(u - cx) < hw) & (np.abs(v - cy) < hh)
            else:
                # upward triangle: below the apex, inside the two slanted edges
                top, bottom = cy - r, cy + r
                half = (v - top) / (2 * r) * r * 1.2
                mask = (v > top) & (v < bottom) & (np.abs(u - cx) < half)
            z = z0 + su * (u - cx) + sv * (v - cy)
            n = np.broadcast_to(_unit(-su, -sv), (3, H, W))
        mask = mask & (z < depth)
        depth = np.where(mask, z, depth)
        normal = np.where(mask[None], n, normal)
        albedo = np.where(mask[None], color[:, None, None], albedo)
        label = np.where(mask, cls, label)
    light = np.array([0.4, -0.5, 0.77], np.float32)
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(np.einsum("chw,c->hw", normal, light), 0.0, None)
    image = albedo * shade[None] + 0.03 * rng.standard_normal((3, H, W))
    return (image.astype(np.float32), label, depth[None].astype(np.float32),
            normal.astype(np.float32))


def make_scenes(n_train: int = 1200, n_test: int = 300, *, seed: int = 0, size: int = 64,
                max_shapes: int = 4) -> MultiTaskData:
    r"""Procedural scenes with the three NYUv2 tasks: segmentation (4 classes: background,
    box, triangle, sphere), depth (positive, in arbitrary units, ~1-7) and unit surface
    normals (camera frame, z towards the viewer).

    Objects have random colours, so the class must be read from shape and shading, not hue;
    boxes and triangles are slanted planes (constant normals), spheres bulge towards the
    camera. A z-buffer resolves occlusion. The image is Lambertian shading of the albedo under
    one directional light, plus noise. Train and test scenes come from separate streams of
    one generator seeded by ``seed``.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    rng_train, rng_test = (np.random.default_rng(s) for s in
                           np.random.SeedSequence(seed).spawn(2))

    def build(rng, n):
        out = [_render_scene(rng, size, max_shapes) for _ in range(n)]
        cols = list(zip(*out, strict=True))
        return torch.from_numpy(np.stack(cols[0])), [torch.from_numpy(np.stack(c))
                                                     for c in cols[1:]]

    x_train, y_train = build(rng_train, n_train)
    x_test, y_test = build(rng_test, n_test)
    tasks = [TaskSpec("segmentation", "segmentation", len(SCENE_CLASSES)),
             TaskSpec("depth", "depth", 1), TaskSpec("normal", "normal", 3)]
    return MultiTaskData("scenes", tasks, x_train, y_train, x_test, y_test)


# ---- the public benchmarks' .npy layout -------------------------------------------------

_NPY_TASKS = {
    "nyuv2": ([TaskSpec("segmentation", "segmentation", 13), TaskSpec("depth", "depth", 1),
               TaskSpec("normal", "normal", 3)], ("label", "depth", "normal")),
    "cityscapes": ([TaskSpec("segmentation", "segmentation", 7), TaskSpec("depth", "depth", 1)],
                   ("label", "depth")),
}


def _expected(name: str) -> str:
    folders = ("image",) + _NPY_TASKS[name][1]
    return ", ".join(f"{{train,val}}/{f}/<i>.npy" for f in folders)


def load_npy_benchmark(name: str, root: str | os.PathLike, *, max_train: int | None = None,
                       max_test: int | None = None) -> MultiTaskData:
    r"""Load NYUv2 or Cityscapes as preprocessed by MTAN (Liu et al. 2019) and used by LibMTL.

    Assumed layout under ``root`` (one file per sample, ``<i>`` = 0, 1, ...; ``val`` is the
    held-out split):

    - ``{train,val}/image/<i>.npy``: ``[H, W, 3]`` float image (NYUv2 288x384, Cityscapes
      128x256);
    - ``{train,val}/label/<i>.npy``: ``[H, W]`` class ids, ``-1`` = unlabelled (13 classes for
      NYUv2, 7 for Cityscapes; Cityscapes' ``label_7`` folder name is accepted too);
    - ``{train,val}/depth/<i>.npy``: ``[H, W, 1]`` (or ``[H, W]``) depth, ``0`` = missing;
    - ``{train,val}/normal/<i>.npy`` (NYUv2 only): ``[H, W, 3]`` normals, all-zero = missing.

    Channels-last arrays are moved to channels-first. Raises ``FileNotFoundError`` naming the
    expected files when ``root`` does not hold them and ``ValueError`` on inconsistent shapes.
    """
    if name not in _NPY_TASKS:
        raise ValueError(f"name must be 'nyuv2' or 'cityscapes', got {name!r}")
    if root is None:
        raise ValueError(f"{name} needs --root: a folder holding {_expected(name)}")
    tasks, folders = _NPY_TASKS[name]
    splits = []
    for split, limit in (("train", max_train), ("val", max_test)):
        base = os.path.join(os.fspath(root), split)
        dirs = {}
        for f in ("image",) + folders:
            cand = [os.path.join(base, f)]
            if f == "label":
                cand += [os.path.join(base, "label_7"), os.path.join(base, "label_19")]
            found = next((c for c in cand if os.path.isdir(c)), None)
            if found is None:
                raise FileNotFoundError(
                    f"{name}: missing folder {cand[0]!r}; expected {_expected(name)} under "
                    f"{os.fspath(root)!r} (the MTAN/LibMTL preprocessed layout)")
            dirs[f] = found
        n = len([p for p in os.listdir(dirs["image"]) if p.endswith(".npy")])
        if n == 0:
            raise FileNotFoundError(f"{name}: no .npy files in {dirs['image']!r}; expected "
                                    f"{_expected(name)}")
        n = n if limit is None else min(n, limit)
        cols: dict[str, list[np.ndarray]] = {f: [] for f in dirs}
        for i in range(n):
            for f, d in dirs.items():
                path = os.path.join(d, f"{i}.npy")
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{name}: missing {path!r}; expected {_expected(name)}"
                                            " with indices 0..N-1")
                arr = np.load(path)
                if f == "label":
                    arr = arr.squeeze()
                    if arr.ndim != 2:
                        raise ValueError(f"{name}: {path!r} must be [H, W], got {arr.shape}")
                else:
                    if arr.ndim == 2:
                        arr = arr[..., None]
                    if arr.ndim != 3:
                        raise ValueError(f"{name}: {path!r} must be [H, W, C], got {arr.shape}")
                    arr = np.moveaxis(arr, -1, 0)
                cols[f].append(arr)
        try:
            x = torch.from_numpy(np.stack(cols["image"]).astype(np.float32))
            ys = [torch.from_numpy(np.stack(cols["label"]).astype(np.int64))]
            ys += [torch.from_numpy(np.stack(cols[f]).astype(np.float32)) for f in folders[1:]]
        except ValueError as exc:
            raise ValueError(f"{name}: samples under {base!r} differ in shape ({exc})") from None
        hw = tuple(x.shape[-2:])
        for f, y in zip(folders, ys, strict=True):
            if tuple(y.shape[-2:]) != hw:
                raise ValueError(f"{name}: {f} maps are {tuple(y.shape[-2:])}, images are {hw}")
        if x.shape[1] != 3:
            raise ValueError(f"{name}: images must have 3 channels, got {x.shape[1]}")
        splits.append((x, ys))
    (x_train, y_train), (x_test, y_test) = splits
    return MultiTaskData(name, list(tasks), x_train, y_train, x_test, y_test)


def load_dataset(name: str, *, seed: int = 0, root: str | None = None, n_train: int | None = None,
                 n_test: int | None = None) -> MultiTaskData:
    """Build or load a data set by name (``multidigits``, ``scenes``, ``nyuv2``,
    ``cityscapes``); ``n_train``/``n_test`` size the synthetic ones and cap the loaded ones."""
    kw = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    if name == "multidigits":
        return make_multidigits(seed=seed, **kw)
    if name == "scenes":
        return make_scenes(seed=seed, **kw)
    if name in _NPY_TASKS:
        return load_npy_benchmark(name, root, max_train=n_train, max_test=n_test)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
