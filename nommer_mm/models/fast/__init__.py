"""Execution tricks, apart from the models and behind one switch
(:func:`fast_paths`, ``NOMMER_FAST=0``): oneDNN matrix products on CPU,
sums and selections written into buffers the caller owns, autograd
functions that keep less for backward, window attention in strips.

The models reach them through the named hooks below. Each hook returns the
result of its fast path, or None where the path does not apply (the switch
is off, autograd is or is not recording, ...); the model then runs its plain
PyTorch, which computes the same values. The tests hold both equal.
"""

from .autograd import GeluLinear, MaxPool2x2, max_pool_2x2, mlp_forward, needs_grad
from .inplace import add_into, residual
from .nominate import nominate_and_combine, select_into, sum_candidates
from .onednn import (
    Linear,
    attention,
    attention_applies,
    linear,
    onednn_applies,
    use_onednn_linear,
)
from .strips import attention_with_border_masks, window_attention_in_strips
from .switch import fast_paths, fast_paths_enabled

__all__ = [
    # hooks the models call
    'mlp_forward',
    'max_pool_2x2',
    'residual',
    'sum_candidates',
    'select_into',
    'nominate_and_combine',
    'window_attention_in_strips',
    'attention_with_border_masks',
    'attention_applies',
    'attention',
    'Linear',
    # the switch
    'fast_paths',
    'fast_paths_enabled',
    # building blocks
    'GeluLinear',
    'MaxPool2x2',
    'needs_grad',
    'add_into',
    'linear',
    'onednn_applies',
    'use_onednn_linear',
]
