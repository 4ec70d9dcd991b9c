"""Whether a checkpoint's weights fit a model, decided before they load.

mmengine loads ``init_cfg=dict(type='Pretrained', ...)`` and ``load_from``
with ``strict=False`` and reports what did not load in one easily missed
line, so a file of another arch, a wrong ``prefix`` or a file lacking keys
trains from random weights. Here:

* :func:`check_pretrained_fits` reads a ``Pretrained`` file (through
  :func:`~nommer_mm.checkpoint_safety.load_checkpoint_file`) and stops
  when it leaves backbone weights out or holds them in another shape.
  ``nommer_mm`` installs it as a ``StagedBackbone.before_pretrained_load``
  check, so every backbone's ``init_weights()`` runs it, however the
  backbone was built.
* :func:`check_load_from_fits` does the same for a ``load_from``
  checkpoint (``SafeCheckpointHook`` calls it).

Both name the likely fix (a missing ``prefix='backbone.'``, the zoo arch
the weights are) and take an opt-out for deliberate partial loads.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings

import torch
import torch.nn as nn
from mmengine.logging import print_log

from .checkpoint_safety import (
    MissingCheckpointError,
    WeightsDoNotFitError,
    describe_mismatches,
    load_checkpoint_file,
    weight_mismatches,
)

# Keys a classification checkpoint lacks by design when the backbone serves
# a detector or segmentor (the per-output norms, Visformer's stride-4
# branch), and keys the backbones resize while loading.
_NEW_IN_DENSE = re.compile(r'^(norm\d|upsample0)\.')
_RESIZED_ON_LOAD = re.compile(r'(pos_embed\d?|relative_position_bias_table)$')
# The init_cfg key that lets a Pretrained load leave weights out on purpose.
ALLOW_PARTIAL = 'allow_partial'


def _pretrained_cfg(backbone: nn.Module) -> dict | None:
    """The ``type='Pretrained'`` entry of ``backbone.init_cfg``, if any."""
    cfg = backbone.init_cfg
    if isinstance(cfg, list):
        cfg = next(
            (c for c in cfg if isinstance(c, dict) and c.get('type') == 'Pretrained'),
            None,
        )
    if not isinstance(cfg, dict) or cfg.get('type') != 'Pretrained':
        return None
    return cfg


def unfilled_backbone_weights(backbone: nn.Module, state: dict) -> dict[str, list]:
    """``missing`` and ``size mismatch`` keys of ``backbone`` that ``state``
    (backbone keys, no prefix) leaves at their initial values, beyond the
    dense output norms a classification checkpoint cannot have and the
    grids resized while loading."""
    found = weight_mismatches(backbone, {'state_dict': state})
    return {
        'missing': [k for k in found['missing'] if not _NEW_IN_DENSE.match(k)],
        'size mismatch': [
            s
            for s in found['size mismatch']
            if not _RESIZED_ON_LOAD.search(s.split(':')[0])
        ],
    }


def arch_of_weights(backbone: nn.Module, state: dict) -> str | None:
    """The zoo arch of ``type(backbone)`` whose weights have exactly the
    shapes of ``state`` (backbone keys, no prefix), e.g. ``'small'``; None
    when none fits or it is the backbone's own."""
    zoo = getattr(type(backbone), 'arch_zoo', None)
    own = getattr(backbone, 'arch_settings', None)
    if not isinstance(zoo, dict) or not state:
        return None
    names: dict[str, str] = {}  # one name per arch, the longest alias
    for name, settings in zoo.items():
        key = repr(sorted(settings.items()))
        if len(name) > len(names.get(key, '')):
            names[key] = name
    shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, 'shape')}
    mine = _checked_shapes(backbone)
    if sum(shapes.get(k) != v for k, v in mine.items()) < 0.05 * len(mine):
        return None  # a few keys off: a damaged or edited file, not an arch
    for name in names.values():
        if own is not None and all(own.get(k) == v for k, v in zoo[name].items()):
            continue
        theirs = _arch_shapes(type(backbone), name)
        if theirs and all(shapes.get(k) == v for k, v in theirs.items()):
            return name
    return None


@functools.lru_cache(maxsize=16)
def _arch_shapes(cls: type, arch: str) -> dict | None:
    """Weight shapes of ``cls(arch=arch)`` (a CPU build, once per process;
    the constructors compute on their tensors, so the meta device cannot
    stand in), as :func:`_checked_shapes` gives them."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            candidate = cls(arch=arch)
    except Exception:  # an arch that needs other arguments: not a match
        return None
    return _checked_shapes(candidate)


def _checked_shapes(backbone: nn.Module) -> dict[str, tuple]:
    """Weight shapes of ``backbone``, without the keys
    :func:`unfilled_backbone_weights` excuses."""
    return {
        k: tuple(v.shape)
        for k, v in backbone.state_dict().items()
        if not _NEW_IN_DENSE.match(k) and not _RESIZED_ON_LOAD.search(k)
    }


def unfit_weights_hints(
    backbone: nn.Module, state: dict, prefix_hint: str | None = None
) -> list[str]:
    """The likely fixes for ``state`` (backbone keys, no prefix) not fitting
    ``backbone``: the zoo arch the weights are, and ``prefix_hint`` (a
    sentence about the keys' prefix) when given."""
    hints = []
    if prefix_hint:
        hints.append(prefix_hint)
    arch = arch_of_weights(backbone, state)
    if arch is not None:
        model = type(backbone).__name__
        hints.append(
            f"these weights are {model} arch='{arch}': build the backbone with "
            f"arch='{arch}', or load the checkpoint of this config's arch"
        )
    return hints


def check_pretrained_fits(backbone: nn.Module) -> None:
    """Before ``init_cfg=dict(type='Pretrained', ...)`` (or the deprecated
    ``pretrained=``) loads a local file: stop when the file cannot be read
    (one line naming it) or leaves backbone weights at their random
    initialisation or in another shape (mmengine loads with
    ``strict=False`` and says so in one easily missed line), with the list
    and the likely fix.

    ``allow_partial=True`` in the Pretrained ``init_cfg`` loads what fits
    and only warns about the rest, for deliberate partial loads: e.g.
    ``init_cfg=dict(type='Pretrained', checkpoint='x.pth',
    prefix='backbone.', allow_partial=True)``. The key is taken out of the
    ``init_cfg`` before mmengine reads it."""
    cfg = _pretrained_cfg(backbone)
    if cfg is None:
        return
    allow_partial = bool(cfg.pop(ALLOW_PARTIAL, False))
    path, prefix = cfg.get('checkpoint'), cfg.get('prefix')
    if not isinstance(path, str) or '://' in path:
        return  # URLs: mmengine's loader reports them
    state, arch_state, prefix_hint = _pretrained_state(backbone, path, prefix)
    found = unfilled_backbone_weights(backbone, state)
    if not (found['missing'] or found['size mismatch']):
        return
    what = f'{type(backbone).__name__}: init_cfg Pretrained {path}' + (
        f' (prefix {prefix!r})' if prefix else ''
    )
    listing = describe_mismatches(found)
    if allow_partial:
        print_log(
            '!' * 72 + f'\n{what} (allow_partial=True) leaves these weights at '
            'their random initialisation:\n' + listing + '\n' + '!' * 72,
            logger='current',
            level=logging.WARNING,
        )
        return
    hints = unfit_weights_hints(backbone, arch_state, prefix_hint)
    raise WeightsDoNotFitError(
        f'{what} does not fit this backbone; training would start from '
        'random weights for:\n'
        + listing
        + ''.join(f'\nLikely fix: {h}.' for h in hints)
        + f'\nTo load only what fits on purpose, add {ALLOW_PARTIAL}=True to the '
        'Pretrained init_cfg (with pretrained=, use model.backbone.init_cfg='
        f"dict(type='Pretrained', checkpoint=..., {ALLOW_PARTIAL}=True) instead)."
    )


def _pretrained_state(
    backbone: nn.Module, path: str, prefix: str | None
) -> tuple[dict, dict, str | None]:
    """The backbone weights of the Pretrained file ``path`` under
    ``prefix``; the weights to tell the arch from (the ``backbone.`` ones
    when no prefix was given); and the prefix hint, when the keys carry
    ``backbone.`` and no prefix was given. A file that cannot be read
    raises its one-line error (with the converter command when missing)."""
    try:
        ckpt = load_checkpoint_file(path, map_location='cpu', mmap=True)
    except MissingCheckpointError as err:
        if backbone.CONVERTER:
            err.args = (
                f'{err}; convert the reference ImageNet weights to it with: '
                f'python tools/model_converters/{backbone.CONVERTER} '
                f'<reference checkpoint> {path}',
            )
        raise
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        return state, state, None
    if any(k.startswith('backbone.') for k in state):
        inner = {k[9:]: v for k, v in state.items() if k.startswith('backbone.')}
        hint = (
            "its keys start with 'backbone.' (a classifier checkpoint): add "
            "prefix='backbone.' to the Pretrained init_cfg"
        )
        return state, inner, hint
    return state, state, None


def check_load_from_fits(
    model, checkpoint: dict, path: str, allow_partial: bool = False
) -> None:
    """Raise :class:`WeightsDoNotFitError` when ``checkpoint`` (given as
    ``load_from``) leaves backbone weights of ``model`` unfilled or holds
    them in another shape, beyond the dense output norms a classification
    checkpoint cannot have; the rest of the model (necks, heads, e.g. a
    head for another number of classes) and ``allow_partial`` only warn."""
    model = getattr(model, 'module', model)  # DDP or TTA wrapper
    found = weight_mismatches(model, checkpoint)
    if not (found['missing'] or found['size mismatch']):
        return
    backbone = getattr(model, 'backbone', None)
    blocking, hints = {}, []
    if isinstance(backbone, torch.nn.Module) and not allow_partial:
        state = checkpoint.get('state_dict', checkpoint)
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
        inner = {k[9:]: v for k, v in state.items() if k.startswith('backbone.')}
        blocking = unfilled_backbone_weights(backbone, inner)
        if blocking['missing'] or blocking['size mismatch']:
            prefix_hint = None
            if not inner and state:
                prefix_hint = (
                    "its keys carry no 'backbone.' prefix (a backbone-only "
                    'checkpoint): load it with model.backbone.init_cfg='
                    "dict(type='Pretrained', checkpoint=...) instead of load_from"
                )
                inner = state
            hints = unfit_weights_hints(backbone, inner, prefix_hint)
    if blocking.get('missing') or blocking.get('size mismatch'):
        raise WeightsDoNotFitError(
            f'load_from={path} does not fit the backbone of this model; '
            'training would start from random weights for (under backbone.):\n'
            + describe_mismatches(blocking)
            + ''.join(f'\nLikely fix: {h}.' for h in hints)
            + '\nTo load only what fits on purpose, set '
            'default_hooks.checkpoint.allow_partial_load_from=True '
            '(SafeCheckpointHook).'
        )
    print_log(
        '!' * 72 + f'\nload_from={path} leaves parts of the model at their '
        'initial weights:\n' + describe_mismatches(found) + '\n' + '!' * 72,
        logger='current',
        level=logging.WARNING,
    )
