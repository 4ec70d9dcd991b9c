"""What the plugin's backbones share: arch names checked against an
``arch_zoo``, ``out_indices`` against the number of stages, the
``StagedBackbone`` base (``frozen_stages`` / ``norm_eval`` in ``train()``),
activation checkpointing, default init, and resizing position embeddings."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm


def parse_arch(model: str, zoo: dict, keys: Sequence[str], arch: str | dict,
               lengths: dict | None = None) -> dict:
    """Settings of ``arch``: a zoo name (case-insensitive) or a dict holding
    ``keys``. ``lengths`` gives the required length of list settings. Errors
    name the valid choices."""
    if isinstance(arch, str):
        key = arch.lower()
        if key not in zoo:
            raise ValueError(
                f'Unknown {model} arch {arch!r}. Choose one of '
                f'{sorted(set(zoo))} or give a dict with keys {list(keys)}.')
        return {k: list(v) if isinstance(v, list) else v
                for k, v in zoo[key].items()}
    if not isinstance(arch, dict):
        raise TypeError(f'arch must be a str or dict, got {type(arch)}')
    missing = [k for k in keys if k not in arch]
    if missing:
        raise ValueError(f'{model} arch dict lacks keys {missing}; it needs '
                         f'{list(keys)}.')
    settings = {k: arch[k] for k in keys}
    for key, n in (lengths or {}).items():
        if len(settings[key]) != n:
            raise ValueError(f'arch[{key!r}] needs {n} entries, got '
                             f'{settings[key]}')
    return settings


def parse_out_indices(out_indices: int | Sequence[int],
                      num_stages: int) -> tuple:
    """Sorted, de-duplicated, non-negative stage indices; negative ones
    count from the end."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    if not out_indices or any(not -num_stages <= i < num_stages
                              for i in out_indices):
        raise ValueError(f'out_indices must be a non-empty subset of '
                         f'0..{num_stages - 1} (or -{num_stages}..-1), got '
                         f'{out_indices}')
    return tuple(sorted({i % num_stages for i in out_indices}))


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


def maybe_checkpoint(fn: Callable, x: torch.Tensor, *args,
                     enabled: bool) -> torch.Tensor:
    """``fn(x, *args)``, recomputed in backward instead of stored when
    ``enabled`` (``with_cp``) and gradients flow. The RNG state is restored
    for the recomputation, so drop path and Gumbel noise repeat exactly."""
    if enabled and x.requires_grad:
        return cp.checkpoint(fn, x, *args, use_reentrant=False)
    return fn(x, *args)


class StagedBackbone(BaseModule):
    """Base of the plugin's backbones: ``train()`` keeps the stages chosen by
    ``frozen_stages`` frozen and, with ``norm_eval``, BatchNorms in eval."""

    frozen_stages: int = -1
    norm_eval: bool = False

    def _freeze_stages(self) -> None:
        raise NotImplementedError

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
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, _BatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def interpolate_pos_embed(pos: torch.Tensor, size: Sequence[int],
                          channels_last: bool = False) -> torch.Tensor:
    """Bicubic resize of a position-embedding grid to ``size``:
    (1, C, h, w) -> (1, C, *size), or (1, h, w, C) -> (1, *size, C) with
    ``channels_last``. Returns ``pos`` itself when the size already fits."""
    grid = pos.permute(0, 3, 1, 2) if channels_last else pos
    if tuple(grid.shape[-2:]) == tuple(size):
        return pos
    out = F.interpolate(grid.float(), size=tuple(size), mode='bicubic',
                        align_corners=False).to(pos.dtype)
    return out.permute(0, 2, 3, 1) if channels_last else out


def resize_pos_embed_on_load(state_dict: dict, key: str, own: torch.Tensor,
                             channels_last: bool = False) -> None:
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
    print_log(f'Resize {key} from {tuple(src.shape)} to {tuple(own.shape)}.',
              logger='current')
    state_dict[key] = interpolate_pos_embed(src, size, channels_last)
