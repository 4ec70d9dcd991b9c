"""Parameter and FLOP counting.

``count_flops`` follows fvcore's convention (one multiply-add = one FLOP,
counted on the traced graph, so the attention matrix products are included)
through mmengine's port of fvcore's counter, with one handle added: fused
``scaled_dot_product_attention``, which it does not know, is counted as the
two matrix products it replaces (Q K^T and A V), as fvcore counts them when
written out.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn


def _shape(value) -> list[int]:
    return list(value.type().sizes())


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of softmax(Q K^T) V for (..., L, E) queries and
    (..., S, E) keys, (..., S, Ev) values."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    L, E = q[-2], q[-1]
    S, Ev = k[-2], v[-1]
    return batch * L * S * (E + Ev)


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters()
               if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, inputs: torch.Tensor | Sequence,
                by_module: bool = False) -> int | dict:
    """FLOPs (multiply-adds) of ``model(*inputs)`` in fvcore's convention.

    Returns the total, or with ``by_module`` the per-module counter.
    Raises if any op that does arithmetic was left uncounted... except the
    elementwise ones fvcore also skips (add, mul, softmax, gelu ...).
    """
    from mmengine.analysis import FlopAnalyzer
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    was_training = model.training
    model.eval()
    try:
        analyzer = FlopAnalyzer(model, tuple(inputs))
        analyzer.set_op_handle('aten::scaled_dot_product_attention',
                               sdpa_flop_jit)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        with torch.no_grad():
            result = analyzer.by_module() if by_module else analyzer.total()
    finally:
        model.train(was_training)
    return result
