"""NomMer backbone (Liu et al., "NomMer: Nominate Synergistic Context in
Vision Transformer for Visual Recognition", CVPR 2022), dense-ready.

Layout (C = embed_dims), every stage working on channels-last tokens:

    stem     conv 4x4/4 -> BN -> ReLU                       (B, H/4,  W/4,  C)
    stage 0  S-NomMer blocks                                 (B, H/4,  W/4,  C)
    merge 0  conv 3x3 -> max-pool 2 -> LN                    (B, H/8,  W/8, 2C)
    stage 1  S-NomMer blocks                                 (B, H/8,  W/8, 2C)
    merge 1                                                  (B, H/16, W/16, 4C)
             + absolute position embedding (interpolated)
    stage 2  G-NomMer blocks (global MHSA)                   (B, H/16, W/16, 4C)
    merge 2                                                  (B, H/32, W/32, 8C)
    stage 3  [class token] + G-NomMer blocks                 (B, 1 + H/32*W/32, 8C)

Sizes round up (``ceil``) at every stride, for any input size. The arch's
``bottleneck_ratios`` has one entry per leading S-NomMer stage (two above);
the position embedding joins the first G-NomMer stage, the class token the
last.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.registry import MODELS

from ..layers.attention import MultiheadSelfAttention
from ..layers.context import CONTEXT_NAMES, NomMerMixer
from ..layers.mlp import Mlp
from ..layers.shapes import needs_padding, pad_to_multiple
from .common import (
    NORM_NAMES,
    StagedBackbone,
    StageBlocks,
    arch_table,
    check_arch_values,
    check_common,
    check_int,
    check_ints,
    check_size,
    empty_batch_safe,
    freeze,
    init_linear_and_norms,
    interpolate_pos_embed,
    parse_arch,
    parse_out_indices,
    pretrained_init_cfg,
    register_parts,
    resize_pos_embed_on_load,
    stage_drop_paths,
)


class _PreNormBlock(nn.Module):
    """Pre-norm transformer block around a token mixer (``token_mixer``)."""

    token_mixer: nn.Module

    def __init__(self, embed_dims: int, mlp_hidden: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.mlp = Mlp(embed_dims, mlp_hidden)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SNomMerBlock(_PreNormBlock):
    """Synergistic block of stages 0-1: the mixer nominates, per position,
    one of the conv / window / compressed-global contexts.

    Args:
        embed_dims (int): Channels ``C``.
        num_heads (int): Heads of the mixer's attention.
        mlp_hidden (int): Hidden width of the MLP.
        drop_path (float): Stochastic depth of the block.
        mixer_cfg (dict): Keyword arguments of :class:`NomMerMixer` beyond
            the channels and heads (``window_size``, ``dct_block``,
            ``reduction``, ``contexts``, ...); its defaults where left out.

    Shapes: (B, H, W, C) -> (B, H, W, C)
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        mlp_hidden: int,
        drop_path: float = 0.0,
        mixer_cfg: dict | None = None,
    ) -> None:
        super().__init__(embed_dims, mlp_hidden, drop_path)
        self.mixer = NomMerMixer(embed_dims, num_heads, **(mixer_cfg or {}))

    @property
    def token_mixer(self) -> nn.Module:
        return self.mixer


class GNomMerBlock(_PreNormBlock):
    """Global block of stages 2-3: plain multi-head self-attention.

    Shapes: (B, N, C) -> (B, N, C)
    """

    def __init__(
        self, embed_dims: int, num_heads: int, mlp_hidden: int, drop_path: float = 0.0
    ) -> None:
        super().__init__(embed_dims, mlp_hidden, drop_path)
        self.attn = MultiheadSelfAttention(embed_dims, num_heads)

    @property
    def token_mixer(self) -> nn.Module:
        return self.attn


class ConvStem(nn.Module):
    """conv 4x4 stride 4 (no bias) -> BN -> ReLU, input zero-padded to a
    multiple of 4. (B, 3, H, W) -> (B, ceil(H/4), ceil(W/4), C)."""

    def __init__(self, in_channels: int, embed_dims: int, norm_cfg: dict) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, embed_dims, 4, stride=4, bias=False)
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = pad_to_multiple(x, 4, channels_last=False)
        return F.relu(self.norm(self.conv(x)), inplace=True).permute(0, 2, 3, 1)


class TokenMerge(nn.Module):
    """Stage transition: conv 3x3 (bias) -> max-pool 2x2 (ceil) -> LN.
    (B, H, W, Cin) -> (B, ceil(H/2), ceil(W/2), Cout)."""

    def __init__(self, in_dims: int, out_dims: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dims, out_dims, 3, padding=1)
        self.norm = nn.LayerNorm(out_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.permute(0, 3, 1, 2))
        # max-pool with ceil_mode, which keeps the last row/column of odd
        # maps, written as a -inf pad: ONNX export of ceil_mode needs sizes
        # that a trace of these padded layers does not keep (torch 2.1)
        H, W = x.shape[-2:]
        if needs_padding(H % 2, W % 2):
            x = F.pad(x, (0, W % 2, 0, H % 2), value=float('-inf'))
        x = F.max_pool2d(x, 2)
        return self.norm(x.permute(0, 2, 3, 1))


class NomMerStage(nn.Module):
    """A run of blocks of one kind (keys ``stages.i.blocks.j``); with
    ``with_cp`` each block is recomputed in backward instead of stored."""

    def __init__(self, blocks: Sequence[nn.Module], with_cp: bool = False) -> None:
        super().__init__()
        self.blocks = StageBlocks(*blocks, with_cp=with_cp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


@MODELS.register_module()
class NomMer(StagedBackbone):
    """NomMer backbone for classification, detection and segmentation.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'`` (also ``'t'``,
            ``'s'``, ``'b'``) or a dict with keys ``embed_dims``, ``depths``,
            ``num_heads`` (4 entries each) and ``bottleneck_ratios``, one per
            S-NomMer stage: stages ``0..len - 1`` are S-NomMer, the rest
            G-NomMer (the paper: 2 and 2).
        in_channels (int): Input channels. Defaults to 3.
        img_size (int | tuple): Size the position embedding is laid out for
            (its grid is ``img_size`` over the first G stage's stride, 16 in
            the paper's layout); other input sizes interpolate it. Defaults
            to 224.
        window_size (int): Window of the local context. Defaults to 7.
        dct_blocks (tuple[int]): DCT block size N of each S-NomMer stage.
            Defaults to (8, 4).
        contexts (tuple[str]): Candidate contexts of the S-NomMer blocks,
            a subset of ``('conv', 'window', 'global')`` (Table 4 ablation).
        global_type (str): ``'dct'`` (compressed global context) or
            ``'pooled'`` (ablation).
        fusion (str): ``'nominator'`` (Gumbel nominator) or ``'sum'``.
        drop_path_rate (float): Stochastic depth, rising linearly over all
            blocks from 0. Defaults to 0.1.
        out_indices (Sequence[int]): Stages to output, any of 0..3.
        out_type (str): ``'featmap'``: every output is an NCHW map through its
            own LayerNorm ``norm{i}``. ``'cls_token'``: stage 3 gives the
            class token through ``final_norm`` (the reference head's
            LayerNorm), (B, 8C). ``'avg_featmap'``: stage 3 gives the mean of
            its patch tokens through ``final_norm``, (B, 8C). Stages 0-2
            always give normed NCHW maps.
        frozen_stages (int): -1 freezes nothing; k >= 0 freezes the stem and
            stages 0..k (with the merges into them and their output norms,
            the position embedding from the first G stage on, 2 in the
            paper's layout, and the class token at stage 3) in eval mode.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training.
        with_cp (bool): Activation checkpointing per block.
        norm_cfg (dict): Config of the BatchNorm layers (stem, conv context,
            global context); ``dict(type='SyncBN')`` for multi-GPU dense
            training.
        init_cfg (dict | list[dict], optional): e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
        pretrained (str, optional): deprecated, as in mmdet / mmseg: the
            same as ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Shapes:
        input (B, in_channels, H, W); output a tuple with one entry per
        ``out_indices``: (B, C * 2**i, ceil(H / 2**(i+2)), ceil(W / 2**(i+2)))
        for feature maps.
    """

    CONVERTER = 'nommer2mm.py'
    ARCH_KEYS = ('embed_dims', 'depths', 'num_heads', 'bottleneck_ratios')
    # fmt: off
    arch_zoo = arch_table(ARCH_KEYS, {
        # names          embed_dims  depths          num_heads      bottleneck_ratios
        ('t', 'tiny'):   (96,        [2, 2,  8, 2],  [2, 2, 4, 8],  [2, 2]),
        ('s', 'small'):  (96,        [6, 6, 16, 4],  [2, 2, 4, 8],  [4, 4]),
        ('b', 'base'):   (128,       [6, 6, 16, 4],  [2, 2, 4, 8],  [4, 4]),
    })
    # fmt: on
    OUT_TYPES = ('featmap', 'cls_token', 'avg_featmap')

    def __init__(
        self,
        *,
        arch: str | dict = 'tiny',
        in_channels: int = 3,
        img_size: int | Sequence[int] = 224,
        window_size: int = 7,
        dct_blocks: Sequence[int] = (8, 4),
        contexts: Sequence[str] = CONTEXT_NAMES,
        global_type: str = 'dct',
        fusion: str = 'nominator',
        drop_path_rate: float = 0.1,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        out_type: str = 'featmap',
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        norm_cfg: dict = dict(type='BN'),
        init_cfg: dict | list | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(init_cfg=pretrained_init_cfg('NomMer', pretrained, init_cfg))
        self.arch_settings, dct_blocks, img_size = self._check_args(
            arch,
            in_channels=in_channels,
            img_size=img_size,
            window_size=window_size,
            dct_blocks=dct_blocks,
            drop_path_rate=drop_path_rate,
            frozen_stages=frozen_stages,
            out_type=out_type,
            norm_cfg=norm_cfg,
        )
        C = self.embed_dims = self.arch_settings['embed_dims']
        self.dims = [C, 2 * C, 4 * C, 8 * C]
        # One S-NomMer stage per bottleneck ratio (the paper: two), the rest
        # G-NomMer; the position embedding enters the first G stage.
        self.num_local_stages = len(self.arch_settings['bottleneck_ratios'])
        self.out_indices = parse_out_indices(out_indices, 4)
        self.out_type, self.frozen_stages = out_type, frozen_stages
        self.norm_eval = norm_eval

        self.stem = ConvStem(in_channels, C, norm_cfg)
        mixer_cfg = dict(
            window_size=window_size,
            contexts=tuple(contexts),
            global_type=global_type,
            fusion=fusion,
            norm_cfg=norm_cfg,
        )
        self.stages, self.merges = self._build_stages(
            mixer_cfg, dct_blocks, drop_path_rate, with_cp
        )
        self.pos_embed, self.cls_token = self._build_embeddings(img_size)
        register_parts(self, self._build_out_norms())
        self._register_load_state_dict_pre_hook(self._resize_pos_embed_hook)
        self._init_default_weights()
        self._freeze_stages()

    # ------------------------------------------------------------ settings
    @classmethod
    def parse_arch(cls, arch: str | dict) -> dict:
        settings = parse_arch(
            'NomMer',
            cls.arch_zoo,
            cls.ARCH_KEYS,
            arch,
            lengths=dict(depths=4, num_heads=4),
        )
        ratios = settings['bottleneck_ratios']
        if not isinstance(ratios, (list, tuple)) or not 1 <= len(ratios) <= 3:
            raise ValueError(
                f"NomMer: arch['bottleneck_ratios']={ratios!r}; expected one "
                'ratio per S-NomMer stage, 1 to 3 of them (the paper: 2), so '
                'that the last stage is a G-NomMer stage'
            )
        return settings

    def _check_args(self, arch: str | dict, **args) -> tuple[dict, tuple, tuple]:
        """Every argument checked at construction by name, each error naming
        the argument, its value and what is accepted (the mixer's options:
        :class:`NomMerMixer`). Returns the arch settings, ``dct_blocks`` and
        ``img_size`` as tuples."""
        settings = self.parse_arch(arch)
        check_arch_values(
            'NomMer',
            settings,
            ints=('embed_dims',),
            int_lists=('depths', 'num_heads', 'bottleneck_ratios'),
        )
        check_common(
            'NomMer',
            in_channels=args['in_channels'],
            drop_path_rate=args['drop_path_rate'],
            frozen_stages=args['frozen_stages'],
            norm_cfg=args['norm_cfg'],
        )
        check_int('NomMer', 'window_size', args['window_size'], 1)
        num_local = len(settings['bottleneck_ratios'])
        dct_blocks = args['dct_blocks']
        if not isinstance(dct_blocks, (list, tuple)) or len(dct_blocks) != num_local:
            raise ValueError(
                f'NomMer: dct_blocks={dct_blocks!r}; expected one DCT block '
                f'size per S-NomMer stage, {num_local} as arch '
                f'bottleneck_ratios={settings["bottleneck_ratios"]} says'
            )
        dct_blocks = check_ints('NomMer', 'dct_blocks', dct_blocks, num_local, 1)
        img_size = check_size('NomMer', 'img_size', args['img_size'])
        pos_stride = 4 * 2**num_local
        if min(img_size) < pos_stride:
            raise ValueError(
                f'NomMer: img_size={img_size}; the position embedding is laid '
                f'out at stride {pos_stride}, so each side must be >= {pos_stride}'
            )
        if args['out_type'] not in self.OUT_TYPES:
            raise ValueError(
                f'NomMer: out_type={args["out_type"]!r}; expected one of '
                f'{self.OUT_TYPES}'
            )
        return settings, dct_blocks, img_size

    # -------------------------------------------------------------- layout
    def _build_stages(
        self, mixer_cfg: dict, dct_blocks: tuple, drop_path_rate: float, with_cp: bool
    ) -> tuple[nn.ModuleList, nn.ModuleList]:
        """S-NomMer stages (``mixer_cfg`` with the stage's DCT block and
        bottleneck ratio), then G-NomMer stages; and the merges between
        them."""
        s = self.arch_settings
        drop_paths = stage_drop_paths(drop_path_rate, s['depths'])
        stages = nn.ModuleList()
        for i, (dims, heads) in enumerate(zip(self.dims, s['num_heads'])):
            # The MLP is 2x wide, 1x in the last stage (the reference's).
            hidden = dims if i == 3 else 2 * dims
            if i < self.num_local_stages:
                ratio = s['bottleneck_ratios'][i]
                cfg = dict(mixer_cfg, dct_block=dct_blocks[i], reduction=ratio)
                blocks = [
                    SNomMerBlock(dims, heads, hidden, p, cfg) for p in drop_paths[i]
                ]
            else:
                blocks = [GNomMerBlock(dims, heads, hidden, p) for p in drop_paths[i]]
            stages.append(NomMerStage(blocks, with_cp))
        merges = nn.ModuleList(
            TokenMerge(self.dims[i], self.dims[i + 1]) for i in range(3)
        )
        return stages, merges

    def _build_embeddings(self, img_size: tuple) -> tuple[nn.Parameter, nn.Parameter]:
        """The position embedding, laid out for ``img_size`` at the first G
        stage's stride, and the class token of the last stage."""
        pos_stride = 4 * 2**self.num_local_stages
        self.pos_grid = (img_size[0] // pos_stride, img_size[1] // pos_stride)
        pos_embed = torch.zeros(1, *self.pos_grid, self.dims[self.num_local_stages])
        cls_token = torch.zeros(1, 1, self.dims[3])
        return nn.Parameter(pos_embed), nn.Parameter(cls_token)

    def _build_out_norms(self) -> dict[str, nn.Module]:
        """``norm{i}`` of every feature-map output; ``final_norm`` of the
        class token or the pooled tokens."""
        norms = {
            NORM_NAMES[i]: nn.LayerNorm(self.dims[i])
            for i in self.out_indices
            if i < 3 or self.out_type == 'featmap'
        }
        if self.out_type != 'featmap':
            norms['final_norm'] = nn.LayerNorm(self.dims[3])
        return norms

    # -------------------------------------------------------------- weights
    def _init_default_weights(self) -> None:
        # The reference: ViT-style Linear and norm init, convs at PyTorch's
        # default; position embedding and class token ~ N(0, 1).
        init_linear_and_norms(self)
        nn.init.normal_(self.pos_embed)
        nn.init.normal_(self.cls_token)

    def _resize_pos_embed_hook(
        self, state_dict: dict, prefix: str, *args, **kwargs
    ) -> None:
        """Interpolate a checkpoint's position embedding to this model's grid
        (e.g. a 224 checkpoint into a 384 model)."""
        resize_pos_embed_on_load(
            state_dict, prefix + 'pos_embed', self.pos_embed, channels_last=True
        )

    @staticmethod
    def interpolate_pos_embed(pos: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """(1, h, w, C) -> (1, *size, C), bicubic."""
        return interpolate_pos_embed(pos, size, channels_last=True)

    # ---------------------------------------------------------- train mode
    def _layer_depth(self, name: str) -> int | None:
        d, parts = self.arch_settings['depths'], name.split('.')
        if parts[0] == 'stem':
            return 0
        if parts[0] == 'stages':
            return sum(d[: int(parts[1])]) + int(parts[3]) + 1
        if parts[0] == 'merges':  # ends stage i, as Swin's downsample
            return sum(d[: int(parts[1]) + 1])
        if parts[0] == 'pos_embed':  # added to the first G stage's input
            return sum(d[: self.num_local_stages])
        if parts[0] == 'cls_token':  # joins the tokens at stage 3
            return sum(d[:3])
        return None

    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.stem)
        for i in range(min(self.frozen_stages, 3) + 1):
            frozen.append(self.stages[i])
            if i > 0:
                frozen.append(self.merges[i - 1])
            if hasattr(self, f'norm{i}'):
                frozen.append(getattr(self, f'norm{i}'))
        freeze(frozen)
        if self.frozen_stages >= self.num_local_stages:
            self.pos_embed.requires_grad = False
        if self.frozen_stages >= 3:
            self.cls_token.requires_grad = False

    # ------------------------------------------------------------- forward
    def _normed_map(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> normed (B, C, H, W)."""
        return getattr(self, NORM_NAMES[i])(x).permute(0, 3, 1, 2).contiguous()

    @empty_batch_safe
    def forward(self, x: torch.Tensor) -> tuple:
        outs = []
        x = self.stem(x)  # (B, H, W, C)
        # the stages up to the last output, not a slice: TorchDynamo 2.1 cannot
        # compile a sliced ModuleList
        for i, stage in enumerate(self.stages):
            if i > max(self.out_indices):
                break
            if i > 0:
                x = self.merges[i - 1](x)
            if i < self.num_local_stages:  # S-NomMer: on the 2-D map
                x = stage(x)
            else:  # G-NomMer: on the token sequence
                B, H, W, C = x.shape
                if i == self.num_local_stages:  # from here on, absolute position
                    x = x + self.interpolate_pos_embed(self.pos_embed, (H, W))
                tokens = x.reshape(B, H * W, C)
                if i == 3:  # the class token joins the last stage
                    tokens = torch.cat(
                        [self.cls_token.expand(B, -1, -1), tokens], dim=1
                    )
                tokens = stage(tokens)
                x = tokens[:, -H * W :].reshape(B, H, W, C)
            if i not in self.out_indices:
                continue
            if i == 3 and self.out_type == 'cls_token':
                outs.append(self.final_norm(tokens[:, 0]))
            elif i == 3 and self.out_type == 'avg_featmap':
                outs.append(self.final_norm(tokens[:, 1:].mean(dim=1)))
            else:
                outs.append(self._normed_map(i, x))
        return tuple(outs)

    # ---------------------------------------------------------- inspection
    def nominators(self) -> Iterator[tuple[str, nn.Module]]:
        """``('stages.0.blocks.0', ContextNominator)`` for every S-NomMer
        block that nominates (none when the blocks sum their contexts)."""
        for i in range(self.num_local_stages):
            for j, block in enumerate(self.stages[i].blocks):
                if block.mixer.nominator is not None:
                    yield f'stages.{i}.blocks.{j}', block.mixer.nominator

    def nomination_maps(self) -> 'OrderedDict[str, torch.Tensor]':
        """Candidate chosen per position by every S-NomMer block in the last
        forward: ``{'stages.0.blocks.0': (B, H, W) int64}``, values index
        ``mixer.contexts`` (by default 0 = conv, 1 = window, 2 = global).
        Empty when the blocks sum their contexts instead of nominating. The
        names of the indices: :meth:`nomination_contexts`."""
        return OrderedDict(
            (name, nominator.nomination)
            for name, nominator in self.nominators()
            if nominator.nomination is not None
        )

    def nomination_contexts(self) -> tuple:
        """What the indices of :meth:`nomination_maps` mean:
        ``nomination_contexts()[k]`` is the context index ``k`` chose, e.g.
        ``('conv', 'window', 'global')``."""
        return self.stages[0].blocks[0].mixer.contexts
