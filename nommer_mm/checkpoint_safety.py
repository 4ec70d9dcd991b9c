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
* Before any unpickling, :func:`check_checkpoint_file` looks at the file
  itself: a missing path, an empty file, a file cut short (with the size a
  complete one would have) or one that is no PyTorch checkpoint at all is
  a :class:`CheckpointFileError` whose message is one line naming the
  file. It reads headers and pickle opcodes only and builds nothing.

Nothing here is registered with torch at import.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import functools
import math
import os
import os.path as osp
import pickle
import pickletools
import re
import struct
import threading
import warnings
import zipfile
from collections import OrderedDict
from typing import IO, Any, Callable, Iterator

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


# torch >= 2.5: its weights-only unpickler, extended for one load at a time
_TORCH_TAKES_SAFE_GLOBALS = hasattr(torch.serialization, 'safe_globals')


class _RestrictedUnpickler(pickle._Unpickler):
    """For torch < 2.5, whose weights-only unpickler takes no extra names.
    Python's own unpickler (its opcode table, so that each risky opcode is
    ours to restrict), limited as torch's weights-only one is:

    * globals: torch's weights-only set, torch's dtypes and the stand-ins
      above, by exact name;
    * BUILD: only on tensors, ordered dicts and the stand-ins' records,
      never on a class or a function (whose attributes torch reads later);
    * persistent ids: storages only; copyreg extension codes: none."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 (torch.save's) writes Python 2 names: __builtin__ ...
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        allowed = _restricted_globals()
        key = f'{module}.{name}' if type(module) is str and type(name) is str else None
        if key not in allowed:
            raise UnsafeCheckpointError(f'unsupported global {module}.{name}')
        return allowed[key]

    def _build(self) -> None:
        target = self.stack[-2] if len(self.stack) > 1 else None  # under its state
        if isinstance(target, type) or not isinstance(target, _BUILDABLE):
            raise UnsafeCheckpointError(
                f'BUILD of {type(target).__name__} is not allowed in a checkpoint'
            )
        pickle._Unpickler.load_build(self)

    def _persistent_id(self) -> None:
        pid = self.stack[-1]
        kind = pid[0] if type(pid) is tuple and pid else None
        if (kind.decode('ascii', 'replace') if type(kind) is bytes else kind) != (
            'storage'
        ):
            raise UnsafeCheckpointError(
                'a persistent id other than a storage is not allowed in a checkpoint'
            )
        pickle._Unpickler.load_binpersid(self)

    def _extension(self) -> None:
        raise UnsafeCheckpointError(
            'copyreg extension codes and text persistent ids are not allowed '
            'in a checkpoint'
        )

    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.BINPERSID[0]] = _persistent_id
    for _code in (pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.PERSID):
        dispatch[_code[0]] = _extension
    del _code


# what BUILD may set the state of
_BUILDABLE = (torch.Tensor, OrderedDict, _Record, _DtypeRecord)


@functools.lru_cache(maxsize=1)
def _restricted_globals() -> dict[str, Any]:
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = dict(_get_allowed_globals())
    allowed.update(
        (str(v), v) for v in vars(torch).values() if isinstance(v, torch.dtype)
    )
    allowed.update((path, fn) for fn, path in _stand_ins())
    # pickle protocol 2 (torch.save's) writes bytes as
    # _codecs.encode(text, 'latin1'): that call, and no other codec
    allowed['_codecs.encode'] = _latin1_bytes
    return allowed


def _latin1_bytes(text: str, encoding: str) -> bytes:
    if type(text) is not str or encoding not in ('latin1', 'latin-1'):
        raise UnsafeCheckpointError(
            f'_codecs.encode(..., {encoding!r}) is not allowed in a checkpoint; '
            "only pickle's encoding of bytes (latin1) is"
        )
    return text.encode('latin1')


class _RestrictedPickle:
    """The ``pickle_module`` torch.load is given on torch < 2.5."""

    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file: IO[bytes], **kwargs) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


# ------------------------------------------------------ is it a checkpoint
class CheckpointFileError(ValueError):
    """A weights file that cannot be read as a checkpoint: empty, cut
    short, not a PyTorch checkpoint, or damaged inside. The message is one
    line naming the file and what is wrong with it."""


class MissingCheckpointError(CheckpointFileError, FileNotFoundError):
    """A checkpoint path that names no file."""


_ZIP_LOCAL = b'PK\x03\x04'
_ZIP_END = b'PK\x05\x06'
_ZIP64_LOCATOR = b'PK\x06\x07'
# torch.save's zip layout: each record's data starts on a 64-byte boundary
# (padding in the local header's extra field, which is at least its 4-byte
# header), is followed by a 16-byte data descriptor, and the small records
# below surround the tensor data.
_ALIGNMENT = 64
_DESCRIPTOR = 16
_ZIP_HEADER, _ZIP_CENTRAL, _ZIP_EOCD = 30, 46, 22
_ZIP64_END = 56 + 20  # the zip64 end record and its locator, always written
_HEAD_RECORDS = (('.format_version', 1), ('.storage_alignment', 2), ('byteorder', 6))
_TAIL_RECORDS = (('version', 2), ('.data/serialization_id', 40))
# The first pickle of a legacy (non-zip) torch.save file is this number.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, 'little')
_REDOWNLOAD = 'an interrupted download or save; fetch or write it again'


def check_checkpoint_file(path: str | os.PathLike) -> str:
    """What kind of checkpoint ``path`` is, ``'zip'`` (torch's default) or
    ``'legacy'`` (``_use_new_zipfile_serialization=False``), judged from its
    headers alone. Raises :class:`MissingCheckpointError` or
    :class:`CheckpointFileError` (one line: the file and what is wrong)
    when it is missing, empty, cut short or no PyTorch checkpoint."""
    name = os.fspath(path)
    if not osp.exists(name):
        where = '' if osp.isabs(name) else f' (relative to {os.getcwd()})'
        raise MissingCheckpointError(f'{name} does not exist{where}')
    if osp.isdir(name):
        raise CheckpointFileError(f'{name} is a directory, not a checkpoint file')
    size = osp.getsize(name)
    if size == 0:
        raise CheckpointFileError(f'{name} is empty (0 bytes): {_REDOWNLOAD}')
    with open(name, 'rb') as f:
        head = f.read(64)
        if head.startswith(_ZIP_LOCAL):
            if not _zip_end_fits(f, size):
                raise CheckpointFileError(
                    _cut_short(name, size, _zip_full_size(f, size))
                )
            return 'zip'
        if head.startswith(b'\x80') and _LEGACY_MAGIC in head[:32]:
            full = _legacy_full_size(f)
            if full is None or full[0] > size:
                raise CheckpointFileError(_cut_short(name, size, full))
            return 'legacy'
        if size < 16 and (_ZIP_LOCAL.startswith(head) or head.startswith(b'\x80')):
            raise CheckpointFileError(_cut_short(name, size, None))
    raise CheckpointFileError(
        f'{name} is not a PyTorch checkpoint: {_looks_like(head, size)}'
    )


def _cut_short(name: str, size: int, full: tuple[int, bool] | None) -> str:
    if full is None:
        return (
            f'{name} is cut short: {size} bytes, ending inside its list of '
            f'tensors ({_REDOWNLOAD})'
        )
    expected, exact = full
    if expected <= size:  # the layout is not torch's: say what is certain
        return f'{name} is cut short: its end records are missing ({_REDOWNLOAD})'
    of = f'{expected}' if exact else f'at least {expected}'
    return f'{name} is cut short: {size} of {of} bytes ({_REDOWNLOAD})'


def _looks_like(head: bytes, size: int) -> str:
    """What a file that is no checkpoint seems to be, from its first bytes."""
    text = head.lstrip().lower()
    if text.startswith((b'<!doctype', b'<html', b'<?xml', b'<')):
        return 'it is an HTML/XML page (a download that got an error page?)'
    if (
        len(head) >= 9
        and head[8:9] == b'{'
        and int.from_bytes(head[:8], 'little') < size
    ):
        return 'it is a safetensors file (torch.load does not read those)'
    if head.startswith(b'\x1f\x8b'):
        return 'it is gzip-compressed (decompress it first)'
    if head.startswith(b'{'):
        return 'it is JSON text'
    return (
        f'it starts with {head[:16]!r}, which is neither a torch zip '
        'nor a legacy torch file'
    )


def _zip_end_fits(f: IO[bytes], size: int) -> bool:
    """A complete zip ends with its end-of-central-directory record, and the
    central directory that record points to lies within the file."""
    tail_len = min(size, _ZIP_EOCD + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_ZIP_END)
    if at < 0 or len(tail) - at < _ZIP_EOCD:
        return False
    cd_size, cd_offset, comment = struct.unpack('<IIH', tail[at + 12 : at + 22])
    if at + _ZIP_EOCD + comment != len(tail):
        return False
    end_at = size - tail_len + at
    if 0xFFFFFFFF in (cd_size, cd_offset):  # zip64: its locator precedes
        return tail[max(at - 20, 0) : at].startswith(_ZIP64_LOCATOR)
    return cd_offset + cd_size <= end_at


def _padded_header(cursor: int, name_len: int) -> int:
    """Bytes from a record's local header to its data, as torch pads it."""
    start = cursor + _ZIP_HEADER + name_len + 4
    return _ZIP_HEADER + name_len + 4 + (-start) % _ALIGNMENT


def _zip_full_size(f: IO[bytes], size: int) -> tuple[int, bool] | None:
    """(size, exact) of the complete torch zip this file begins, laid out as
    torch writes it from the records data.pkl lists; None when the file
    ends inside data.pkl. Not exact when the records present in the file
    sit elsewhere than that layout says (another writer) or the archive
    would need zip64 fields."""
    f.seek(0)
    header = f.read(_ZIP_HEADER)
    if len(header) < _ZIP_HEADER:
        return None
    name_len, extra_len = struct.unpack('<HH', header[26:30])
    first = f.read(name_len).decode('utf-8', 'replace')
    if not first.endswith('data.pkl'):
        return None
    prefix = first[: -len('data.pkl')]
    f.seek(_ZIP_HEADER + name_len + extra_len)
    parsed = _pickle_storages(f)
    if parsed is None:
        return None
    pickle_len, storages = parsed
    small, seen = _head_records(f, size, prefix, pickle_len)
    head = [('data.pkl', pickle_len), *small]
    known = seen and all(known for _, known in storages.values())
    # torch writes the tensor records in the order the pickle names them;
    # torch 2.1 in the order of their keys as strings
    for keys in (list(storages), sorted(storages)):
        data = [(f'data/{key}', storages[key][0]) for key in keys]
        records = [*head, *data, *_TAIL_RECORDS]
        total, laid_out = _laid_out_size(f, size, prefix, records)
        if laid_out:
            break
    return total, known and laid_out and total < 0xFFFFFFFF


def _laid_out_size(
    f: IO[bytes], size: int, prefix: str, records: list[tuple[str, int]]
) -> tuple[int, bool]:
    """The size of a torch zip of ``records`` (name, bytes), and whether
    each local header the file holds names the record that layout puts
    there."""
    fits = True
    cursor = central = 0
    for name, nbytes in records:
        full_name = (prefix + name).encode()
        fits &= _local_header_names(f, size, cursor, full_name) is not False
        cursor += _padded_header(cursor, len(full_name)) + nbytes + _DESCRIPTOR
        central += _ZIP_CENTRAL + len(full_name)
    return cursor + central + _ZIP64_END + _ZIP_EOCD, fits


def _local_header_names(f: IO[bytes], size: int, at: int, name: bytes) -> bool | None:
    """Whether the zip local header at offset ``at`` is the one of record
    ``name``; None when the file ends before it."""
    if at + _ZIP_HEADER + len(name) > size:
        return None
    f.seek(at)
    local = f.read(_ZIP_HEADER + len(name))
    return local.startswith(_ZIP_LOCAL) and local[_ZIP_HEADER:] == name


def _head_records(
    f: IO[bytes], size: int, prefix: str, pickle_len: int
) -> tuple[list[tuple[str, int]], bool]:
    """The small records between data.pkl and the tensor data that this
    file has (torch 2.1, for one, writes only ``byteorder`` of them), and
    whether the file shows them all. One that the file ends before is taken
    to be there, so the size is then a lower bound."""
    found, seen = [], True
    cursor = _padded_header(0, len(prefix) + 8) + pickle_len + _DESCRIPTOR
    for name, nbytes in _HEAD_RECORDS:
        full_name = (prefix + name).encode()
        here = _local_header_names(f, size, cursor, full_name)
        if here is False:
            continue
        seen &= here is True
        found.append((name, nbytes))
        cursor += _padded_header(cursor, len(full_name)) + nbytes + _DESCRIPTOR
    return found, seen


def _legacy_full_size(f: IO[bytes]) -> tuple[int, bool] | None:
    """(size, exact) of the complete legacy torch file this one begins:
    five pickles (magic number, protocol, system info, the object, the
    storage keys), then per storage its element count (8 bytes) and data.
    None when the file ends inside the pickles."""
    f.seek(0)
    try:
        for _ in range(3):
            for _ in pickletools.genops(f):
                pass
        parsed = _pickle_storages(f, legacy=True)
        if parsed is None:
            return None
        keys = [arg for op, arg, _ in pickletools.genops(f) if isinstance(arg, str)]
    except ValueError:  # ends inside a pickle
        return None
    _, storages = parsed
    end = f.tell()
    known = all(k in storages and storages[k][1] for k in keys)
    return end + sum(8 + storages.get(k, (0, False))[0] for k in keys), known


class _Unknown:
    """A stack value the storage scan does not follow."""


_UNKNOWN = _Unknown()
_PUSHES_ARG = frozenset(
    'UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 STRING BINSTRING '
    'SHORT_BINSTRING INT BININT BININT1 BININT2 LONG LONG1 LONG4'.split()
)


def _pickle_storages(
    f: IO[bytes], legacy: bool = False
) -> tuple[int, dict[str, tuple[int, bool]]] | None:
    """Scan the pickle at ``f``'s position without unpickling it: its length
    and, in order of appearance, ``{storage key: (bytes, size known)}`` from
    torch's persistent ids ``('storage', <torch.XStorage>, key, location,
    numel, ...)``. Only strings, numbers, globals' names and tuples are
    followed on a model of the stack; nothing is built or called. None
    when the pickle ends before its STOP."""
    start = f.tell()
    stack: list[list] = [[]]
    memo: dict = {}
    storages: dict[str, tuple[int, bool]] = {}
    try:
        for opcode, arg, _ in pickletools.genops(f):
            _step(opcode, arg, stack, memo, storages)
    except ValueError:
        return None
    return f.tell() - start, storages


def _step(opcode, arg, stack: list[list], memo: dict, storages: dict) -> None:
    """One opcode of :func:`_pickle_storages` on the model stack."""
    name, top = opcode.name, stack[-1]
    if name == 'MARK':
        stack.append([])
    elif name in _PUSHES_ARG:
        top.append(arg)
    elif name == 'GLOBAL':
        top.append(('global', *str(arg).split(' ', 1)))
    elif name == 'STACK_GLOBAL':
        module, attr = (top.pop(), top.pop())[::-1] if len(top) > 1 else ('', '')
        top.append(('global', module, attr))
    elif name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
        memo[arg] = top[-1] if top else _UNKNOWN
    elif name == 'MEMOIZE':
        memo[len(memo)] = top[-1] if top else _UNKNOWN
    elif name in ('GET', 'BINGET', 'LONG_BINGET'):
        top.append(memo.get(arg, _UNKNOWN))
    elif name == 'TUPLE' and len(stack) > 1:
        stack.pop()
        stack[-1].append(tuple(top))
    elif name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
        n = int(name[-1])
        items = tuple(top[-n:]) if len(top) >= n else ()
        del top[-n:]
        top.append(items)
    elif name == 'BINPERSID':
        _note_storage(top.pop() if top else _UNKNOWN, storages)
        top.append(_UNKNOWN)
    else:  # any other opcode: its stack effect, values unknown
        before = opcode.stack_before
        if pickletools.markobject in before and len(stack) > 1:
            stack.pop()
            before = before[: before.index(pickletools.markobject)]
        top = stack[-1]
        del top[len(top) - min(len(before), len(top)) :]
        top.extend(_UNKNOWN for _ in opcode.stack_after)


def _note_storage(pid, storages: dict) -> None:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'):
        return
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(key, str) or key in storages:
        return
    itemsize = _storage_itemsize(storage_type)
    if type(numel) is int and itemsize:
        storages[key] = (numel * itemsize, True)
    else:
        storages[key] = (0, False)


def _storage_itemsize(storage_type) -> int | None:
    """Bytes per element of a pickled ``torch.<X>Storage`` name; looked up
    on torch by name only (``torch.<X>Storage.dtype``)."""
    if not (
        isinstance(storage_type, tuple)
        and storage_type[:2] == ('global', 'torch')
        and len(storage_type) == 3
        and str(storage_type[2]).endswith('Storage')
    ):
        return None
    if storage_type[2] == 'UntypedStorage':
        return 1
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TypedStorage's deprecation notice
        dtype = getattr(getattr(torch, storage_type[2], None), 'dtype', None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else None


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
    checkpoints (see the module docstring).

    A path is first checked by :func:`check_checkpoint_file` (missing,
    empty, cut short, not a checkpoint: :class:`CheckpointFileError`, one
    line naming the file). Raises :class:`UnsafeCheckpointError` (an
    ``UnpicklingError``) naming the file when it holds anything but
    weights and training state. ``kwargs`` go to ``torch.load``; ``mmap``
    is dropped for legacy (non-zip) files, which torch cannot map."""
    if isinstance(filename, (str, os.PathLike)):
        if check_checkpoint_file(filename) == 'legacy':
            kwargs.pop('mmap', None)
    if _is_torchscript(filename):
        # torch < 2.6 hands these to torch.jit.load, whatever weights_only
        # says, and a scripted __setstate__ runs
        raise UnsafeCheckpointError(
            f'{filename}: refused to load: a TorchScript archive, which runs '
            'code when loaded, not a checkpoint'
        )
    try:
        # torch.serialization.load is torch.load, under the name that
        # _guarded leaves alone
        if _TORCH_TAKES_SAFE_GLOBALS:
            with torch.serialization.safe_globals(_stand_ins()):
                obj = torch.serialization.load(
                    filename, map_location=map_location, weights_only=True, **kwargs
                )
        else:
            obj = torch.serialization.load(
                filename,
                map_location=map_location,
                weights_only=False,
                pickle_module=_RestrictedPickle,
                **kwargs,
            )
        return to_runtime_checkpoint(obj)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f'{filename}: refused to load: {err}') from None
    except (RuntimeError, EOFError) as err:
        if isinstance(err, EOFError) or _is_read_failure(err):
            raise CheckpointFileError(
                f'{filename} is damaged: a record inside it does not read '
                f'back ({_REDOWNLOAD})'
            ) from None
        raise


def _is_torchscript(file) -> bool:
    """Whether ``file`` (a path or a seekable file) is a zip holding
    TorchScript's ``constants.pkl``."""
    try:
        if not isinstance(file, (str, os.PathLike)):
            at = file.tell()
        try:
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
        finally:
            if not isinstance(file, (str, os.PathLike)):
                file.seek(at)
    except (zipfile.BadZipFile, OSError, AttributeError, ValueError):
        return False  # not a zip: torch.load tells what it is
    return any(n == 'constants.pkl' or n.endswith('/constants.pkl') for n in names)


def _is_read_failure(err: RuntimeError) -> bool:
    """torch's zip reader failing on the bytes (not, e.g., a device error)."""
    text = str(err)
    return any(
        s in text
        for s in ('PytorchStreamReader', 'zip archive', 'invalid header', 'CRC')
    )


def _load_from_local(filename, map_location):
    """mmengine's local-file loader, reading through
    :func:`load_checkpoint_file`."""
    return load_checkpoint_file(osp.expanduser(filename), map_location=map_location)


def _load_without_retry(file, map_location=None, weights_only=None):
    """OneDL mmengine's ``_safe_torch_load`` (a path or a buffer), always
    through :func:`load_checkpoint_file`: no retry with
    ``weights_only=False``."""
    return load_checkpoint_file(file, map_location=map_location)


def _guarded(loader: Callable) -> Callable:
    """mmengine's loader of another scheme (``open-mmlab://``, ``http://``
    ...), whose ``torch.load`` reads through :func:`load_checkpoint_file`
    for the duration of that one call: on torch < 2.6 its default is to
    unpickle anything."""

    @functools.wraps(loader)  # mmengine logs the loader's name
    def load(filename, map_location=None, *args, **kwargs):
        with _GUARD:  # one guarded call at a time: each restores its own
            torch_load, torch.load = torch.load, _safe_torch_load
            try:
                return loader(filename, map_location, *args, **kwargs)
            finally:
                torch.load = torch_load

    return load


_GUARD = threading.RLock()


def _safe_torch_load(f, map_location=None, *_, **__):
    """``torch.load`` inside a guarded call (its other options dropped)."""
    return load_checkpoint_file(f, map_location=map_location)


@contextlib.contextmanager
def mmengine_loads_through_plugin() -> Iterator[None]:
    """While inside, mmengine's loads of local checkpoint files (resume,
    ``load_from``, ``init_cfg=Pretrained``) go through
    :func:`load_checkpoint_file`; torch itself is left as it is."""
    import mmengine.runner.checkpoint as mmengine_checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader

    previous = CheckpointLoader._schemes
    # a new table (mmengine replaces it on registering a scheme, too),
    # put back as it was on leaving
    CheckpointLoader._schemes = OrderedDict(
        (p, _load_from_local if p == '' else _guarded(fn)) for p, fn in previous.items()
    )
    # OneDL's mmengine loads the other schemes (open-mmlab://, s3://, ...)
    # through _safe_torch_load, which retries with weights_only=False
    retrying = getattr(mmengine_checkpoint, '_safe_torch_load', None)
    if retrying is not None:
        mmengine_checkpoint._safe_torch_load = _load_without_retry
    try:
        yield
    finally:
        if retrying is not None:
            mmengine_checkpoint._safe_torch_load = retrying
        CheckpointLoader._schemes = previous


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
class WeightsDoNotFitError(ValueError):
    """A checkpoint that would leave parts of the model at their initial
    weights; the message lists them and says the likely fix and the
    opt-out for a deliberate partial load."""


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
