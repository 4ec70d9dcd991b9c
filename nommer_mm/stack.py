"""Which OpenMMLab stack is installed: the original OpenMMLab releases
(``upstream``: mmcv, mmengine, mmdet, mmsegmentation, mmpretrain) or their
maintained fork OneDL (``onedl``: onedl-mmcv, onedl-mmengine,
onedl-mmdetection, onedl-mmsegmentation, onedl-mmpretrain). Both install
the same import names (``mmcv``, ``mmengine``, ``mmdet``, ``mmseg``,
``mmpretrain``); nommer_mm supports either one, not a mix of the two.

``import nommer_mm`` calls :func:`check_stack`, which stops with
:class:`StackMismatchError` naming the packages, their versions and the fix
when the installed distributions come from both stacks.
:func:`describe` says what was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

UPSTREAM = 'upstream'
ONEDL = 'onedl'

# import name -> distribution name on each stack
DISTRIBUTIONS: dict[str, dict[str, str]] = {
    'mmcv': {UPSTREAM: 'mmcv', ONEDL: 'onedl-mmcv'},
    'mmengine': {UPSTREAM: 'mmengine', ONEDL: 'onedl-mmengine'},
    'mmdet': {UPSTREAM: 'mmdet', ONEDL: 'onedl-mmdetection'},
    'mmseg': {UPSTREAM: 'mmsegmentation', ONEDL: 'onedl-mmsegmentation'},
    'mmpretrain': {UPSTREAM: 'mmpretrain', ONEDL: 'onedl-mmpretrain'},
}
STACK_NAMES = {UPSTREAM: 'OpenMMLab (upstream)', ONEDL: 'OneDL (maintained fork)'}


class StackMismatchError(ImportError):
    """The installed OpenMMLab packages come from both stacks."""


@dataclass(frozen=True)
class Found:
    """One installed distribution of an OpenMMLab import name."""

    module: str
    distribution: str
    version: str
    stack: str

    def __str__(self) -> str:
        return (
            f'{self.distribution} {self.version} ({self.stack}, import {self.module})'
        )


def installed() -> list[Found]:
    """The OpenMMLab distributions installed, by their package metadata
    (a source tree on ``sys.path`` without metadata is not counted)."""
    found = []
    for module, names in DISTRIBUTIONS.items():
        for stack, dist in names.items():
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
            found.append(Found(module, dist, version, stack))
    return found


def detect_stack(found: list[Found] | None = None) -> str | None:
    """``'upstream'`` or ``'onedl'``; None when no OpenMMLab distribution
    is installed. Raises :class:`StackMismatchError` for a mix."""
    found = installed() if found is None else found
    stacks = {f.stack for f in found}
    if len(stacks) > 1:
        raise StackMismatchError(mismatch_message(found))
    return stacks.pop() if stacks else None


def mismatch_message(found: list[Found]) -> str:
    """What is installed from each stack, and the two ways out."""
    by_stack = {s: [f for f in found if f.stack == s] for s in (UPSTREAM, ONEDL)}
    # keep the stack that brings mmcv (the compiled part), else the larger
    mmcv = [f.stack for f in found if f.module == 'mmcv']
    keep = mmcv[0] if len(mmcv) == 1 else max(by_stack, key=lambda s: len(by_stack[s]))
    drop = ONEDL if keep == UPSTREAM else UPSTREAM
    lines = [
        'nommer_mm: the installed OpenMMLab packages mix two stacks, which '
        'share import names but not code; nommer_mm supports one of them:'
    ]
    for stack in (UPSTREAM, ONEDL):
        names = ', '.join(str(f) for f in by_stack[stack])
        lines.append(f'  {STACK_NAMES[stack]}: {names}')
    lines += [
        f'Fix: keep one stack, e.g. {keep}: '
        f'pip uninstall -y {" ".join(f.distribution for f in by_stack[drop])} '
        f'&& python tools/install_deps.py --stack {keep}',
        f'(or the other way round: --stack {drop}, after uninstalling '
        f'{" ".join(f.distribution for f in by_stack[keep])}); a fresh '
        'virtual environment per stack avoids the mix.',
    ]
    return '\n'.join(lines)


def check_stack() -> str | None:
    """The stack found (see :func:`detect_stack`); the error on a mix is
    raised here, at ``import nommer_mm``, before the mixed packages fail in
    less clear ways."""
    return detect_stack()


def describe(found: list[Found] | None = None) -> str:
    found = installed() if found is None else found
    stack = detect_stack(found)
    if stack is None:
        return 'no OpenMMLab package installed'
    return f'{STACK_NAMES[stack]}: ' + ', '.join(
        f'{f.distribution} {f.version}' for f in found
    )


def __getattr__(name: str) -> str | None:
    # ``STACK`` is looked up, not computed on loading this file: the
    # installer reads this file before the packages it would check exist.
    if name == 'STACK':
        return check_stack()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
