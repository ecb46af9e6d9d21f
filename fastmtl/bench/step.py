"""Training-step benchmark: plain summed loss vs feature level vs parameter level.

A ResNet-18-style encoder (basic residual blocks, widths 32-64-128-256 at a CPU-friendly
size) with three dense heads (segmentation-like logits, depth, normals), as in the NYUv2
setting of arXiv 2402.03557. Every time is reported as a multiple of one plain step
(``sum(losses).backward()``) measured in the same process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from torch import nn

from .. import autograd as fa
from .combine import environment, time_call, time_ratio


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


def resnet18_encoder(width: int = 32) -> nn.Module:
    """ResNet-18 layout (2 basic blocks per stage, 4 stages), output stride 8."""
    w = [width, width * 2, width * 4, width * 8]
    layers = [nn.Conv2d(3, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()]
    cin = w[0]
    for i, cout in enumerate(w):
        stride = 1 if i in (0, 3) else 2
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers)


def dense_heads(cin: int, outs=(13, 1, 3)) -> nn.ModuleList:
    return nn.ModuleList(
        nn.Sequential(nn.Conv2d(cin, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, o, 1))
        for o in outs
    )


class PeakMemory:
    """Peak memory of a call, in MiB above the level before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset (exact, tensors only). CPU
    (Linux): the rise of the process's peak resident set (``VmHWM``) above its resident
    set before the call, after freed heap memory is handed back (``malloc_trim``) and the
    peak is reset (``/proc/self/clear_refs``); this counts every allocation, tensors and
    autograd's saved state alike, to page granularity. None where neither is available.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._libc = None
        if device.type == "cpu":
            try:
                import ctypes

                self._libc = ctypes.CDLL("libc.so.6")
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except (OSError, AttributeError):  # no glibc, or no /proc peak reset
                self._libc = None
        self.available = device.type == "cuda" or self._libc is not None
        self._base = 0.0

    @staticmethod
    def _status_kb(key: str) -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
        raise OSError(f"{key} not in /proc/self/status")

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        elif self._libc is not None:
            self._libc.malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._base = self._status_kb("VmRSS") / 1024

    def peak_mib(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self._base
        if self._libc is not None:
            return self._status_kb("VmHWM") / 1024 - self._base
        return None


def peak_memory_of(fn, device: torch.device, meter: PeakMemory | None = None) -> float | None:
    """MiB that one call of ``fn`` needs above what was held before it (see PeakMemory)."""
    meter = meter or PeakMemory(device)
    if not meter.available:
        return None
    fn()  # warm-up: first-call allocations (caches, lazy buffers) do not count
    meter.reset()
    fn()
    return meter.peak_mib()


@dataclass
class StepRow:
    method: str
    ratios: dict[str, float] = field(default_factory=dict)  # step time / plain step time
    peak_mb: dict[str, float] = field(default_factory=dict)
    memory_ratios: dict[str, float] = field(default_factory=dict)  # peak / plain peak


def _losses(heads, z, zs=None):
    return [heads[t](z if zs is None else zs[t]).pow(2).mean() for t in range(len(heads))]


def bench_step(methods=("mean", "pcgrad", "mgda", "cagrad"), *, device="cpu", batch=8,
               size=32, width=16, repeats=5, backbone="resnet18-style",
               log=print) -> tuple[float, list[StepRow]]:
    dev = torch.device(device)
    torch.manual_seed(0)
    if backbone == "resnet18-style":
        enc = resnet18_encoder(width).to(dev)
    else:  # torchvision's resnet18 / mobilenet_v3_small (stem stride 1)
        from .models import make_encoder

        enc = make_encoder(backbone, 3, width=width, stem_stride=1).to(dev)
    heads = dense_heads(getattr(enc, "out_channels", width * 8)).to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    params = list(enc.parameters()) + list(heads.parameters())

    def zero():
        for p in params:
            p.grad = None

    def plain():
        zero()
        sum(_losses(heads, enc(x))).backward()

    def feature(method):
        zero()
        z = enc(x)
        fa.backward(_losses(heads, z), features=z, combiner=method)

    def forked(method):
        zero()
        zs = fa.fork(enc(x), len(heads), method)
        sum(_losses(heads, None, zs)).backward()

    def parameter(method, batched):
        zero()
        fa.backward(_losses(heads, enc(x)), shared=enc.parameters(), combiner=method,
                    batched=batched)

    meter = PeakMemory(dev)
    t_plain = time_call(plain, dev, repeats)
    plain_mb = peak_memory_of(plain, dev, meter)
    rows = []
    for m in methods:
        row = StepRow(m)
        cases = {"feature": partial(feature, m), "fork": partial(forked, m),
                 "parameter loop": partial(parameter, m, False),
                 "parameter batched": partial(parameter, m, True)}
        for name, fn in cases.items():
            # each call alternates with a plain step, so both see the same load
            row.ratios[name] = time_ratio(fn, plain, dev, repeats)
            mb = peak_memory_of(fn, dev, meter)
            if mb is not None:
                row.peak_mb[name] = mb
                if plain_mb:
                    row.memory_ratios[name] = mb / plain_mb
        rows.append(row)
        log(f"  {m} done")
    return t_plain, rows, plain_mb


STEP_CASES = ("feature", "fork", "parameter loop", "parameter batched")


def format_step_table(rows: list[StepRow], memory: bool = False) -> str:
    """Time ratios to the plain step, or (``memory=True``) peak-memory ratios."""
    head = f"{'method':<8} " + " ".join(f"{c:>18}" for c in STEP_CASES)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [(r.memory_ratios if memory else r.ratios).get(c) for c in STEP_CASES]
        lines.append(f"{r.method:<8} " + " ".join(
            f"{v:>18.2f}" if v is not None else f"{'-':>18}" for v in cells))
    return "\n".join(lines)


def run(args) -> dict:
    """Entry point of ``fastmtl bench step``."""
    kwargs = dict(batch=4, size=32, width=16, repeats=3) if args.quick else \
        dict(batch=8, size=64, width=32, repeats=5)
    backbone = getattr(args, "backbone", "resnet18-style")
    kwargs["backbone"] = backbone
    print(f"fastmtl bench step: device={args.device}, {backbone} encoder, 3 dense heads "
          f"(ratios: step time / plain summed-loss step time)")
    t_plain, rows, plain_mb = bench_step(device=args.device, **kwargs)
    print()
    print(format_step_table(rows))
    if plain_mb:
        print(f"\npeak memory / plain step's peak memory ({plain_mb:.1f} MiB above the "
              f"resting level{'' if args.device == 'cuda' else ', resident set'})")
        print(format_step_table(rows, memory=True))
    result = {"environment": environment(), "config": kwargs, "plain_step_ms": t_plain * 1e3,
              "plain_peak_mb": plain_mb, "steps": [asdict(r) for r in rows]}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"\nwrote {args.json}")
    return result
