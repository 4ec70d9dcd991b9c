"""Contextual Transformer layers (Li et al., "Contextual Transformer Networks
for Visual Recognition", TPAMI 2022) in pure PyTorch.

The reference aggregates values with CuPy kernels (GPU only);
:func:`local_aggregation` computes the same sum with k*k shifted
multiply-adds, on any device and differentiable by autograd.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer


def local_aggregation(
    x: torch.Tensor, weight: torch.Tensor, kernel_size: int = 3
) -> torch.Tensor:
    """Per-position local filtering with zero padding:

        out[n, c, i, j] = sum_{a,b} weight[n, c % Cw, a*k + b, i, j]
                          * x[n, c, i + a - k//2, j + b - k//2]

    The Cw weight channels are shared by channel groups of ``C / Cw``
    (channel ``c`` uses ``c % Cw``).

    Shapes: x (N, C, H, W), weight (N, Cw, k*k, H, W) -> (N, C, H, W)
    """
    N, C, H, W = x.shape
    Cw = weight.shape[1]
    if C % Cw:
        raise ValueError(f'{C} channels do not share {Cw} weight channels')
    k, r = kernel_size, kernel_size // 2
    padded = F.pad(x, (r, r, r, r)).view(N, C // Cw, Cw, H + 2 * r, W + 2 * r)
    out = None
    # One shifted multiply-add per kernel tap: no (N, C, k*k, H, W) unfold.
    for a in range(k):
        for b in range(k):
            term = padded[..., a : a + H, b : b + W] * weight[:, None, :, a * k + b]
            out = term if out is None else out + term
    return out.reshape(N, C, H, W)


class CoTLayer(nn.Module):
    """The CoT block that replaces a bottleneck's 3x3 conv.

    Static context: a k x k group conv over the input gives the keys.
    Dynamic context: [input, keys] -> 1x1 -> BN -> ReLU -> 1x1 -> GroupNorm
    gives per-position k x k weights (shared by groups of 8 channels) that
    aggregate the 1x1-embedded values locally. The two contexts are fused by
    split attention (softmax over the pair per channel).

    Args:
        channels (int): Channels ``C``.
        kernel_size (int): Local extent. Defaults to 3.
        groups (int): 1 for CoTNet, 2 for CoTNeXt (grouped embeddings and
            aggregation; the key conv then uses 8 groups instead of 4).
        norm_cfg (dict): BatchNorm config.

    Shapes: (B, C, H, W) -> (B, C, H, W)
    """

    share_planes = 8
    radix = 2

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        groups: int = 1,
        norm_cfg: dict = dict(type='BN'),
    ) -> None:
        super().__init__()
        C, k = channels, kernel_size
        self.kernel_size = k
        self.groups = groups

        def bn(n: int) -> nn.Module:
            return build_norm_layer(norm_cfg, n)[1]

        self.key_embed = nn.Sequential(
            nn.Conv2d(C, C, k, padding=k // 2, groups=4 * groups, bias=False),
            bn(C),
            nn.ReLU(inplace=True),
        )
        weights = k * k * C // self.share_planes
        self.embed = nn.Sequential(
            nn.Conv2d(2 * C, C // 2, 1, groups=groups, bias=False),
            bn(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, weights, 1, groups=groups),
            nn.GroupNorm(C // self.share_planes, weights),
        )
        self.conv1x1 = nn.Sequential(
            nn.Conv2d(C, C, 1, groups=groups, bias=False), bn(C)
        )
        self.bn = bn(C)
        attn = max(C * self.radix // 4, 32)
        self.se = nn.Sequential(
            nn.Conv2d(C, attn, 1),
            bn(attn),
            nn.ReLU(inplace=True),
            nn.Conv2d(attn, self.radix * C, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        g, kk = self.groups, self.kernel_size**2
        key = self.key_embed(x)
        if g == 1:
            qk = torch.cat([x, key], dim=1)
        else:  # CoTNeXt interleaves the two per channel before its groups
            qk = torch.stack([x, key], dim=2).view(B, 2 * C, H, W)
        weight = self.embed(qk).view(B * g, -1, kk, H, W)
        value = self.conv1x1(x).view(B * g, C // g, H, W)
        value = local_aggregation(value, weight, self.kernel_size)
        value = F.silu(self.bn(value.view(B, C, H, W)))

        gap = (value + key).mean((2, 3), keepdim=True)
        attn = self.se(gap).view(B, C, self.radix).softmax(dim=2)
        return value * attn[..., 0, None, None] + key * attn[..., 1, None, None]


class SEConv(nn.Module):
    """3x3 conv -> BN -> SiLU, gated per channel from its global mean
    (1x1 -> BN -> SiLU -> 1x1 -> sigmoid): ResNeSt's split-attention conv
    with radix 1, used by SE-CoTNetD in place of some CoT layers.

    Shapes: (B, Cin, H, W) -> (B, Cout, ceil(H/stride), ceil(W/stride))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm_cfg: dict = dict(type='BN'),
    ) -> None:
        super().__init__()
        attn = max(in_channels // 4, 32)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn0 = build_norm_layer(norm_cfg, out_channels)[1]
        self.fc1 = nn.Conv2d(out_channels, attn, 1)
        self.bn1 = build_norm_layer(norm_cfg, attn)[1]
        self.fc2 = nn.Conv2d(attn, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn0(self.conv(x)))
        gate = F.silu(self.bn1(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(self.fc2(gate))
