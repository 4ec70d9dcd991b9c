"""The one switch over every execution trick of :mod:`nommer_mm.models.fast`.

On by default; ``NOMMER_FAST=0`` in the environment (read at import) or
``nommer_mm.fast_paths(False)`` turns all of them off, and the models run
their plain PyTorch forward (module calls, out-of-place sums, autograd's own
backward). Both paths compute the same function; the tests hold them equal.
"""

from __future__ import annotations

import os

_OFF_WORDS = ('0', 'false', 'off', 'no')
_enabled = os.environ.get('NOMMER_FAST', '1').strip().lower() not in _OFF_WORDS


def fast_paths_enabled() -> bool:
    """Whether the fast paths may run (each still checks where it applies)."""
    return _enabled


class fast_paths:
    """Turn the fast paths on or off.

    As a call it sets the switch for the process: ``fast_paths(False)``. As a
    context manager it restores the previous setting on exit:
    ``with fast_paths(False): model(x)``.
    """

    def __init__(self, enabled: bool) -> None:
        global _enabled
        if not isinstance(enabled, bool):
            raise TypeError(
                f'fast_paths(enabled): expected True or False, got {enabled!r}'
            )
        self._previous = _enabled
        _enabled = enabled

    def __enter__(self) -> 'fast_paths':
        return self

    def __exit__(self, *exc) -> None:
        global _enabled
        _enabled = self._previous
