"""A literal, unoptimised NomMer classifier in the *reference checkpoint key
layout* (see ../shared/docs/nommer-architecture.md), written for the tests.

It follows the documented data flow step by step with the plainest operations
(explicit softmax attention, DCT as a fixed strided grouped conv, IDCT as a
grouped 1x1 conv + PixelShuffle, stacked candidates), eval mode. Its state dict
has the reference's key names, so it stands in for a reference checkpoint when
testing the converter, and its logits are the oracle for "the forward equals
the reference".

At 224-multiple inputs it is the reference; at other sizes it pads as
docs/backbones.md states, written out here: zero pixels or tokens appended at
the bottom and right (stem: to a multiple of 4, windows: to whole windows,
padded keys masked with -inf, DCT: to whole blocks, not masked), crops back,
-inf appended before the merges' 2x2 max-pool, and the position embedding
resized bicubically to the stage grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _alpha(k: int, n: int) -> float:
    return math.sqrt((1.0 if k == 0 else 2.0) / n)


def dct_conv_weight(channels: int, n: int) -> torch.Tensor:
    """(C*l*l, 1, N, N): output channel c*l*l + (u + v*l)."""
    l = (n + 1) // 2
    w = torch.zeros(l * l, 1, n, n, dtype=torch.float64)
    for v in range(l):
        for u in range(l):
            for y in range(n):
                for x in range(n):
                    w[u + v * l, 0, y, x] = (
                        _alpha(u, n)
                        * _alpha(v, n)
                        * math.cos((2 * y + 1) * v * math.pi / (2 * n))
                        * math.cos((2 * x + 1) * u * math.pi / (2 * n))
                    )
    return w.repeat(channels, 1, 1, 1)


def idct_conv_weight(channels: int, n: int) -> torch.Tensor:
    """(C*N*N, l*l, 1, 1): output channel c*N*N + (x + y*N), then
    PixelShuffle(N) puts it at row y, column x of the block."""
    l = (n + 1) // 2
    w = torch.zeros(n * n, l * l, 1, 1, dtype=torch.float64)
    for v in range(l):
        for u in range(l):
            for y in range(n):
                for x in range(n):
                    w[x + y * n, u + v * l, 0, 0] = (
                        _alpha(u, n)
                        * _alpha(v, n)
                        * math.cos((2 * y + 1) * v * math.pi / (2 * n))
                        * math.cos((2 * x + 1) * u * math.pi / (2 * n))
                    )
    return w.repeat(channels, 1, 1, 1)


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim)
        )

    def forward(self, x):
        return self.net(x)


def softmax_attention(q, k, v, bias=None):
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    return attn.softmax(-1) @ v


class GlobalAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(B, N, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = softmax_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return self.to_out(out)


class Bottleneck(nn.Module):
    def __init__(self, dim, reduction):
        super().__init__()
        w = dim // reduction
        self.conv1 = nn.Conv2d(dim, w, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, dim, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(dim)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + x)


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, w):
        super().__init__()
        self.heads, self.w = heads, w
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * w - 1) ** 2, heads) * 0.02
        )
        idx = torch.zeros(w * w, w * w, dtype=torch.long)
        for i in range(w * w):
            for j in range(w * w):
                dy = i // w - j // w + w - 1
                dx = i % w - j % w + w - 1
                idx[i, j] = dy * (2 * w - 1) + dx
        self.register_buffer('relative_position_index', idx)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (B, H, W, C)
        B, H, W, C = x.shape
        w = self.w
        Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        win = x.view(B, Hp // w, w, Wp // w, w, C).permute(0, 1, 3, 2, 4, 5)
        win = win.reshape(-1, w * w, C)
        # -inf on the keys that are padding, per window
        real = torch.zeros(B, Hp, Wp, dtype=torch.bool)
        real[:, :H, :W] = True
        real = real.view(B, Hp // w, w, Wp // w, w).permute(0, 1, 3, 2, 4)
        real = real.reshape(-1, 1, 1, w * w)
        key_mask = torch.zeros(real.shape).masked_fill(~real, float('-inf'))
        q, k, v = (
            self.qkv(win)
            .view(-1, w * w, 3, self.heads, C // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)
        ].view(w * w, w * w, -1)
        out = softmax_attention(q, k, v, bias.permute(2, 0, 1) + key_mask)
        out = self.proj(out.transpose(1, 2).reshape(-1, w * w, C))
        out = out.view(B, Hp // w, Wp // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(B, Hp, Wp, C)[:, :H, :W]


class DCTAttention(nn.Module):
    def __init__(self, dim, n, heads):
        super().__init__()
        l = (n + 1) // 2
        self.dct_conv_8x8 = nn.Conv2d(
            dim, dim * l * l, n, stride=n, groups=dim, bias=False
        )
        self.dct_conv_8x8.weight.data = dct_conv_weight(dim, n).to(
            torch.get_default_dtype()
        )
        self.dw = nn.Conv2d(dim * l * l, dim, 1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.attn = GlobalAttention(dim, heads)
        self.up = nn.Conv2d(dim, dim * l * l, 1, groups=8, bias=False)
        self.idct_conv = nn.Sequential(
            nn.Conv2d(dim * l * l, dim * n * n, 1, groups=dim, bias=False),
            nn.PixelShuffle(n),
        )
        self.idct_conv[0].weight.data = idct_conv_weight(dim, n).to(
            torch.get_default_dtype()
        )

    def forward(self, x):  # (B, C, H, W)
        H, W = x.shape[-2:]
        n = self.dct_conv_8x8.stride[0]
        x = F.pad(x, (0, -W % n, 0, -H % n))  # whole blocks, zeros
        coeffs = self.dct_conv_8x8(x)
        B, _, h, w = coeffs.shape
        t = self.bn1(self.dw(coeffs))
        t = self.attn(t.permute(0, 2, 3, 1).reshape(B, h * w, -1))
        t = self.up(t.transpose(1, 2).reshape(B, -1, h, w))
        return self.idct_conv(t)[..., :H, :W]


class HybridMixer(nn.Module):
    def __init__(self, dim, heads, w, n, reduction):
        super().__init__()
        self.cnn = Bottleneck(dim, reduction)
        self.attention = WindowAttention(dim, heads, w)
        self.attentionG = DCTAttention(dim, n, heads)
        self.fc = nn.Linear(dim, 3)

    def forward(self, x):  # (B, H, W, C), eval only
        f_c = self.cnn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        f_l = self.attention(x)
        f_g = self.attentionG(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        logits = self.fc(f_c + f_l + f_g)
        onehot = F.one_hot(logits.argmax(-1), 3).to(x.dtype)
        stacked = torch.stack([f_c, f_l, f_g], dim=-2)
        return (stacked * onehot.unsqueeze(-1)).sum(-2)


class Stage(nn.Module):
    def __init__(self, make_mixer, dim, depth, hidden):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PreNorm(dim, make_mixer()), PreNorm(dim, FeedForward(dim, hidden))]
            )
            for _ in range(depth)
        )

    def forward(self, x):
        for mix, ff in self.layers:
            x = x + mix(x)
            x = x + ff(x)
        return x


class Merge(nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.conv = nn.Conv2d(dim, out, 3, padding=1)
        self.norm = nn.LayerNorm(out)

    def forward(self, x):  # (B, H, W, C)
        x = self.conv(x.permute(0, 3, 1, 2))
        H, W = x.shape[-2:]
        # an odd last row / column pools alone: -inf never wins
        x = F.max_pool2d(F.pad(x, (0, W % 2, 0, H % 2), value=float('-inf')), 2)
        return self.norm(x.permute(0, 2, 3, 1))


class ReferenceLayoutNomMer(nn.Module):
    """Eval-mode NomMer classifier with the reference key names."""

    def __init__(
        self,
        embed_dims=96,
        depths=(2, 2, 8, 2),
        num_heads=(2, 2, 4, 8),
        bottleneck_ratios=(2, 2),
        window=7,
        dct_blocks=(8, 4),
        num_classes=1000,
        img_size=224,
    ):
        super().__init__()
        C = embed_dims
        self.cnn1 = nn.Conv2d(3, C, 4, stride=4, bias=False)
        self.bn1 = nn.BatchNorm2d(C)
        self.pos_embedding = nn.Parameter(
            torch.randn(1, img_size // 16, img_size // 16, 4 * C)
        )
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8 * C))
        for i in range(2):
            d = C * 2**i
            setattr(
                self,
                f'transformer{i + 1}',
                Stage(
                    lambda d=d, i=i: HybridMixer(
                        d, num_heads[i], window, dct_blocks[i], bottleneck_ratios[i]
                    ),
                    d,
                    depths[i],
                    2 * d,
                ),
            )
        for i in range(2, 4):
            d = C * 2**i
            setattr(
                self,
                f'transformer{i + 1}',
                Stage(
                    lambda d=d, i=i: GlobalAttention(d, num_heads[i]),
                    d,
                    depths[i],
                    2 * d if i == 2 else d,
                ),
            )
        for i in range(3):
            setattr(self, f'merge{i + 1}', Merge(C * 2**i, C * 2 ** (i + 1)))
        self.mlp_head = nn.Sequential(
            nn.LayerNorm(8 * C), nn.Linear(8 * C, num_classes)
        )

    def forward(self, img):
        H, W = img.shape[-2:]
        img = F.pad(img, (0, -W % 4, 0, -H % 4))
        x = F.relu(self.bn1(self.cnn1(img))).permute(0, 2, 3, 1)
        x = self.merge1(self.transformer1(x))
        x = self.merge2(self.transformer2(x))
        B, H, W, C = x.shape
        pos = self.pos_embedding
        if pos.shape[1:3] != (H, W):
            pos = F.interpolate(
                pos.permute(0, 3, 1, 2), (H, W), mode='bicubic', align_corners=False
            ).permute(0, 2, 3, 1)
        x = x + pos
        x = self.transformer3(x.reshape(B, H * W, C)).view(B, H, W, C)
        x = self.merge3(x)
        B, H, W, C = x.shape
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, H * W, C)], 1)
        x = self.transformer4(x)
        return self.mlp_head(x[:, 0])


def randomize_(model: nn.Module, seed: int = 0, fan_in: bool = False) -> nn.Module:
    """Give every learnable tensor and BN statistic distinctive random
    values (the fixed DCT bases are left as they are), so a wrong mapping
    cannot go unnoticed. The default std 0.2 makes every layer amplify its
    input (and float rounding) several times over, which float64 tolerates;
    ``fan_in=True`` scales each weight matrix by 1 / sqrt(fan-in) instead,
    as trained weights roughly are, for comparisons in float32."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'dct_conv' in name or 'idct_conv' in name:
                continue
            std = 0.2
            if fan_in and p.dim() > 1:
                std = p[0].numel() ** -0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.add_(1.0)
            elif isinstance(m, nn.LayerNorm):
                m.weight.add_(1.0)
    return model
