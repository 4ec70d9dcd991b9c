"""Argument checks shared by the plugin's backbones: arch names against an
``arch_zoo`` and ``out_indices`` against the number of stages."""
from __future__ import annotations

from typing import Sequence


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
