"""Reading and writing mmengine checkpoints without letting a file run code.

A checkpoint is untrusted input. torch >= 2.6 unpickles with
``weights_only=True`` by default: tensors, containers and Python scalars
only. mmengine 0.10.7 checkpoints also pickle the message hub's
``HistoryBuffer`` objects and numpy arrays and scalars, which that loader
refuses, and which must not simply be allow-listed:
``HistoryBuffer.__setstate__`` writes into a class-level dict (a file could
widen what later lookups allow), and ``numpy.ndarray`` with its
reconstructor builds object arrays from raw bytes.

* Writing: :func:`to_plain_checkpoint` turns those objects into tensors and
  plain Python data before the file is written (``SafeCheckpointHook`` calls
  it), so our checkpoints load with a bare ``torch.load`` in any process.
* Reading: :func:`load_checkpoint_file` reads those and older mmengine
  checkpoints. For that one ``torch.load`` only, the names older files
  pickle (``HistoryBuffer``, numpy's reconstructors and dtypes, ``getattr``)
  resolve to inert records of this module, which store what they are given
  and run nothing; :func:`to_runtime_checkpoint` then builds numeric arrays
  and real ``HistoryBuffer`` objects from those records by rules fixed
  here (numeric dtypes, sizes that match), never by calling what the file
  names.
* :func:`mmengine_loads_through_plugin` routes mmengine's local-file
  loader (resume, ``load_from``, ``init_cfg=Pretrained``, testing) through
  :func:`load_checkpoint_file` while our tools run a runner.

Nothing here is registered with torch at import.
"""

from __future__ import annotations

import contextlib
import math
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np
import torch

# What a plain-form HistoryBuffer is tagged with on save.
HISTORY_TAG = '__nommer_history_buffer__'
# numpy dtypes a checkpoint may hold: fixed-size numbers and bools. Never
# object, string, void or structured dtypes.
_NUMERIC_KINDS = frozenset('biuf')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked for something a checkpoint may not contain."""


# ----------------------------------------------------------- inert records
class _Record:
    """Base of the stand-ins: built without arguments, state kept as given
    on the instance (never on the class)."""

    def __new__(cls, *args):
        if args:
            raise UnsafeCheckpointError(
                f'{cls.__name__} takes no constructor arguments in a checkpoint'
            )
        return super().__new__(cls)

    def __setstate__(self, state) -> None:
        self.state = state


class _HistoryBufferRecord(_Record):
    """Stands in for ``mmengine.logging.HistoryBuffer`` while unpickling."""


class _ArrayRecord(_Record):
    """Stands in for ``numpy.ndarray``; its state is numpy's
    ``(version, shape, dtype, is_fortran, raw_bytes)``."""


class _DtypeRecord:
    """Stands in for ``numpy.dtype(name, align, copy)``."""

    name = None
    state = None

    def __init__(self, name=None, align=False, copy=True):
        self.name = name
        self.state = None

    def __setstate__(self, state) -> None:
        self.state = state


class _ScalarRecord:
    """What ``numpy.core.multiarray.scalar(dtype, raw_bytes)`` stands for."""

    def __init__(self, dtype, data):
        self.dtype = dtype
        self.data = data


class _StatisticsRef(str):
    """``getattr(HistoryBuffer, name)``: a statistics method, kept as its
    name (HistoryBuffer registers its statistics itself)."""


def _reconstruct(cls, shape=None, typecode=None) -> _ArrayRecord:
    if cls is not _ArrayRecord:
        raise UnsafeCheckpointError(
            f'numpy _reconstruct of {cls!r} is not allowed in a checkpoint'
        )
    return _ArrayRecord()


def _scalar(dtype, data=None) -> _ScalarRecord:
    return _ScalarRecord(dtype, data)


def _getattr(obj, name):
    if (
        obj is _HistoryBufferRecord
        and type(name) is str
        and name.isidentifier()
        and not name.startswith('_')
    ):
        return _StatisticsRef(name)
    raise UnsafeCheckpointError(
        f'getattr(..., {name!r}) is not allowed in a checkpoint; only '
        'getattr(HistoryBuffer, <statistics method>) is'
    )


def _stand_ins() -> list[tuple[Callable, str]]:
    """Names older mmengine checkpoints pickle, each mapped to a record of
    this module (``torch.serialization.safe_globals`` form)."""
    found = [
        (_HistoryBufferRecord, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_getattr, 'builtins.getattr'),
        (_ArrayRecord, 'numpy.ndarray'),
        (_DtypeRecord, 'numpy.dtype'),
    ]
    for prefix in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        found += [
            (_reconstruct, f'{prefix}._reconstruct'),
            (_scalar, f'{prefix}.scalar'),
        ]
    return found


# ---------------------------------------------------------------- reading
def _numeric_dtype(record) -> np.dtype:
    if not isinstance(record, _DtypeRecord) or type(record.name) is not str:
        raise UnsafeCheckpointError(f'bad numpy dtype in checkpoint: {record!r}')
    try:
        dtype = np.dtype(record.name)
    except TypeError as err:
        raise UnsafeCheckpointError(
            f'unknown numpy dtype {record.name!r} in checkpoint'
        ) from err
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise UnsafeCheckpointError(
            f'numpy dtype {dtype} in a checkpoint: only numbers and bools '
            'are allowed (object arrays could build objects from raw bytes)'
        )
    state = record.state
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ('<', '>', '='):
        dtype = dtype.newbyteorder(state[1])
    return dtype


def _array(record: _ArrayRecord) -> np.ndarray:
    state = getattr(record, 'state', None)
    if not (isinstance(state, tuple) and len(state) == 5):
        raise UnsafeCheckpointError('malformed numpy array in checkpoint')
    _, shape, dtype, fortran, data = state
    dtype = _numeric_dtype(dtype)
    if not (
        isinstance(shape, tuple)
        and all(type(s) is int and s >= 0 for s in shape)
        and type(data) is bytes
    ):
        raise UnsafeCheckpointError('malformed numpy array in checkpoint')
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise UnsafeCheckpointError(
            f'numpy array in checkpoint: {len(data)} bytes for shape {shape} of {dtype}'
        )
    array = np.frombuffer(data, dtype=dtype).copy()
    return array.reshape(shape, order='F' if fortran else 'C')


def _scalar_value(record: _ScalarRecord):
    dtype = _numeric_dtype(record.dtype)
    if type(record.data) is not bytes or len(record.data) != dtype.itemsize:
        raise UnsafeCheckpointError('malformed numpy scalar in checkpoint')
    return np.frombuffer(record.data, dtype=dtype)[0].item()


def _history_buffer(log_history, count_history, max_length):
    from mmengine.logging import HistoryBuffer

    log_history = _as_numeric_array(log_history)
    count_history = _as_numeric_array(count_history)
    if (
        type(max_length) is not int
        or max_length <= 0
        or (log_history.shape != count_history.shape or log_history.ndim != 1)
    ):
        raise UnsafeCheckpointError('malformed HistoryBuffer in checkpoint')
    return HistoryBuffer(log_history, count_history, max_length)


def _as_numeric_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.dtype.kind in _NUMERIC_KINDS:
        return value
    raise UnsafeCheckpointError(
        f'HistoryBuffer history of type {type(value).__name__} in checkpoint'
    )


def to_runtime_checkpoint(obj: Any) -> Any:
    """Turn the records :func:`load_checkpoint_file` read and the plain
    form :func:`to_plain_checkpoint` wrote into what mmengine's runner
    expects: numpy arrays and numbers, ``HistoryBuffer`` objects."""
    if isinstance(obj, _ArrayRecord):
        return _array(obj)
    if isinstance(obj, _ScalarRecord):
        return _scalar_value(obj)
    if isinstance(obj, _HistoryBufferRecord):
        state = getattr(obj, 'state', None)
        if not isinstance(state, dict):
            raise UnsafeCheckpointError('malformed HistoryBuffer in checkpoint')
        return _history_buffer(
            to_runtime_checkpoint(state.get('_log_history')),
            to_runtime_checkpoint(state.get('_count_history')),
            state.get('max_length'),
        )
    if isinstance(obj, (_DtypeRecord, _Record)):
        raise UnsafeCheckpointError(f'stray {type(obj).__name__} in checkpoint')
    if isinstance(obj, dict) and obj.get(HISTORY_TAG) is True:
        return _history_buffer(
            obj.get('log_history'), obj.get('count_history'), obj.get('max_length')
        )
    return _map_items(obj, to_runtime_checkpoint)


def _map_items(obj: Any, fn: Callable) -> Any:
    """``fn`` applied to the items of a dict (OrderedDict kept), list or
    tuple; anything else as it is."""
    if isinstance(obj, dict):
        converted = {k: fn(v) for k, v in obj.items()}
        return OrderedDict(converted) if isinstance(obj, OrderedDict) else converted
    if isinstance(obj, list):
        return [fn(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(fn(v) for v in obj)
    return obj


def load_checkpoint_file(filename, map_location=None, **kwargs) -> Any:
    """``torch.load(filename, weights_only=True)`` that also reads mmengine
    checkpoints (see the module docstring). Raises
    :class:`UnsafeCheckpointError` (an ``UnpicklingError``) naming the file
    when it holds anything else. ``kwargs`` go to ``torch.load`` (e.g.
    ``mmap=True``)."""
    try:
        with torch.serialization.safe_globals(_stand_ins()):
            obj = torch.load(
                filename, map_location=map_location, weights_only=True, **kwargs
            )
        return to_runtime_checkpoint(obj)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f'{filename}: refused to load: {err}') from None


def _load_from_local(filename, map_location):
    """mmengine's local-file loader, reading through
    :func:`load_checkpoint_file`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_file(filename, map_location=map_location)


@contextlib.contextmanager
def mmengine_loads_through_plugin() -> Iterator[None]:
    """While inside, mmengine's loads of local checkpoint files (resume,
    ``load_from``, ``init_cfg=Pretrained``) go through
    :func:`load_checkpoint_file`; torch itself is left as it is."""
    from mmengine.runner.checkpoint import CheckpointLoader

    schemes = CheckpointLoader._schemes
    previous = schemes.get('')
    schemes[''] = _load_from_local
    try:
        yield
    finally:
        if previous is None:
            schemes.pop('', None)
        else:
            schemes[''] = previous


# ---------------------------------------------------------------- writing
def to_plain_checkpoint(obj: Any) -> Any:
    """What a checkpoint holds, with ``HistoryBuffer`` objects, numpy
    arrays and numpy scalars replaced by tensors and Python numbers, so
    that ``torch.load(weights_only=True)`` reads it anywhere."""
    from mmengine.logging import HistoryBuffer

    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {
            HISTORY_TAG: True,
            'log_history': _plain_array(log),
            'count_history': _plain_array(count),
            'max_length': int(obj.max_length),
        }
    if isinstance(obj, np.ndarray):
        return _plain_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return _map_items(obj, to_plain_checkpoint)


def _plain_array(array: np.ndarray):
    if array.dtype.kind in _NUMERIC_KINDS:
        return torch.from_numpy(np.ascontiguousarray(array))
    return to_plain_checkpoint(array.tolist())


# ------------------------------------------------------- does it fit
def weight_mismatches(model, checkpoint) -> dict[str, list[str]]:
    """Keys of ``model`` a checkpoint leaves unfilled (``missing``), fills
    with another shape (``size mismatch``) or has in excess
    (``unexpected``), after mmengine's own ``module.`` prefix removal."""
    state = (
        checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    )
    state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
    model = getattr(model, 'module', model)  # DDP or TTA wrapper
    own = model.state_dict()
    return {
        'missing': [k for k in own if k not in state],
        'size mismatch': [
            f'{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}'
            for k, v in own.items()
            if k in state
            and hasattr(state[k], 'shape')
            and tuple(state[k].shape) != tuple(v.shape)
        ],
        'unexpected': [k for k in state if k not in own],
    }


def describe_mismatches(found: dict[str, list[str]], limit: int = 20) -> str:
    lines = []
    for kind, keys in found.items():
        if keys:
            lines.append(f'{len(keys)} {kind}:')
            lines += [f'  {k}' for k in keys[:limit]]
            if len(keys) > limit:
                lines.append(f'  ... and {len(keys) - limit} more')
    return '\n'.join(lines)
