"""The candidate contexts of an S-NomMer block and the nominator choosing
between them (NomMer, CVPR 2022, Sec. 3).

Every candidate maps the normalized tokens (B, H, W, C) to (B, H, W, C) for
any H, W: padding to whole windows / DCT blocks happens inside and is cropped.
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer

from ...torch_compat import at_least_float32, promote_floats
from .attention import MultiheadSelfAttention, WindowMSA
from .dct import BlockDCT
from .shapes import crop_padding, pad_to_multiple


class ConvContext(nn.Module):
    """CNN context F_C: a ResNet bottleneck (1x1 -> 3x3 -> 1x1, BN, ReLU)
    with identity shortcut, width ``C / reduction``."""

    def __init__(
        self, embed_dims: int, reduction: int = 4, norm_cfg: dict = dict(type='BN')
    ) -> None:
        super().__init__()
        width = embed_dims // reduction
        self.conv1 = nn.Conv2d(embed_dims, width, 1, bias=False)
        self.norm1 = build_norm_layer(norm_cfg, width)[1]
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = build_norm_layer(norm_cfg, width)[1]
        self.conv3 = nn.Conv2d(width, embed_dims, 1, bias=False)
        self.norm3 = build_norm_layer(norm_cfg, embed_dims)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        # In place after BN (BN's backward needs its input, not its output):
        # one saved activation per pair instead of two.
        out = F.relu(self.norm1(self.conv1(x)), inplace=True)
        out = F.relu(self.norm2(self.conv2(out)), inplace=True)
        out = self.norm3(self.conv3(out)) + x
        return F.relu(out, inplace=True).permute(0, 2, 3, 1)


class LocalWindowContext(WindowMSA):
    """Local context F_L: window self-attention over non-overlapping
    windows with relative position bias (see :class:`WindowMSA`)."""


class _BlockGlobalContext(nn.Module):
    """Shared skeleton of the global candidates: summarise every N x N block
    into one token, run global MHSA over the block tokens, spread back."""

    def __init__(
        self, embed_dims: int, num_heads: int, block_size: int, norm_cfg: dict
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.embed_dims = embed_dims
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = MultiheadSelfAttention(embed_dims, num_heads)

    def summarize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hp, Wp, C) -> (B, Hp/N, Wp/N, C) block tokens."""
        raise NotImplementedError

    def spread(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) attended tokens -> (B, h*N, w*N, C)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x, padded = pad_to_multiple(x, self.block_size)
        tokens = self.summarize(x)
        _, h, w, _ = tokens.shape
        # BatchNorm wants channels first; the attention wants a sequence.
        # (the permutes are views: BN runs on the channels-last layout)
        tokens = self.norm(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        tokens = tokens.reshape(B, h * w, C)
        tokens = self.attn(tokens).view(B, h, w, C)
        return crop_padding(self.spread(tokens), H, W, padded)


def _grouped_1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Apply a (grouped) 1x1 conv to a channels-last map (B, h, w, Cin)."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class CompressedGlobalContext(_BlockGlobalContext):
    """Compressed global context F_G (the paper's CGCA): per-block DCT keeping
    the l x l lowest frequencies, grouped 1x1 ``compress`` to C channels, BN,
    global MHSA over the H/N x W/N block tokens, grouped 1x1 ``expand`` back
    to C*l*l coefficients, inverse DCT."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        block_size: int = 8,
        groups: int = 8,
        norm_cfg: dict = dict(type='BN'),
    ) -> None:
        super().__init__(embed_dims, num_heads, block_size, norm_cfg)
        self.dct = BlockDCT(block_size)
        coeffs = embed_dims * self.dct.keep**2
        self.compress = nn.Conv2d(coeffs, embed_dims, 1, groups=groups, bias=False)
        self.expand = nn.Conv2d(embed_dims, coeffs, 1, groups=groups, bias=False)

    def summarize(self, x: torch.Tensor) -> torch.Tensor:
        return _grouped_1x1(self.dct(x), self.compress)

    def spread(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dct.inverse(_grouped_1x1(tokens, self.expand))


class PooledGlobalContext(_BlockGlobalContext):
    """Ablation baseline for F_G (paper Table 4, "pooled global"): average
    pooling of N x N blocks instead of the DCT, nearest upsampling back."""

    def summarize(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x.permute(0, 3, 1, 2), self.block_size)
        return x.permute(0, 2, 3, 1)

    def spread(self, tokens: torch.Tensor) -> torch.Tensor:
        N = self.block_size
        return tokens.repeat_interleave(N, dim=1).repeat_interleave(N, dim=2)


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """softmax((logits + Gumbel noise) / tau) along the last dim.

    The noise is drawn with ``exponential_`` on the logits' own device, so it
    works on CPU and GPU alike.
    """
    gumbels = -torch.empty_like(logits).exponential_().log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


def select_nominated(feats: list, index: torch.Tensor) -> torch.Tensor:
    """``feats[index]`` per position: (B, H, W, C) candidates, (B, H, W)
    index. Equal to the one-hot weighted sum, without a (B, H, W, P, C) stack
    or products."""
    index = index.unsqueeze(-1)
    selected = feats[-1]
    for i in range(len(feats) - 2, -1, -1):
        selected = torch.where(index == i, feats[i], selected)
    return selected


def nominator_logits(
    summed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """(B, H, W, C) sum of candidates -> (B, H, W, P) logits, in fp32 (or
    fp64) even under autocast: the Gumbel sample is sensitive to
    half-precision rounding."""
    dtype = at_least_float32(summed.dtype)
    with torch.autocast(summed.device.type, enabled=False):
        return F.linear(summed.to(dtype), weight.to(dtype), bias.to(dtype))


def _sum(feats: list) -> torch.Tensor:
    return functools.reduce(operator.add, feats)


class ContextNominator(nn.Module):
    """Synergistic context nominator: per position, logits over the
    candidates from their sum; one-hot by hard Gumbel-softmax (training) or
    argmax (eval); the output is the nominated candidate. Logits are
    computed in fp32 (:func:`nominator_logits`).

    After every forward, :attr:`nomination` holds the chosen candidate index
    per position, (B, H, W) int64, detached (the paper's Fig. 4 maps).

    Shapes:
        feats: P candidates, each (B, H, W, C) -> (B, H, W, C)
    """

    def __init__(
        self, embed_dims: int, num_candidates: int = 3, tau: float = 1.0
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dims, num_candidates)
        self.tau = tau
        self.nomination: torch.Tensor | None = None

    def forward(self, feats: list) -> torch.Tensor:
        logits = nominator_logits(_sum(feats), self.fc.weight, self.fc.bias)
        if self.training:
            # hard Gumbel-softmax, straight through: the forward takes the
            # one-hot sample, the backward the soft sample's gradient
            soft = gumbel_softmax(logits, self.tau)
            index = soft.argmax(-1)
            hard = torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)
            # in the candidates' dtype: fp32 logits do not promote the output
            dtype = promote_floats([f.dtype for f in feats])
            weights = (hard - soft.detach() + soft).to(dtype)
            out = _sum([weights[..., p, None] * f for p, f in enumerate(feats)])
        else:
            index = logits.argmax(-1)
            out = select_nominated(feats, index)
        self.nomination = index.detach()
        return out


CONTEXT_NAMES = ('conv', 'window', 'global')  # the reference's order
GLOBAL_TYPES = ('dct', 'pooled')
FUSIONS = ('nominator', 'sum')


class NomMerMixer(nn.Module):
    """Token mixer of an S-NomMer block: the chosen candidate contexts,
    combined by the nominator (or summed, for the ablation).

    Args:
        embed_dims (int): Channels ``C``.
        num_heads (int): Heads of the window and global attention.
        window_size (int): Local window side.
        dct_block (int): N of the compressed global context.
        reduction (int): Bottleneck reduction of the conv context.
        contexts (tuple[str]): Subset of ``('conv', 'window', 'global')``.
        global_type (str): ``'dct'`` (CGCA) or ``'pooled'``.
        fusion (str): ``'nominator'`` or ``'sum'``.
        norm_cfg (dict): Norm of the BatchNorm layers.

    Shapes:
        x: (B, H, W, C) -> (B, H, W, C)
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int = 7,
        dct_block: int = 8,
        reduction: int = 4,
        contexts: tuple = CONTEXT_NAMES,
        global_type: str = 'dct',
        fusion: str = 'nominator',
        norm_cfg: dict = dict(type='BN'),
    ) -> None:
        super().__init__()
        contexts = tuple(contexts)
        unknown = [c for c in contexts if c not in CONTEXT_NAMES]
        if unknown or not contexts:
            raise ValueError(
                f'contexts must be a non-empty subset of '
                f'{CONTEXT_NAMES}, got {contexts}'
            )
        if global_type not in GLOBAL_TYPES:
            raise ValueError(
                f'global_type must be one of {GLOBAL_TYPES}, got {global_type!r}'
            )
        if fusion not in FUSIONS:
            raise ValueError(f'fusion must be one of {FUSIONS}, got {fusion!r}')
        # Keep the reference order whatever order the user gave.
        self.contexts = tuple(c for c in CONTEXT_NAMES if c in contexts)
        self.fusion = fusion
        if 'conv' in self.contexts:
            self.conv_context = ConvContext(embed_dims, reduction, norm_cfg)
        if 'window' in self.contexts:
            self.window_context = LocalWindowContext(embed_dims, num_heads, window_size)
        if 'global' in self.contexts:
            cls = (
                CompressedGlobalContext if global_type == 'dct' else PooledGlobalContext
            )
            self.global_context = cls(
                embed_dims, num_heads, dct_block, norm_cfg=norm_cfg
            )
        if fusion == 'nominator' and len(self.contexts) > 1:
            self.nominator = ContextNominator(embed_dims, len(self.contexts))
        else:
            self.nominator = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [getattr(self, f'{name}_context')(x) for name in self.contexts]
        if len(feats) == 1:
            return feats[0]
        if self.nominator is None:
            return _sum(feats)
        return self.nominator(feats)

    @property
    def nomination(self) -> torch.Tensor | None:
        return None if self.nominator is None else self.nominator.nomination
