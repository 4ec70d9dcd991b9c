"""A drop-in ``CheckpointHook`` that never leaves a run without a good
checkpoint, and writes checkpoints any ``torch.load`` can read safely."""

from __future__ import annotations

import contextlib
import os
import os.path as osp
from typing import Iterator

from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..checkpoint_fit import check_load_from_fits
from ..checkpoint_safety import to_plain_checkpoint, to_runtime_checkpoint

PART_SUFFIX = '.part'


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments), changed in three ways:

    * a checkpoint is written to ``<name>.part``, flushed to disk and then
      renamed, so a run killed during the write (or a full disk) leaves the
      earlier checkpoints intact and no torn file under a checkpoint's name;
    * with ``max_keep_ckpts`` (and for the previous best checkpoint) old
      checkpoints are removed only after the new one is complete; mmengine
      removes first;
    * the message hub's ``HistoryBuffer`` objects and numpy values are
      written as tensors and plain numbers
      (:func:`~nommer_mm.checkpoint_safety.to_plain_checkpoint`), so the
      file loads with ``torch.load(weights_only=True)`` and no allow-list,
      and are turned back on load.
    """

    _saving_depth = 0

    def __init__(self, *args, allow_partial_load_from: bool = False, **kwargs):
        """``allow_partial_load_from=True``: a ``load_from`` checkpoint that
        leaves backbone weights out or holds them in another shape loads
        what fits and warns, for deliberate partial loads (e.g.
        ``--cfg-options default_hooks.checkpoint.allow_partial_load_from=True``).
        By default such a checkpoint stops the run before its first
        iteration, listing the weights and the likely fix."""
        super().__init__(*args, **kwargs)
        self.allow_partial_load_from = allow_partial_load_from

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = to_plain_checkpoint(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = to_runtime_checkpoint(checkpoint['message_hub'])
        if not runner._resume:  # load_from: the weights must fit
            check_load_from_fits(
                runner.model,
                checkpoint,
                runner._load_from,
                self.allow_partial_load_from,
            )

    def _save_checkpoint_with_step(self, runner, step, meta):
        with self._complete_before_removal(runner):
            super()._save_checkpoint_with_step(runner, step, meta)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        with self._complete_before_removal(runner):
            super()._save_best_checkpoint(runner, metrics)

    @contextlib.contextmanager
    def _complete_before_removal(self, runner) -> Iterator[None]:
        """Within: checkpoint writes are atomic and removals are held back;
        they run once everything inside has been written."""
        if self._saving_depth or not isinstance(self.file_backend, LocalBackend):
            yield  # nested call, or a remote backend we cannot rename on
            return
        backend, removals = self.file_backend, []
        self.file_backend = _DeferredRemovals(backend, removals)
        runner.save_checkpoint = _atomic(runner.save_checkpoint)
        self._saving_depth = 1
        try:
            yield
        finally:
            self._saving_depth = 0
            del runner.save_checkpoint  # back to the class's method
            self.file_backend = backend
        for remove, path in removals:  # only reached when all was written
            remove(path)


class _DeferredRemovals:
    """A file backend whose ``remove`` / ``rmtree`` are recorded, not run."""

    def __init__(self, backend, removals: list):
        self._backend = backend
        self._removals = removals

    def remove(self, path) -> None:
        self._removals.append((self._backend.remove, path))

    def rmtree(self, path) -> None:
        self._removals.append((self._backend.rmtree, path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _atomic(save_checkpoint):
    """``runner.save_checkpoint`` writing ``<name>.part``, then fsync and
    rename over ``<name>``."""

    def save(out_dir, filename, *args, **kwargs):
        save_checkpoint(out_dir, filename + PART_SUFFIX, *args, **kwargs)
        final = osp.join(out_dir, filename)
        part = final + PART_SUFFIX
        if not osp.exists(part):  # not written by this rank
            return
        with open(part, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(part, final)
        dir_fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    return save
