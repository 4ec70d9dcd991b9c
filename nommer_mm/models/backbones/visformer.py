"""Visformer backbone (Chen et al., "Visformer: The Vision-friendly
Transformer", ICCV 2021), dense-ready.

Layout (C = embed_dims), NCHW throughout, BatchNorm everywhere:

    stem          conv 7x7/2 -> BN -> ReLU                  (B, C0,  H/2,  W/2)
    patch_embed1  conv 4x4/4 -> BN, + pos_embed1            (B, C/2, H/8,  W/8)
    stage1        conv-only blocks (grouped 3x3 MLP)        (B, C/2, H/8,  W/8)
    patch_embed2  conv 2x2/2 -> BN, + pos_embed2            (B, C,   H/16, W/16)
    stage2        attention blocks                          (B, C,   H/16, W/16)
    patch_embed3  conv 2x2/2 -> BN, + pos_embed3            (B, 2C,  H/32, W/32)
    stage3        attention blocks                          (B, 2C,  H/32, W/32)

Output 0 (stride 4, for FPN-style necks) is stage1 upsampled by a learned
2x2 transposed conv -> BN -> GELU, built only when requested: it is not part
of the ImageNet model, so it starts from scratch in dense fine-tuning.
Sizes round up at every stride; position embeddings are interpolated to the
input. Module names follow the reference (danczs/Visformer) without its
BatchNorm wrapper, i.e. timm's names.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model.weight_init import trunc_normal_
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from .common import (
    NORM_NAMES,
    StagedBackbone,
    StageBlocks,
    arch_table,
    check_arch_values,
    check_common,
    check_int,
    check_size,
    empty_batch_safe,
    freeze,
    interpolate_pos_embed,
    parse_arch,
    parse_out_indices,
    pretrained_init_cfg,
    register_parts,
    resize_pos_embed_on_load,
    stage_drop_paths,
)
from ...torch_compat import cpu_autocast_enabled
from ..layers import ceil_div, pad_to_multiple


class ConvMlp(nn.Module):
    """1x1 -> GELU -> [grouped 3x3 -> GELU] -> 1x1, no biases.
    (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, hidden: int, spatial_groups: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.conv2 = (
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=spatial_groups, bias=False)
            if spatial_groups
            else None
        )
        self.conv3 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        if self.conv2 is not None:
            x = F.gelu(self.conv2(x))
        return self.conv3(x)


class ConvAttention(nn.Module):
    """Global multi-head self-attention on a feature map with 1x1-conv
    projections (no biases). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dims = channels // num_heads
        inner = self.head_dims * num_heads
        self.qkv = nn.Conv2d(channels, inner * 3, 1, bias=False)
        self.proj = nn.Conv2d(inner, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        qkv = self.qkv(x).reshape(B, 3, self.num_heads, self.head_dims, H * W)
        # SDPA's fused kernels (flash, memory-efficient) take only inputs
        # whose last dim is contiguous; a transposed view would be left to
        # the MATH backend, which writes out the (N, N) attention matrix.
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)  # (B, heads, N, d)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(-1, -2).reshape(B, -1, H, W))


class VisformerBlock(nn.Module):
    """x = x + DropPath(attn(BN(x))) (attention stages only);
    x = x + DropPath(MLP(BN(x)))."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_hidden: int,
        attention: bool,
        spatial_groups: int,
        drop_path: float,
        norm_cfg: dict,
    ) -> None:
        super().__init__()
        if attention:
            self.norm1 = build_norm_layer(norm_cfg, channels)[1]
            self.attn = ConvAttention(channels, num_heads)
        self.attention = attention
        self.norm2 = build_norm_layer(norm_cfg, channels)[1]
        self.mlp = ConvMlp(channels, mlp_hidden, spatial_groups)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention:
            x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """conv k x k stride k (zero-padding the input to a multiple of k) -> BN.
    (B, Cin, H, W) -> (B, Cout, ceil(H/k), ceil(W/k))."""

    def __init__(
        self, in_channels: int, out_channels: int, patch: int, norm_cfg: dict
    ) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, out_channels, patch, stride=patch)
        self.norm = build_norm_layer(norm_cfg, out_channels)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = pad_to_multiple(x, self.patch, channels_last=False)
        if x.device.type == 'cpu' and cpu_autocast_enabled():
            # oneDNN's bf16 kernel for this strided convolution was seen
            # 120% off fp32 on some CPUs (see tests/models/test_arguments.py); it
            # is a small layer, so it runs in fp32.
            with torch.autocast('cpu', enabled=False):
                return self.norm(self.proj(x.float()))
        return self.norm(self.proj(x))


# The parts of stages 1-3 (patch embedding, position embedding, blocks,
# output norm) by name, for forward to look up: TorchDynamo 2.1 breaks its
# graph on getattr with an f-string, not on a constant.
_STAGES = tuple(
    (f'patch_embed{i}', f'pos_embed{i}', f'stage{i}', NORM_NAMES[i]) for i in (1, 2, 3)
)


@MODELS.register_module()
class Visformer(StagedBackbone):
    """Visformer backbone for classification, detection and segmentation.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'`` or a dict with keys
            ``stem_channels``, ``embed_dims``, ``depths`` (3 stages),
            ``num_heads``.
        in_channels (int): Input channels. Defaults to 3.
        img_size (int | tuple): Size the position embeddings are laid out for;
            other sizes interpolate them. Defaults to 224.
        mlp_ratio (float): MLP width of the attention stages. Defaults to 4.
        spatial_groups (int): Groups of stage 1's 3x3 MLP conv. Defaults
            to 8.
        drop_path_rate (float): Stochastic depth, rising linearly from 0.
        out_indices (Sequence[int]): Outputs, any of 0..3 at strides 4, 8,
            16, 32. 1..3 are stages 1..3 through BatchNorms ``norm{i}``
            (``norm3`` is the reference's final norm); 0 is the learned
            upsampling of stage 1 (see the module docstring).
        frozen_stages (int): -1 freezes nothing; k >= 0 freezes the stem and
            stages 1..k (none for k = 0) with their patch embeddings,
            position embeddings and output norms, in eval mode.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training.
        with_cp (bool): Activation checkpointing per block.
        norm_cfg (dict): BatchNorm config (``SyncBN`` for multi-GPU).
        init_cfg (dict | list[dict], optional): e.g. ``Pretrained``.
        pretrained (str, optional): deprecated, as in mmdet / mmseg: the
            same as ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Shapes:
        input (B, in_channels, H, W); outputs (B, dims[i], ceil(H/2**(i+2)),
        ceil(W/2**(i+2))) with ``dims = [C/2, C/2, C, 2C]``.
    """

    CONVERTER = 'peer2mm.py visformer'
    ARCH_KEYS = ('stem_channels', 'embed_dims', 'depths', 'num_heads')
    # fmt: off
    arch_zoo = arch_table(ARCH_KEYS, {
        # names          stem_channels  embed_dims  depths     num_heads
        ('t', 'tiny'):   (16,           192,        [7, 4, 4], 3),
        ('s', 'small'):  (32,           384,        [7, 4, 4], 6),
    })
    # fmt: on

    def __init__(
        self,
        *,
        arch: str | dict = 'small',
        in_channels: int = 3,
        img_size: int | Sequence[int] = 224,
        mlp_ratio: float = 4.0,
        spatial_groups: int = 8,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        norm_cfg: dict = dict(type='BN'),
        init_cfg: dict | list | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(
            init_cfg=pretrained_init_cfg('Visformer', pretrained, init_cfg)
        )
        self.arch_settings, img_size = self._check_args(
            arch,
            in_channels=in_channels,
            img_size=img_size,
            mlp_ratio=mlp_ratio,
            spatial_groups=spatial_groups,
            drop_path_rate=drop_path_rate,
            frozen_stages=frozen_stages,
            norm_cfg=norm_cfg,
        )
        C = self.arch_settings['embed_dims']
        self.dims = [C // 2, C // 2, C, 2 * C]  # stage 1 also gives output 0
        self.out_indices = parse_out_indices(out_indices, 4)
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval

        self.stem = self._build_stem(in_channels, norm_cfg)
        stages = self._build_stages(
            img_size, mlp_ratio, spatial_groups, drop_path_rate, norm_cfg, with_cp
        )
        register_parts(self, stages)  # patch_embed{i}, pos_embed{i}, stage{i}
        register_parts(self, self._build_out_norms(norm_cfg))
        self._register_load_state_dict_pre_hook(self._resize_pos_embed_hook)
        self._init_default_weights()
        self._freeze_stages()

    def _check_args(self, arch: str | dict, **args) -> tuple[dict, tuple]:
        """Every argument checked at construction by name, each error naming
        the argument, its value and what is accepted. Returns the arch
        settings and ``img_size`` as an (H, W) tuple."""
        s = parse_arch(
            'Visformer', self.arch_zoo, self.ARCH_KEYS, arch, lengths=dict(depths=3)
        )
        check_arch_values(
            'Visformer',
            s,
            ints=('stem_channels', 'embed_dims', 'num_heads'),
            int_lists=('depths',),
        )
        check_common(
            'Visformer',
            in_channels=args['in_channels'],
            drop_path_rate=args['drop_path_rate'],
            frozen_stages=args['frozen_stages'],
            norm_cfg=args['norm_cfg'],
        )
        img_size = check_size('Visformer', 'img_size', args['img_size'])
        if min(img_size) < 32:
            raise ValueError(
                f'Visformer: img_size={img_size}; the position '
                'embeddings go down to stride 32, so each side '
                'must be >= 32'
            )
        check_int('Visformer', 'spatial_groups', args['spatial_groups'], 1)
        mlp_ratio = args['mlp_ratio']
        if (
            isinstance(mlp_ratio, bool)
            or not isinstance(mlp_ratio, (int, float))
            or mlp_ratio <= 0
        ):
            raise ValueError(
                f'Visformer: mlp_ratio={mlp_ratio!r}; expected a positive number'
            )
        return s, img_size

    # -------------------------------------------------------------- layout
    def _build_stem(self, in_channels: int, norm_cfg: dict) -> nn.Sequential:
        """conv 7x7 stride 2 -> BN -> ReLU."""
        channels = self.arch_settings['stem_channels']
        return nn.Sequential(
            nn.Conv2d(in_channels, channels, 7, 2, 3, bias=False),
            build_norm_layer(norm_cfg, channels)[1],
            nn.ReLU(inplace=True),
        )

    def _build_stages(
        self,
        img_size: tuple,
        mlp_ratio: float,
        spatial_groups: int,
        drop_path_rate: float,
        norm_cfg: dict,
        with_cp: bool,
    ) -> dict[str, nn.Module | nn.Parameter]:
        """``patch_embed{i}``, ``pos_embed{i}`` and ``stage{i}`` for i = 1..3,
        in this order; stage 1 is convolutional, stages 2-3 attend."""
        s = self.arch_settings
        drop_paths = stage_drop_paths(drop_path_rate, s['depths'])
        in_dims = [s['stem_channels']] + self.dims[1:3]
        parts = {}
        for i, (embed, pos, stage, _) in enumerate(_STAGES):
            dims, stride, conv_stage = self.dims[i + 1], 8 * 2**i, i == 0
            patch = 4 if conv_stage else 2
            parts[embed] = PatchEmbed(in_dims[i], dims, patch, norm_cfg)
            grid = (img_size[0] // stride, img_size[1] // stride)
            parts[pos] = nn.Parameter(torch.zeros(1, dims, *grid))
            # stage 1 is attention-free, with a grouped 3x3 in its MLP
            block_cfg = dict(
                num_heads=s['num_heads'],
                mlp_hidden=2 * dims if conv_stage else int(dims * mlp_ratio),
                attention=not conv_stage,
                spatial_groups=spatial_groups if conv_stage else 0,
                norm_cfg=norm_cfg,
            )
            blocks = [
                VisformerBlock(dims, drop_path=p, **block_cfg) for p in drop_paths[i]
            ]
            parts[stage] = StageBlocks(*blocks, with_cp=with_cp)
        return parts

    def _build_out_norms(self, norm_cfg: dict) -> dict[str, nn.Module]:
        """``upsample0`` for output 0 (stage 1 upsampled), ``norm{i}`` for
        outputs 1..3 (``norm3``: the reference's final norm)."""
        C, outs = self.dims[0], {}
        for i in self.out_indices:
            if i == 0:
                outs['upsample0'] = nn.Sequential(
                    nn.ConvTranspose2d(C, C, 2, stride=2),
                    build_norm_layer(norm_cfg, C)[1],
                    nn.GELU(),
                )
            else:
                outs[NORM_NAMES[i]] = build_norm_layer(norm_cfg, self.dims[i])[1]
        return outs

    # -------------------------------------------------------------- weights
    def _init_default_weights(self) -> None:
        # The reference (conv_init=True): Kaiming fan-out convs, unit norms,
        # position embeddings ~ TN(0.02).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, _BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for i in range(1, 4):
            trunc_normal_(getattr(self, f'pos_embed{i}'), std=0.02)

    def _resize_pos_embed_hook(
        self, state_dict: dict, prefix: str, *args, **kwargs
    ) -> None:
        for i in range(1, 4):
            resize_pos_embed_on_load(
                state_dict, f'{prefix}pos_embed{i}', getattr(self, f'pos_embed{i}')
            )

    # ---------------------------------------------------------- train mode
    def _layer_depth(self, name: str) -> int | None:
        d, parts = self.arch_settings['depths'], name.split('.')
        if parts[0] == 'stem':
            return 0
        match = re.fullmatch(r'(patch_embed|pos_embed|stage)([123])', parts[0])
        if match:
            start = sum(d[: int(match.group(2)) - 1])
            if match.group(1) == 'stage':
                return start + int(parts[1]) + 1
            return start  # the stage's patch and position embedding
        return None

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.stem]
        for i in range(1, min(self.frozen_stages, 3) + 1):
            frozen += [getattr(self, f'patch_embed{i}'), getattr(self, f'stage{i}')]
            getattr(self, f'pos_embed{i}').requires_grad = False
            if hasattr(self, f'norm{i}'):
                frozen.append(getattr(self, f'norm{i}'))
        freeze(frozen)

    # ------------------------------------------------------------- forward
    @empty_batch_safe
    def forward(self, x: torch.Tensor) -> tuple:
        outs = []
        last = max(max(self.out_indices), 1)  # output 0 comes from stage 1
        h4, w4 = ceil_div(x.shape[-2], 4), ceil_div(x.shape[-1], 4)
        x = self.stem(x)
        for i, (embed, pos, stage, norm) in enumerate(_STAGES, 1):
            x = getattr(self, embed)(x)
            x = x + interpolate_pos_embed(getattr(self, pos), x.shape[-2:])
            x = getattr(self, stage)(x)
            if i == 1 and 0 in self.out_indices:
                # crop: 2 * ceil(H/8) exceeds ceil(H/4) for some H
                outs.append(self.upsample0(x)[..., :h4, :w4])
            if i in self.out_indices:
                outs.append(getattr(self, norm)(x))
            if i == last:
                break
        return tuple(outs)
