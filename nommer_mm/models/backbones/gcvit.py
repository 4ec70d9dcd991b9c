"""GC ViT backbone (Hatamizadeh et al., "Global Context Vision
Transformers", ICML 2023), dense-ready.

Layout (C = embed_dims), channels-last tokens inside the levels:

    patch_embed  conv 3x3/2 -> ReduceSize (keeps C)        (B, H/4,  W/4,  C)
    level 0      local / global-query window blocks         (B, H/4,  W/4,  C)
                 -> ReduceSize                              (B, H/8,  W/8, 2C)
    level 1                                                 ...
    level 3      no ReduceSize                              (B, H/32, W/32, 8C)

Blocks alternate local window attention (even) and global-query window
attention (odd). Each level's global query comes from its input through
FeatExtract blocks (depth-wise conv, GELU, squeeze-excite, 1x1 conv, max-pool)
and is resized to the window when the input is not the training size. Module
names follow the reference (NVlabs/GCVit), so its checkpoints load after a
few renames (``nommer_mm.converters.peers``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath
from mmengine.registry import MODELS

from ..layers.attention import GlobalQueryWindowMSA, WindowMSA
from ..layers.mlp import Mlp
from ..layers.shapes import same_size
from .common import (
    NORM_NAMES,
    StagedBackbone,
    arch_table,
    check_arch_values,
    check_common,
    check_ints,
    empty_batch_safe,
    freeze,
    init_linear_and_norms,
    maybe_checkpoint,
    parse_arch,
    parse_out_indices,
    pretrained_init_cfg,
    register_parts,
    stage_drop_paths,
)


class SqueezeExcite(nn.Module):
    """Channel gate from the global mean: Linear -> GELU -> Linear -> sigmoid
    (no biases). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(channels * ratio)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.GELU(),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


def _fused_mbconv(channels: int) -> nn.Sequential:
    """Depth-wise 3x3 -> GELU -> squeeze-excite -> 1x1, used as a residual
    branch by ReduceSize and FeatExtract (keys ``conv.0``, ``conv.2.fc.*``,
    ``conv.3``)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
        nn.GELU(),
        SqueezeExcite(channels),
        nn.Conv2d(channels, channels, 1, bias=False),
    )


class ReduceSize(nn.Module):
    """LN -> x + MBConv(x) -> conv 3x3 stride 2 -> LN.
    (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C or 2C)."""

    def __init__(self, channels: int, keep_dim: bool = False) -> None:
        super().__init__()
        out = channels if keep_dim else 2 * channels
        self.norm1 = nn.LayerNorm(channels)
        self.conv = _fused_mbconv(channels)
        self.reduction = nn.Conv2d(channels, out, 3, 2, 1, bias=False)
        self.norm2 = nn.LayerNorm(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x).permute(0, 3, 1, 2)
        x = self.reduction(x + self.conv(x))
        return self.norm2(x.permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """conv 3x3 stride 2 -> ReduceSize: (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, in_channels: int, embed_dims: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dims, 3, 2, 1)
        self.conv_down = ReduceSize(embed_dims, keep_dim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(self.proj(x).permute(0, 2, 3, 1))


class FeatExtract(nn.Module):
    """x + MBConv(x), then optionally max-pool 3x3 stride 2.
    (B, C, H, W) -> (B, C, H or ceil(H/2), ...)."""

    def __init__(self, channels: int, pool: bool) -> None:
        super().__init__()
        self.conv = _fused_mbconv(channels)
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x + self.conv(x))


class GlobalQueryGen(nn.Module):
    """The level's global query: FeatExtract blocks shrink the level input to
    the window (``num_pools`` halvings), resized bicubically when the input is
    not the size the level was built for.

    Shapes: (B, H, W, C) -> (B, heads, w*w, C // heads)
    """

    def __init__(
        self, channels: int, num_heads: int, window_size: int, num_pools: int
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        pools = [True] * num_pools or [False]
        self.to_q_global = nn.Sequential(
            *[FeatExtract(channels, pool) for pool in pools]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.to_q_global(x.permute(0, 3, 1, 2))
        B, C, h, w = q.shape
        ws = self.window_size
        if not same_size((h, w), (ws, ws)):
            q = F.interpolate(q, size=(ws, ws), mode='bicubic', align_corners=False)
        q = q.permute(0, 2, 3, 1).reshape(
            B, ws * ws, self.num_heads, C // self.num_heads
        )
        return q.transpose(1, 2)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch, ``x * gamma``, with ``gamma``
    the parameter ``name`` of the block that owns this module: GC ViT's
    blocks hold their layer-scale weights themselves (``gamma1``,
    ``gamma2``: the NVlabs checkpoint keys), so this module has no state of
    its own. It reads the block's parameter at every call, so it follows
    whatever replaced it (``load_state_dict(assign=True)``, FSDP's views).
    """

    def __init__(self, owner: nn.Module, name: str) -> None:
        super().__init__()
        self.name = name
        # a plain reference, not a child module: the owner contains this one
        self.__dict__['owner'] = owner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * getattr(self.owner, self.name)

    def extra_repr(self) -> str:
        return self.name


class GCViTBlock(nn.Module):
    """Pre-norm block with window attention (local, or with the level's
    global query) and an MLP, each with optional layer scale.

    Shapes: x (B, H, W, C), query (B, heads, w*w, C/heads) -> (B, H, W, C)
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        global_query: bool,
        drop_path: float,
        layer_scale: float | None,
    ) -> None:
        super().__init__()
        attn = GlobalQueryWindowMSA if global_query else WindowMSA
        self.global_query = global_query
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = attn(embed_dims, num_heads, window_size)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma1 = self.gamma2 = None
        self.ls1, self.ls2 = nn.Identity(), nn.Identity()
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((embed_dims,), layer_scale))
            self.gamma2 = nn.Parameter(torch.full((embed_dims,), layer_scale))
            self.ls1, self.ls2 = LayerScale(self, 'gamma1'), LayerScale(self, 'gamma2')

    def forward(self, x: torch.Tensor, query: torch.Tensor | None) -> torch.Tensor:
        query = query if self.global_query else None
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), query)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class GCViTLevel(nn.Module):
    """Blocks of one resolution, their global-query generator and the
    ReduceSize into the next level (keys ``levels.i.*``).

    Args:
        embed_dims (int): Channels of the level.
        drop_paths (Sequence[float]): Stochastic depth of each block; one
            block each.
        block_cfg (dict): ``num_heads``, ``window_size``, ``mlp_ratio`` and
            ``layer_scale`` of :class:`GCViTBlock`.
        num_pools (int): Max-pool halvings of the global-query generator.
        downsample (bool): End with a ReduceSize to 2x the channels.
        with_cp (bool): Activation checkpointing per block.
    """

    def __init__(
        self,
        embed_dims: int,
        drop_paths: Sequence[float],
        block_cfg: dict,
        num_pools: int,
        downsample: bool,
        with_cp: bool,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            GCViTBlock(embed_dims, global_query=j % 2 == 1, drop_path=p, **block_cfg)
            for j, p in enumerate(drop_paths)
        )
        heads, window = block_cfg['num_heads'], block_cfg['window_size']
        self.q_global_gen = GlobalQueryGen(embed_dims, heads, window, num_pools)
        self.downsample = ReduceSize(embed_dims) if downsample else None
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a level of one block has no global-query block to feed
        query = self.q_global_gen(x) if len(self.blocks) > 1 else None
        for block in self.blocks:
            x = maybe_checkpoint(block, x, query, enabled=self.with_cp)
        return x


@MODELS.register_module()
class GCViT(StagedBackbone):
    """GC ViT backbone for classification, detection and segmentation.

    Args:
        arch (str | dict): ``'xxtiny'``, ``'xtiny'``, ``'tiny'``, ``'small'``,
            ``'base'`` or a dict with keys ``embed_dims``, ``depths``,
            ``num_heads``, ``mlp_ratio``, ``layer_scale``.
        in_channels (int): Input channels. Defaults to 3.
        window_size (Sequence[int]): Window side per level. Defaults to the
            ImageNet setting (7, 7, 14, 7); the reference detection recipe
            uses 24 everywhere (bias tables of checkpoints are resized).
        global_query_pools (Sequence[int]): Max-pool halvings of each level's
            query generator; (3, 2, 0, 0) turns 56/28/14/7 maps at 224 input
            into the 7/7/14/7 windows. Other sizes are resized to the window.
        drop_path_rate (float): Stochastic depth, rising linearly from 0.
        out_indices (Sequence[int]): Levels to output, any of 0..3; each goes
            through its own LayerNorm ``norm{i}`` (``norm3`` is the
            reference's final norm).
        frozen_stages (int): -1 freezes nothing; k >= 0 freezes the patch
            embedding and levels 0..k (blocks, global query generators, the
            ReduceSize into them, their output norms) in eval mode.
        with_cp (bool): Activation checkpointing per block.
        init_cfg (dict | list[dict], optional): e.g. ``Pretrained``.
        pretrained (str, optional): deprecated, as in mmdet / mmseg: the
            same as ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Shapes:
        input (B, in_channels, H, W); outputs (B, C * 2**i,
        ceil(H / 2**(i+2)), ceil(W / 2**(i+2))) for each ``out_indices``.
    """

    CONVERTER = 'peer2mm.py gcvit'
    ARCH_KEYS = ('embed_dims', 'depths', 'num_heads', 'mlp_ratio', 'layer_scale')
    # fmt: off
    arch_zoo = arch_table(ARCH_KEYS, {
        # names              embed_dims  depths          num_heads        mlp  scale
        ('xxt', 'xxtiny'):   (64,        [2, 2,  6, 2],  [2, 4,  8, 16],  3,   None),
        ('xt', 'xtiny'):     (64,        [3, 4,  6, 5],  [2, 4,  8, 16],  3,   None),
        ('t', 'tiny'):       (64,        [3, 4, 19, 5],  [2, 4,  8, 16],  3,   None),
        ('s', 'small'):      (96,        [3, 4, 19, 5],  [3, 6, 12, 24],  2,   1e-5),
        ('b', 'base'):       (128,       [3, 4, 19, 5],  [4, 8, 16, 32],  2,   1e-5),
    })
    # fmt: on

    def __init__(
        self,
        *,
        arch: str | dict = 'tiny',
        in_channels: int = 3,
        window_size: Sequence[int] = (7, 7, 14, 7),
        global_query_pools: Sequence[int] = (3, 2, 0, 0),
        drop_path_rate: float = 0.2,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        with_cp: bool = False,
        init_cfg: dict | list | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(init_cfg=pretrained_init_cfg('GCViT', pretrained, init_cfg))
        self.arch_settings, window_size, global_query_pools = self._check_args(
            arch,
            in_channels=in_channels,
            window_size=window_size,
            global_query_pools=global_query_pools,
            drop_path_rate=drop_path_rate,
            frozen_stages=frozen_stages,
        )
        C = self.arch_settings['embed_dims']
        self.dims = [C * 2**i for i in range(4)]
        self.out_indices = parse_out_indices(out_indices, 4)
        self.frozen_stages = frozen_stages

        self.patch_embed = PatchEmbed(in_channels, C)
        self.levels = self._build_stages(
            window_size, global_query_pools, drop_path_rate, with_cp
        )
        register_parts(self, self._build_out_norms())
        self._init_default_weights()
        self._freeze_stages()

    def _check_args(self, arch: str | dict, **args) -> tuple[dict, tuple, tuple]:
        """Every argument checked at construction by name, each error naming
        the argument, its value and what is accepted. Returns the arch
        settings, ``window_size`` and ``global_query_pools`` as tuples."""
        settings = parse_arch(
            'GCViT',
            self.arch_zoo,
            self.ARCH_KEYS,
            arch,
            lengths=dict(depths=4, num_heads=4),
        )
        check_arch_values(
            'GCViT', settings, ints=('embed_dims',), int_lists=('depths', 'num_heads')
        )
        check_common(
            'GCViT',
            in_channels=args['in_channels'],
            drop_path_rate=args['drop_path_rate'],
            frozen_stages=args['frozen_stages'],
        )
        window_size = check_ints('GCViT', 'window_size', args['window_size'], 4, 1)
        pools = args['global_query_pools']
        pools = check_ints('GCViT', 'global_query_pools', pools, 4, 0)
        return settings, window_size, pools

    def _build_stages(
        self,
        window_size: tuple,
        global_query_pools: tuple,
        drop_path_rate: float,
        with_cp: bool,
    ) -> nn.ModuleList:
        """The four levels, each ending with the ReduceSize into the next
        (but the last)."""
        s = self.arch_settings
        drop_paths = stage_drop_paths(drop_path_rate, s['depths'])
        levels = nn.ModuleList()
        for i in range(4):
            block_cfg = dict(
                num_heads=s['num_heads'][i],
                window_size=window_size[i],
                mlp_ratio=s['mlp_ratio'],
                layer_scale=s['layer_scale'],
            )
            levels.append(
                GCViTLevel(
                    self.dims[i],
                    drop_paths[i],
                    block_cfg,
                    num_pools=global_query_pools[i],
                    downsample=i < 3,
                    with_cp=with_cp,
                )
            )
        return levels

    def _build_out_norms(self) -> dict[str, nn.Module]:
        """``norm{i}`` of every output (``norm3``: the reference's final
        norm)."""
        return {NORM_NAMES[i]: nn.LayerNorm(self.dims[i]) for i in self.out_indices}

    def _init_default_weights(self) -> None:
        # The reference: ViT-style Linear and LayerNorm init, convs at
        # PyTorch's default.
        init_linear_and_norms(self)

    def _layer_depth(self, name: str) -> int | None:
        d, parts = self.arch_settings['depths'], name.split('.')
        if parts[0] == 'patch_embed':
            return 0
        if parts[0] == 'levels':
            level = int(parts[1])
            if parts[2] == 'blocks':
                return sum(d[:level]) + int(parts[3]) + 1
            if parts[2] == 'q_global_gen':  # serves every block of the level
                return sum(d[:level]) + 1
            if parts[2] == 'downsample':
                return sum(d[: level + 1])
        return None

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed]
        for i in range(min(self.frozen_stages, 3) + 1):
            level = self.levels[i]
            frozen += [level.blocks, level.q_global_gen]
            if i > 0:
                frozen.append(self.levels[i - 1].downsample)
            if hasattr(self, f'norm{i}'):
                frozen.append(getattr(self, f'norm{i}'))
        freeze(frozen)

    @empty_batch_safe
    def forward(self, x: torch.Tensor) -> tuple:
        outs = []
        x = self.patch_embed(x)
        for i, level in enumerate(self.levels):
            x = level(x)
            if i in self.out_indices:
                y = getattr(self, NORM_NAMES[i])(x)
                outs.append(y.permute(0, 3, 1, 2).contiguous())
            if i == max(self.out_indices):
                break
            x = level.downsample(x)
        return tuple(outs)
