"""CoTNet backbones (Li et al., "Contextual Transformer Networks for Visual
Recognition"): ResNet-50 layouts whose bottleneck 3x3 convs are CoT layers.

    stem     'resnet': conv 7x7/2 -> BN -> ReLU -> max-pool 3x3/2
             'deep':   3x(conv 3x3) (first /2) -> BN -> ReLU, no pool; layer1
                       then strides by 2 itself                (B, 64, H/4, W/4)
    layer1   bottlenecks                                       (B, 256,  H/4)
    layer2                                                     (B, 512,  H/8)
    layer3                                                     (B, 1024, H/16)
    layer4                                                     (B, 2048, H/32)

A strided CoT bottleneck average-pools (3x3/2) before its CoT layer, as the
reference does. Module names follow the reference (JDAI-CV/CoTNet).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers.cot import CoTLayer, SEConv
from .common import (
    StagedBackbone,
    StageBlocks,
    arch_table,
    check_arch_values,
    check_common,
    empty_batch_safe,
    freeze,
    parse_arch,
    parse_out_indices,
    pretrained_init_cfg,
    register_parts,
    stage_drop_paths,
)


def _shortcut(
    in_channels: int, out: int, stride: int, avg_down: bool, norm_cfg: dict
) -> nn.Sequential | None:
    """The projection shortcut of a bottleneck whose shape changes: average
    pool then 1x1 conv (``avg_down``, ResNet-D), or a strided 1x1 conv; each
    with BN. None (identity) when the shape stays."""
    if stride == 1 and in_channels == out:
        return None
    if not avg_down:
        return nn.Sequential(
            nn.Conv2d(in_channels, out, 1, stride, bias=False),
            build_norm_layer(norm_cfg, out)[1],
        )
    pool = (
        nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        if stride > 1
        else nn.Identity()
    )
    return nn.Sequential(
        pool,
        nn.Conv2d(in_channels, out, 1, bias=False),
        build_norm_layer(norm_cfg, out)[1],
    )


class CoTBottleneck(nn.Module):
    """1x1 -> BN -> ReLU -> [avg-pool] -> CoT (or SE conv) -> 1x1 -> BN,
    plus the shortcut, then ReLU. (B, Cin, H, W) -> (B, 4P, H/s, W/s)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        cardinality: int,
        base_width: int,
        se_conv: bool,
        avg_down: bool,
        drop_path: float,
        norm_cfg: dict,
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * base_width / 64)) * cardinality
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, width)[1]
        if se_conv:
            self.avd = None
            self.conv2 = SEConv(width, width, stride, norm_cfg)
        else:
            self.avd = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else None
            self.conv2 = CoTLayer(width, 3, cardinality, norm_cfg)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = build_norm_layer(norm_cfg, out)[1]
        self.downsample = _shortcut(in_channels, out, stride, avg_down, norm_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        if self.avd is not None:
            y = self.avd(y)
        y = self.bn3(self.conv3(self.conv2(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.drop_path(y) + shortcut)


# The layers by name, for forward to look up: TorchDynamo 2.1 breaks its
# graph on getattr with an f-string, not on a constant.
_LAYERS = ('layer1', 'layer2', 'layer3', 'layer4')


@MODELS.register_module()
class CoTNet(StagedBackbone):
    """CoTNet / CoTNeXt / SE-CoTNetD backbone.

    Args:
        arch (str | dict): ``'cotnet50'``, ``'cotnext50'`` (2x48d),
            ``'se-cotnetd50'`` or a dict with keys ``depths``,
            ``cardinality``, ``base_width``, ``stem`` ('resnet' | 'deep'),
            ``stem_width``, ``avg_down``, ``se_blocks`` (per layer, the block
            indices that use an SE conv instead of a CoT layer).
        in_channels (int): Input channels. Defaults to 3.
        drop_path_rate (float): Stochastic depth, rising linearly from 0.
        out_indices (Sequence[int]): Layers to output (0..3 = layer1..4).
        frozen_stages (int): -1 freezes nothing; k >= 0 freezes the stem and
            layer1..layer(k+1), in eval mode.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training
            (the usual setting for detection).
        with_cp (bool): Activation checkpointing per block.
        norm_cfg (dict): BatchNorm config.
        zero_init_residual (bool): Zero the last BN of every block.
        init_cfg (dict | list[dict], optional): e.g. ``Pretrained``.
        pretrained (str, optional): deprecated, as in mmdet / mmseg: the
            same as ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Shapes:
        input (B, in_channels, H, W); outputs (B, 256 * 2**i,
        ceil(H / 2**(i+2)), ceil(W / 2**(i+2))) for each ``out_indices``.
    """

    CONVERTER = 'peer2mm.py cotnet'
    ARCH_KEYS = (
        'depths',
        'cardinality',
        'base_width',
        'stem',
        'stem_width',
        'avg_down',
        'se_blocks',
    )
    # fmt: off
    arch_zoo = arch_table(ARCH_KEYS, {
        # names           depths        card. width stem      stem_w avg_down se_blocks
        ('cotnet50',):     ([3, 4, 6, 3], 1,    64,   'resnet', 64,    False,   [[], [], [], []]),  # noqa: E501
        ('cotnext50',):    ([3, 4, 6, 3], 2,    48,   'resnet', 64,    False,   [[], [], [], []]),  # noqa: E501
        ('se-cotnetd50',): ([3, 4, 6, 3], 1,    64,   'deep',   32,    True,    [[0, 1, 2], [0, 1, 2, 3], [1, 3, 5], []]),  # noqa: E501
    })
    # fmt: on

    def __init__(
        self,
        *,
        arch: str | dict = 'cotnet50',
        in_channels: int = 3,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        norm_cfg: dict = dict(type='BN'),
        zero_init_residual: bool = True,
        init_cfg: dict | list | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(init_cfg=pretrained_init_cfg('CoTNet', pretrained, init_cfg))
        self.arch_settings = self._check_args(
            arch,
            in_channels=in_channels,
            drop_path_rate=drop_path_rate,
            frozen_stages=frozen_stages,
            norm_cfg=norm_cfg,
        )
        self.dims = [256 * 2**i for i in range(4)]
        self.out_indices = parse_out_indices(out_indices, 4)
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval

        self.conv1, self.maxpool, self.bn1 = self._build_stem(in_channels, norm_cfg)
        register_parts(self, self._build_stages(drop_path_rate, norm_cfg, with_cp))
        self._init_default_weights(zero_init_residual)
        self._freeze_stages()

    def _check_args(self, arch: str | dict, **args) -> dict:
        """Every argument checked at construction by name, each error naming
        the argument, its value and what is accepted. Returns the arch
        settings."""
        s = parse_arch(
            'CoTNet',
            self.arch_zoo,
            self.ARCH_KEYS,
            arch,
            lengths=dict(depths=4, se_blocks=4),
        )
        check_arch_values(
            'CoTNet',
            s,
            ints=('cardinality', 'base_width', 'stem_width'),
            int_lists=('depths',),
        )
        check_common('CoTNet', **args)
        if s['stem'] not in ('resnet', 'deep'):
            raise ValueError(f"stem must be 'resnet' or 'deep', got {s['stem']!r}")
        return s

    # -------------------------------------------------------------- layout
    def _build_stem(
        self, in_channels: int, norm_cfg: dict
    ) -> tuple[nn.Module, nn.Module | None, nn.Module]:
        """``conv1`` (7x7 ResNet stem with ``maxpool``, or the deep stem of
        three 3x3 convs and no pool) and ``bn1``, to 64 channels at stride
        2."""
        s, out = self.arch_settings, 64
        if s['stem'] == 'resnet':
            conv1 = nn.Conv2d(in_channels, out, 7, 2, 3, bias=False)
            maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            w = s['stem_width']
            conv1 = nn.Sequential(
                nn.Conv2d(in_channels, w, 3, 2, 1, bias=False),
                build_norm_layer(norm_cfg, w)[1],
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, 1, 1, bias=False),
                build_norm_layer(norm_cfg, w)[1],
                nn.ReLU(inplace=True),
                nn.Conv2d(w, out, 3, 1, 1, bias=False),
            )
            maxpool = None
        return conv1, maxpool, build_norm_layer(norm_cfg, out)[1]

    def _build_stages(
        self, drop_path_rate: float, norm_cfg: dict, with_cp: bool
    ) -> dict[str, StageBlocks]:
        """``layer1`` .. ``layer4``: bottlenecks, the first of each layer
        strided (but layer1 after the ResNet stem's max-pool)."""
        s = self.arch_settings
        drop_paths = stage_drop_paths(drop_path_rate, s['depths'])
        block_cfg = dict(
            cardinality=s['cardinality'],
            base_width=s['base_width'],
            avg_down=s['avg_down'],
            norm_cfg=norm_cfg,
        )
        layers, in_channels = {}, 64
        for i, name in enumerate(_LAYERS):
            stride = 1 if (i == 0 and s['stem'] == 'resnet') else 2
            blocks = []
            for j, p in enumerate(drop_paths[i]):
                blocks.append(
                    CoTBottleneck(
                        in_channels,
                        64 * 2**i,
                        stride if j == 0 else 1,
                        se_conv=j in s['se_blocks'][i],
                        drop_path=p,
                        **block_cfg,
                    )
                )
                in_channels = self.dims[i]
            layers[name] = StageBlocks(*blocks, with_cp=with_cp)
        return layers

    def _init_default_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, CoTBottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def _layer_depth(self, name: str) -> int | None:
        d, parts = self.arch_settings['depths'], name.split('.')
        if parts[0] in ('conv1', 'bn1'):
            return 0
        match = re.fullmatch(r'layer([1-4])', parts[0])
        if match:
            return sum(d[: int(match.group(1)) - 1]) + int(parts[1]) + 1
        return None

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.conv1, self.bn1] + [
            getattr(self, name) for name in _LAYERS[: self.frozen_stages + 1]
        ]
        freeze(frozen)

    @empty_batch_safe
    def forward(self, x: torch.Tensor) -> tuple:
        x = torch.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        outs = []
        for i, name in enumerate(_LAYERS[: max(self.out_indices) + 1]):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
