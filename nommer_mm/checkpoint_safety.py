"""Let ``torch.load(weights_only=True)`` read mmengine checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7
calls ``torch.load`` without the argument, so resuming a run fails on the
non-tensor objects mmengine writes. Rather than switching that safety off,
we allow-list exactly those objects:

* ``mmengine.logging.HistoryBuffer`` (the message hub's scalar logs),
* the numpy pieces its arrays and scalars pickle to (``ndarray``, ``dtype``
  and the numeric dtype classes, ``_reconstruct``, ``scalar``),
* ``getattr``, but only in the one form HistoryBuffer pickles it:
  ``getattr(HistoryBuffer, <statistics method name>)``. Any other use is
  refused, so ``getattr`` cannot be used to reach arbitrary objects.
"""
from __future__ import annotations

import pickle

import numpy as np
import torch

_registered = False


def _numpy_globals() -> list:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
        prefix = 'numpy._core.multiarray'
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
        prefix = 'numpy.core.multiarray'
    found = [np.ndarray, np.dtype, (_reconstruct, f'{prefix}._reconstruct'),
             (scalar, f'{prefix}.scalar')]
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.*).
    # Logged values are bools, ints and floats.
    for name in ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
                 'uint32', 'uint64', 'float16', 'float32', 'float64'):
        found.append(type(np.dtype(name)))
    return found


def _history_buffer_getattr(obj, name: str):
    """Stand-in for ``builtins.getattr`` while unpickling: resolves only the
    statistics methods HistoryBuffer stores in its pickled state."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and (
            name in HistoryBuffer._statistics_methods
            or name in ('min', 'max', 'current', 'mean')):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint; only '
        'HistoryBuffer statistics methods are.')


def mmengine_checkpoint_globals() -> list:
    """The allow-list, in ``torch.serialization.add_safe_globals`` form."""
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, *_numpy_globals(),
            (_history_buffer_getattr, 'builtins.getattr')]


def allow_mmengine_checkpoint_types() -> None:
    """Register :func:`mmengine_checkpoint_globals` with torch (idempotent)."""
    global _registered
    if _registered or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
    _registered = True
