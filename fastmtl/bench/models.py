r"""Backbones and heads of the benchmark study (torchvision models, ``weights=None``).

- ``resnet18``: torchvision's ResNet-18 (its ``BasicBlock``, layout ``[2, 2, 2, 2]``), adapted to
  small inputs as for CIFAR: a 3x3 stem convolution of stride ``stem_stride`` (1 or 2) and no
  max-pool, or (``stem_stride=4``) a stride-2 stem followed by torchvision's max-pool.
  ``width`` scales the four stages (``width, 2w, 4w, 8w``); ``width=64`` is torchvision's
  network exactly (11.2 M encoder parameters), smaller widths make the CPU study affordable.
- ``mobilenet``: torchvision's ``mobilenet_v3_small`` feature extractor (``width_mult`` =
  ``width / 16``), its first convolution's stride set to ``stem_stride``.

Classification data sets get a pooled ``[B, C]`` shared representation and two-layer MLP
heads; dense data sets get the ``[B, C, h, w]`` feature map and convolutional heads that
upsample to the input size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import TaskSpec

__all__ = ["make_encoder", "make_heads", "MultiTaskNet", "BACKBONES", "count_parameters", "predict"]

BACKBONES = ("resnet18", "mobilenet")


class _ResNet18(nn.Module):
    def __init__(self, in_channels: int, width: int, stem_stride: int) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, [2, 2, 2, 2])
        if width != 64:
            # Rebuild the stages at the scaled widths with torchvision's own _make_layer.
            net.inplanes = width
            net.layer1 = net._make_layer(BasicBlock, width, 2)
            net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
            net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
            net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
            for m in net.modules():  # torchvision's initialisation for the new stages
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        net.conv1 = nn.Conv2d(in_channels, width, 3, min(stem_stride, 2), 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.bn1 = nn.BatchNorm2d(width)
        if stem_stride != 4:  # 4: keep torchvision's 3x3/2 max-pool after a stride-2 stem
            net.maxpool = nn.Identity()
        del net.fc, net.avgpool
        self.net = net
        self.out_channels = 8 * width

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


class _MobileNet(nn.Module):
    def __init__(self, in_channels: int, width: int, stem_stride: int) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_small

        feats = mobilenet_v3_small(weights=None, width_mult=width / 16).features
        stem = feats[0][0]
        feats[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stem_stride, 1, bias=False)
        self.net = feats
        self.out_channels = feats[-1].out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_encoder(backbone: str, in_channels: int, *, width: int = 16, stem_stride: int = 1,
                 pooled: bool = False) -> nn.Module:
    """The shared encoder; ``pooled`` appends global average pooling (``[B, C]`` output)."""
    if backbone == "resnet18":
        enc = _ResNet18(in_channels, width, stem_stride)
    elif backbone == "mobilenet":
        enc = _MobileNet(in_channels, width, stem_stride)
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if not pooled:
        return enc
    seq = nn.Sequential(enc, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    seq.out_channels = enc.out_channels
    return seq


class _DenseHead(nn.Module):
    def __init__(self, cin: int, cout: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                                  nn.ReLU(), nn.Conv2d(hidden, cout, 1))

    def forward(self, z: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.body(z), size=size, mode="bilinear", align_corners=False)


def make_heads(tasks: list[TaskSpec], cin: int, *, hidden: int = 64) -> nn.ModuleList:
    """One head per task: MLP for classification, conv + bilinear upsampling for dense tasks."""
    heads = []
    for t in tasks:
        if t.kind == "classification":
            heads.append(nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(),
                                       nn.Linear(hidden, t.channels)))
        else:
            heads.append(_DenseHead(cin, t.channels, hidden))
    return nn.ModuleList(heads)


class MultiTaskNet(nn.Module):
    """Shared encoder + one head per task; ``head_output(t, z, x)`` runs head ``t`` on ``z``.

    Depth heads end in a softplus (depth is positive) whose bias starts at
    ``softplus^{-1}(depth_init)``, so short CPU runs do not spend their steps finding the
    depth scale.
    """

    def __init__(self, backbone: str, tasks: list[TaskSpec], in_channels: int, *,
                 width: int = 16, stem_stride: int = 1, hidden: int = 64,
                 depth_init: float = 3.0) -> None:
        super().__init__()
        self.dense = tasks[0].kind != "classification"
        self.encoder = make_encoder(backbone, in_channels, width=width, stem_stride=stem_stride,
                                    pooled=not self.dense)
        self.heads = make_heads(tasks, self.encoder.out_channels, hidden=hidden)
        self.tasks = list(tasks)
        for head, t in zip(self.heads, tasks, strict=True):
            if t.kind == "depth":  # start near a typical depth: softplus(b) = depth_init
                nn.init.constant_(head.body[-1].bias, math.log(math.expm1(depth_init)))

    def head_output(self, t: int, z: Tensor, x: Tensor) -> Tensor:
        if self.dense:
            out = self.heads[t](z, tuple(x.shape[-2:]))
            if self.tasks[t].kind == "depth":
                out = F.softplus(out)  # depth is positive
            return out
        return self.heads[t](z)

    def forward(self, x: Tensor) -> list[Tensor]:
        z = self.encoder(x)
        return [self.head_output(t, z, x) for t in range(len(self.heads))]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def predict(model: MultiTaskNet, x: Tensor, batch: int = 256) -> list[Tensor]:
    """Outputs of every head on ``x`` in eval mode, concatenated over batches (on CPU)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs: list[list[Tensor]] = [[] for _ in model.heads]
    for i in range(0, x.shape[0], batch):
        for t, o in enumerate(model(x[i:i + batch].to(dev))):
            outs[t].append(o.float().cpu())
    model.train(was)
    return [torch.cat(o) for o in outs]
