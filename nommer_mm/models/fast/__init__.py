"""Execution tricks, apart from the models and behind one switch
(:func:`fast_paths`, ``NOMMER_FAST=0``): oneDNN matrix products on CPU,
sums written into fresh buffers, autograd functions that keep less for
backward. Each is used only where it computes what the plain path does.
Window attention's strip runner and the fused training nominator live with
their layers and consult the same switch."""

from .autograd import GeluLinear, MaxPool2x2, needs_grad
from .inplace import add_into
from .onednn import (
    Linear,
    attention,
    attention_applies,
    linear,
    onednn_applies,
    use_onednn_linear,
)
from .switch import fast_paths, fast_paths_enabled

__all__ = [
    'GeluLinear',
    'MaxPool2x2',
    'needs_grad',
    'add_into',
    'Linear',
    'attention',
    'attention_applies',
    'linear',
    'onednn_applies',
    'use_onednn_linear',
    'fast_paths',
    'fast_paths_enabled',
]
