"""Hooks the plugin's configs add to the runners."""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from ..datasets.loading import check_image_loading


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the RNG states in checkpoints and restore them on resume.

    mmengine re-seeds a resumed run from the config seed, so the Gumbel
    noise of the nominator, drop-path masks and random augmentations in the
    main process would differ from an uninterrupted run. With this hook a
    run killed and resumed (``--resume``) follows the same random stream.

    The data loader's workers draw their seeds from the main process's
    stream when its iterator is made, and their augmentations advance with
    every sample they load. An iteration-based loop resumed by replaying
    the iterations already trained (upstream mmengine) makes its iterator
    when the loop is built, before the restore, as the uninterrupted run
    did; restoring at load time is exact there. OneDL's mmengine makes the
    iterator lazily and skips the sampler ahead without loading data, so
    the workers would be seeded from the restored state and start their
    augmentations afresh. There the restore waits: the loop's skip makes
    the iterator at the point the uninterrupted run did, loads the skipped
    batches (as upstream does), then restores the states.
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = dict(
            python=random.getstate(), numpy=_numpy_state(), torch=torch.get_rng_state()
        )
        if torch.cuda.is_available():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint['rng_state'] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('rng_state')
        if not state or not runner._resume:
            return  # a weight-only load (load_from) starts fresh streams
        iterator = _lazy_train_iterator(runner, checkpoint)
        if iterator is None:
            _restore(state)
            return
        # an instance attribute: this iterator's next skip only
        iterator.skip_iter = functools.partial(_replay_then_restore, iterator, state)


def _restore(state: dict) -> None:
    random.setstate(_as_python_state(state['python']))
    name, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state(
        (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
    )
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _lazy_train_iterator(runner, checkpoint: dict):
    """The train loop's data iterator when it is made lazily and the loop
    will skip it ahead on this resume (OneDL's mmengine), else None."""
    loop = getattr(runner, '_train_loop', None)
    iterator = getattr(loop, 'dataloader_iterator', None)
    resumed_iter = (checkpoint.get('meta') or {}).get('iter', 0)
    if (
        iterator is None
        or not callable(getattr(iterator, 'skip_iter', None))
        or getattr(iterator, '_iterator', None) is not None
        or getattr(loop, 'fast_forward_on_resume', False)
        or not resumed_iter
    ):
        return None
    return iterator


def _replay_then_restore(iterator, state: dict, num_iters: int) -> None:
    """Load and drop the ``num_iters`` batches already trained, as the
    uninterrupted run's iterator (made here, at the same point of the
    stream) produced them, then restore the RNG states."""
    del iterator.skip_iter  # the class's own again
    for _ in range(num_iters):
        next(iterator)
    _restore(state)


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain Python types and a tensor: loadable with weights_only=True
    return (
        name,
        torch.from_numpy(keys.astype(np.int64)),
        int(pos),
        int(has_gauss),
        float(gauss),
    )


def _as_python_state(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Stop training at the first iteration whose loss is NaN or infinite,
    naming it; the default is to go on training a broken model (a NaN or
    inf in the input passes through the backbones as it does in torch)."""

    priority = 'VERY_HIGH'  # before a checkpoint of the broken weights

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs: dict | None = None
    ) -> None:
        loss = (outputs or {}).get('loss')
        if loss is None:
            return
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f'loss is {value} at iteration {runner.iter + 1} (epoch '
                f'{runner.epoch + 1}, batch {batch_idx}); stopped. Check the '
                'inputs for NaN/inf, lower the learning rate or enable '
                'gradient clipping, then resume from the last checkpoint.'
            )


@HOOKS.register_module()
class CheckedImageLoadingHook(Hook):
    """Load the images of the runner's validation and test datasets with
    :class:`~nommer_mm.datasets.CheckedLoadImageFromFile`: a missing, empty,
    cut-short or undecodable image stops evaluation naming its path and
    dataset index instead of failing inside OpenCV or being scored as grey
    pixels.

    The configs' evaluation pipelines keep mmcv's ``LoadImageFromFile``
    (the codebases' inferencers look it up by that name); both loops build
    their data loaders before ``before_run`` and iterate them after it.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        for name in ('_val_loop', '_test_loop'):
            loop = getattr(runner, name, None)
            if isinstance(loop, BaseLoop):
                check_image_loading(loop.dataloader.dataset)
