"""An independent CoTNet / CoTNeXt classifier for the tests, written from
the layer definitions of the reference implementation (JDAI-CV/CoTNet,
``models/cotnet.py`` on the ResNet of ``models/resnet.py``) and with its
module names, so that its state dict is a reference checkpoint.

The reference aggregates values with a CUDA kernel (``aggregation_zeropad``):

    out[n, c, i, j] = sum_{a,b} w[n, c % Cw, a*k + b, i, j]
                      * x_zero_padded[n, c, i + a - k//2, j + b - k//2]

Here that sum is taken over ``F.unfold`` columns, a formulation of its own,
unlike the shifted multiply-adds of the plugin's ``local_aggregation``.
Eval mode and float64 are what the tests use; nothing here is optimised.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def aggregate_zeropad(x: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """x (N, C, H, W), w (N, Cw, k*k, H, W) -> (N, C, H, W); channel c is
    weighted by weight channel c % Cw."""
    N, C, H, W = x.shape
    Cw = w.shape[1]
    cols = F.unfold(x, k, padding=k // 2)  # (N, C*k*k, H*W), channel-major
    cols = cols.view(N, C // Cw, Cw, k * k, H, W)
    return (cols * w.unsqueeze(1)).sum(dim=3).reshape(N, C, H, W)


class ReferenceCoT(nn.Module):
    """The reference's ``CotLayer`` (``groups=1``) and ``CoXtLayer``
    (``groups=2``: grouped embeddings, the input and key channels
    interleaved, a key conv of 8 groups instead of 4)."""

    def __init__(self, dim: int, groups: int = 1, k: int = 3) -> None:
        super().__init__()
        self.k, self.groups = k, groups
        self.key_embed = nn.Sequential(
            nn.Conv2d(dim, dim, k, padding=k // 2, groups=4 * groups, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
        )
        self.embed = nn.Sequential(
            nn.Conv2d(2 * dim, dim // 2, 1, groups=groups, bias=False),
            nn.BatchNorm2d(dim // 2),
            nn.ReLU(),
            nn.Conv2d(dim // 2, k * k * dim // 8, 1, groups=groups),
            nn.GroupNorm(dim // 8, k * k * dim // 8),
        )
        self.conv1x1 = nn.Sequential(
            nn.Conv2d(dim, dim, 1, groups=groups, bias=False), nn.BatchNorm2d(dim)
        )
        self.bn = nn.BatchNorm2d(dim)
        hidden = max(dim * 2 // 4, 32)
        self.se = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        g = self.groups
        key = self.key_embed(x)
        if g == 1:
            qk = torch.cat([x, key], dim=1)
        else:  # x0, k0, x1, k1, ...
            qk = torch.cat([x.unsqueeze(2), key.unsqueeze(2)], dim=2)
            qk = qk.view(B, 2 * C, H, W)
        w = self.embed(qk).view(B * g, -1, self.k * self.k, H, W)
        v = self.conv1x1(x).view(B * g, C // g, H, W)
        v = aggregate_zeropad(v, w, self.k).view(B, C, H, W)
        v = self.bn(v)
        v = v * torch.sigmoid(v)  # swish
        pair = torch.stack([v, key], dim=2)  # (B, C, 2, H, W)
        attn = self.se(pair.sum(dim=2).mean((2, 3), keepdim=True))
        attn = attn.view(B, C, 2).softmax(dim=2)
        return (pair * attn.view(B, C, 2, 1, 1)).sum(dim=2)


class ReferenceBottleneck(nn.Module):
    def __init__(
        self, inplanes: int, planes: int, stride: int, cardinality: int, base_width: int
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # the reference pools by 2 before the CoT layer of a strided block
        self.avd = nn.AvgPool2d(3, 2, padding=1) if stride > 1 else None
        self.conv2 = ReferenceCoT(width, groups=cardinality)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        if self.avd is not None:
            y = self.avd(y)
        y = self.bn3(self.conv3(self.conv2(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ReferenceCoTNet(nn.Module):
    """The reference's ResNet with CoT bottlenecks: 7x7/2 stem, max-pool,
    layer1..4 (64..512 planes, stride 1, 2, 2, 2), average pool, ``fc``.
    ``cotnet50``: depths (3, 4, 6, 3), cardinality 1, base width 64;
    ``cotnext50_2x48d``: cardinality 2, base width 48."""

    def __init__(
        self,
        depths: tuple = (3, 4, 6, 3),
        cardinality: int = 1,
        base_width: int = 64,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, depth in enumerate(depths):
            planes = 64 * 2**i
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(
                    ReferenceBottleneck(
                        inplanes, planes, stride, cardinality, base_width
                    )
                )
                inplanes = planes * 4
            setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        for i in range(4):
            x = getattr(self, f'layer{i + 1}')(x)
        return self.fc(x.mean((2, 3)))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinctive values for every tensor a mapping could confuse: weights
    scaled by 1/sqrt(fan-in), norm affines around 1 and 0, BatchNorm
    statistics away from (0, 1). Zero-initialised last BNs would silence
    whole residual branches; here none stays zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif name.endswith('weight'):  # BN / GN scales
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model
