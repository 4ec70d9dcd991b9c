"""What the plugin's backbones share: arch names checked against an
``arch_zoo``, ``out_indices`` against the number of stages, the
``StagedBackbone`` base (``frozen_stages`` / ``norm_eval`` in ``train()``),
activation checkpointing, default init, and resizing position embeddings."""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from ...torch_compat import at_least_float32, is_compiling
from ..layers.shapes import same_size


def parse_arch(
    model: str,
    zoo: dict,
    keys: Sequence[str],
    arch: str | dict,
    lengths: dict | None = None,
) -> dict:
    """Settings of ``arch``: a zoo name (case-insensitive) or a dict holding
    ``keys``. ``lengths`` gives the required length of list settings. Errors
    name the valid choices."""
    if isinstance(arch, str):
        key = arch.lower()
        if key not in zoo:
            raise ValueError(
                f'Unknown {model} arch {arch!r}. Choose one of '
                f'{sorted(set(zoo))} or give a dict with keys {list(keys)}.'
            )
        return {k: list(v) if isinstance(v, list) else v for k, v in zoo[key].items()}
    if not isinstance(arch, dict):
        raise TypeError(f'arch must be a str or dict, got {type(arch)}')
    missing = [k for k in keys if k not in arch]
    if missing:
        raise ValueError(
            f'{model} arch dict lacks keys {missing}; it needs {list(keys)}.'
        )
    unknown = [k for k in arch if k not in keys]
    if unknown:
        raise ValueError(
            f'{model} arch dict has unknown keys {unknown}; it takes exactly '
            f'{list(keys)} (other settings are arguments of {model} itself).'
        )
    settings = {k: arch[k] for k in keys}
    for key, n in (lengths or {}).items():
        if len(settings[key]) != n:
            raise ValueError(f'arch[{key!r}] needs {n} entries, got {settings[key]}')
    return settings


def arch_table(keys: Sequence[str], rows: dict[tuple, tuple]) -> dict[str, dict]:
    """An ``arch_zoo`` written as one row per arch: ``{names: values}``, the
    values in the order of ``keys``; every name of a row (its aliases) maps
    to the same settings."""
    zoo = {}
    for names, values in rows.items():
        if len(values) != len(keys):
            raise ValueError(f'arch {names} has {len(values)} values for {keys}')
        zoo.update(dict.fromkeys(names, dict(zip(keys, values))))
    return zoo


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(model: str, name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; else a ValueError naming the
    argument, the value and the range."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        allowed = f'an int >= {low}' if high is None else f'an int in [{low}, {high}]'
        raise ValueError(f'{model}: {name}={value!r}; expected {allowed}')
    return value


def check_ints(model: str, name: str, value, length: int, low: int) -> tuple:
    """A sequence of ``length`` ints, each >= ``low``."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or not all(_is_int(v) and v >= low for v in value)
    ):
        raise ValueError(f'{model}: {name}={value!r}; expected {length} ints >= {low}')
    return tuple(value)


def check_size(model: str, name: str, value) -> tuple:
    """An image size: a positive int or an (H, W) pair of them."""
    if _is_int(value) and value > 0:
        return (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_is_int(v) and v > 0 for v in value)
    ):
        return tuple(value)
    raise ValueError(
        f'{model}: {name}={value!r}; expected a positive int or '
        'an (H, W) pair of positive ints'
    )


def check_drop_path_rate(model: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < 1
    ):
        raise ValueError(
            f'{model}: drop_path_rate={value!r}; expected a '
            'number in [0, 1) (the rate of the deepest block)'
        )
    return float(value)


def check_norm_cfg(model: str, norm_cfg) -> dict:
    """A norm config whose ``type`` is a registered norm layer."""
    from mmengine.registry import MODELS
    import mmcv.cnn  # noqa: F401  (registers BN, SyncBN, GN, LN, IN)

    kind = norm_cfg.get('type') if isinstance(norm_cfg, dict) else None
    if not isinstance(kind, str) or MODELS.get(kind) is None:
        raise ValueError(
            f'{model}: norm_cfg={norm_cfg!r}; expected a dict whose type is a '
            "registered norm layer, e.g. dict(type='BN') or "
            "dict(type='SyncBN')"
        )
    return norm_cfg


def pretrained_init_cfg(model: str, pretrained, init_cfg):
    """``init_cfg`` for the deprecated ``pretrained=`` argument that mmdet's
    and mmseg's base configs still pass (``model.pretrained`` goes to the
    backbone), mapped as their own backbones map it."""
    if pretrained is None:
        return init_cfg
    if init_cfg is not None:
        raise ValueError(
            f'{model}: init_cfg and pretrained={pretrained!r} '
            'are both set; keep init_cfg=dict(type='
            "'Pretrained', checkpoint=...) alone"
        )
    if not isinstance(pretrained, str):
        raise ValueError(
            f'{model}: pretrained={pretrained!r}; expected a '
            'checkpoint path or URL, or None'
        )
    warnings.warn(
        f'{model}: pretrained is deprecated, please use "init_cfg" instead',
        DeprecationWarning,
    )
    return dict(type='Pretrained', checkpoint=pretrained)


def check_common(
    model: str,
    *,
    in_channels,
    drop_path_rate,
    frozen_stages,
    norm_cfg=None,
    num_stages: int = 4,
) -> None:
    """The arguments every backbone here takes (``norm_cfg`` where it has
    one), each checked by name."""
    check_int(model, 'in_channels', in_channels, 1)
    check_drop_path_rate(model, drop_path_rate)
    check_int(model, 'frozen_stages', frozen_stages, -1, num_stages - 1)
    if norm_cfg is not None:
        check_norm_cfg(model, norm_cfg)


def check_arch_values(
    model: str, settings: dict, ints: Sequence[str] = (), int_lists: Sequence[str] = ()
) -> None:
    """Arch ``ints`` are ints >= 1; ``int_lists`` are lists of them."""
    for key in ints:
        check_int(model, f'arch[{key!r}]', settings[key], 1)
    for key in int_lists:
        value = settings[key]
        check_ints(model, f'arch[{key!r}]', value, len(value), 1)


def parse_out_indices(out_indices: int | Sequence[int], num_stages: int) -> tuple:
    """Sorted, de-duplicated, non-negative stage indices; negative ones
    count from the end."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    if not out_indices or any(not -num_stages <= i < num_stages for i in out_indices):
        raise ValueError(
            f'out_indices must be a non-empty subset of '
            f'0..{num_stages - 1} (or -{num_stages}..-1), got '
            f'{out_indices}'
        )
    return tuple(sorted({i % num_stages for i in out_indices}))


# Output norm names for forward to look up: TorchDynamo 2.1 breaks its
# graph on getattr with an f-string, not on a constant.
NORM_NAMES = ('norm0', 'norm1', 'norm2', 'norm3')


def stage_drop_paths(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth of every block, rising linearly over all blocks from
    0 to ``rate`` (the deepest block), one list per stage."""
    rates = torch.linspace(0, rate, sum(depths)).tolist()
    starts = itertools.accumulate(depths, initial=0)
    return [rates[start : start + depth] for start, depth in zip(starts, depths)]


def register_parts(
    owner: nn.Module, parts: dict[str, nn.Module | nn.Parameter]
) -> None:
    """Set the modules and parameters a builder returned on ``owner`` under
    their names, in order: the names are state-dict keys (``norm0``,
    ``pos_embed1``, ``stage1``, ...) and the order is theirs."""
    for name, part in parts.items():
        setattr(owner, name, part)


def freeze(modules: Iterable[nn.Module]) -> None:
    """Eval mode and no gradients for ``modules`` (``frozen_stages``)."""
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad = False


def batchnorms_eval(model: nn.Module) -> None:
    """Put every BatchNorm of ``model`` in eval mode (``norm_eval``)."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


# The buffers norm layers update in training mode, found by name to cover
# torch's BatchNorm and SyncBatchNorm and mmcv's SyncBatchNorm (no _BatchNorm).
_RUNNING_STATS = ('running_mean', 'running_var', 'num_batches_tracked')


class _RunningStatsKept:
    """Recompute context of :func:`maybe_checkpoint`: on exit, a block's norm
    layers hold the running statistics they held on entry. BatchNorm must
    run the recomputation in training mode, to normalize with the batch's
    statistics as the first pass did (same outputs and gradients), and that
    moves ``running_mean``, ``running_var`` and ``num_batches_tracked`` a
    second time; this undoes it."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __enter__(self) -> None:
        self.saved = [
            (buf, buf.clone())
            for name, buf in self.block.named_buffers()
            if name.rpartition('.')[2] in _RUNNING_STATS
        ]

    def __exit__(self, *exc_info) -> None:
        # also on early stop: recomputation ends with an exception once
        # backward has the tensors it needs
        with torch.no_grad():
            for buf, value in self.saved:
                buf.copy_(value)


def maybe_checkpoint(
    block: nn.Module, x: torch.Tensor, *args, enabled: bool
) -> torch.Tensor:
    """``block(x, *args)``, recomputed in backward instead of stored when
    ``enabled`` (the backbone's ``with_cp``) and gradients flow. Every
    backbone's stage loop calls it once per block, so blocks know nothing
    of checkpointing. The recomputation repeats the first pass exactly: the
    RNG state is restored (drop path, Gumbel noise) and BatchNorm normalizes
    with the batch's statistics again, while its running statistics move
    once per step, not twice."""
    if not (enabled and x.requires_grad):
        return block(x, *args)
    if is_compiling():
        # AOTAutograd recomputes inside its backward graph, which writes no
        # buffers; and dynamo takes no context_fn but dispatch modes.
        return cp.checkpoint(block, x, *args, use_reentrant=False)
    return cp.checkpoint(
        block,
        x,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _RunningStatsKept(block)),
    )


class StageBlocks(nn.Sequential):
    """The blocks of a stage (keys ``0``, ``1``, ... as in ``nn.Sequential``),
    run in order, each through :func:`maybe_checkpoint`. The stage stays one
    module that is called, so forward hooks on it fire."""

    def __init__(self, *blocks: nn.Module, with_cp: bool = False) -> None:
        super().__init__(*blocks)
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = maybe_checkpoint(block, x, enabled=self.with_cp)
        return x


def empty_batch_safe(forward: Callable) -> Callable:
    """Wrap a backbone's ``forward`` so that a batch of 0 images gives
    outputs with batch 0 and the shapes a real batch would have (window
    partitions and reshapes with ``-1`` cannot infer sizes from 0 elements).
    The shapes come from one blank image run in eval mode without autograd,
    so no BatchNorm statistics move."""

    @functools.wraps(forward)
    def wrapped(self, x: torch.Tensor, *args, **kwargs):
        if x.shape[0] != 0:
            return forward(self, x, *args, **kwargs)
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                outs = forward(self, x.new_zeros((1, *x.shape[1:])), *args, **kwargs)
        finally:
            self.train(was_training)
        return type(outs)(o.new_empty((0, *o.shape[1:])) for o in outs)

    return wrapped


class StagedBackbone(BaseModule):
    """Base of the plugin's backbones: ``train()`` keeps the stages chosen by
    ``frozen_stages`` frozen and, with ``norm_eval``, BatchNorms in eval;
    ``init_weights()`` runs the ``before_pretrained_load`` checks before
    mmengine applies ``init_cfg``."""

    frozen_stages: int = -1
    norm_eval: bool = False
    # the converter (under tools/model_converters/) of its reference weights
    CONVERTER: str | None = None
    # Called with the backbone in init_weights(), before mmengine loads an
    # init_cfg=Pretrained file with strict=False. Importing nommer_mm (which
    # any import of nommer_mm.models does first) installs
    # nommer_mm.checkpoint_fit.check_pretrained_fits here, which stops on a
    # file that does not fit; this package itself reads no files.
    before_pretrained_load: tuple[Callable[[nn.Module], None], ...] = ()

    def init_weights(self) -> None:
        if not self._is_init:
            for check in self.before_pretrained_load:
                check(self)
        super().init_weights()

    def _freeze_stages(self) -> None:
        raise NotImplementedError

    def _layer_depth(self, name: str) -> int | None:
        """Depth of parameter ``name`` (no prefix): 0 for the stem, one per
        block; None for what comes after the last block (output norms)."""
        raise NotImplementedError

    def get_layer_depth(self, param_name: str, prefix: str = '') -> tuple[int, int]:
        """(depth, number of depths) of a parameter, as mmpretrain's
        layer-wise lr decay reads it: the stem is depth 0, every block one
        depth, and the output norms and anything outside the backbone
        (names without ``prefix``: necks, heads) the last,
        ``sum(depths) + 1``."""
        num_layers = sum(self.arch_settings['depths']) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        depth = self._layer_depth(param_name[len(prefix) :])
        return (num_layers - 1 if depth is None else depth), num_layers

    def train(self, mode: bool = True) -> 'StagedBackbone':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            batchnorms_eval(self)
        return self


def init_linear_and_norms(model: nn.Module) -> None:
    """The ViT-style default both NomMer's and GC ViT's references use:
    truncated normal (std 0.02) Linear weights with zero biases, unit
    LayerNorm / BatchNorm; convolutions keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, _BatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def interpolate_pos_embed(
    pos: torch.Tensor, size: Sequence[int], channels_last: bool = False
) -> torch.Tensor:
    """Bicubic resize of a position-embedding grid to ``size``:
    (1, C, h, w) -> (1, C, *size), or (1, h, w, C) -> (1, *size, C) with
    ``channels_last``. Returns ``pos`` itself when the size already fits
    (outside a trace)."""
    grid = pos.permute(0, 3, 1, 2) if channels_last else pos
    if same_size(grid.shape[-2:], size):
        return pos
    # at least fp32 (half-precision bicubic is not on every device), and
    # float64 stays float64
    dtype = at_least_float32(grid.dtype)
    out = F.interpolate(
        grid.to(dtype), size=tuple(size), mode='bicubic', align_corners=False
    ).to(pos.dtype)
    return out.permute(0, 2, 3, 1) if channels_last else out


def resize_pos_embed_on_load(
    state_dict: dict, key: str, own: torch.Tensor, channels_last: bool = False
) -> None:
    """In a load_state_dict pre-hook: interpolate the checkpoint's grid at
    ``key`` to the shape of ``own`` (e.g. a 224 checkpoint into a 384 model).
    Grids of another rank or channel count are left to the size check."""
    src = state_dict.get(key)
    if src is None or src.shape == own.shape or src.ndim != 4:
        return
    channel = -1 if channels_last else 1
    if src.shape[channel] != own.shape[channel]:
        return
    size = own.shape[1:3] if channels_last else own.shape[2:]
    from mmengine.logging import print_log

    print_log(
        f'Resize {key} from {tuple(src.shape)} to {tuple(own.shape)}.', logger='current'
    )
    state_dict[key] = interpolate_pos_embed(src, size, channels_last)
