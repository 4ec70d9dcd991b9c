"""Size arithmetic that a trace records correctly for every input size.

A trace (ONNX export, the FLOP counter) records tensor operations and
evaluates Python conditions once. A layer that pads only when the traced
size needs it would record a graph that is wrong at other sizes; these
helpers make the traced graph take the general path, which gives the same
result at every size (padding by 0 is the identity).
"""

from __future__ import annotations

from typing import Sequence

import torch


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) of a size ``a >= 0`` and ``b > 0``. Written with
    non-negative operands: a trace for ONNX records ``-(-a // b)`` as
    ONNX's truncating division (3 windows of 7 for 24 rows, not 4)."""
    return (a + b - 1) // b


def needs_padding(*amounts: int) -> bool:
    """Whether to pad (and crop afterwards) by ``amounts``: when any is
    non-zero, and always in a trace."""
    return torch.jit.is_tracing() or any(amounts)


def same_size(size: Sequence[int], wanted: Sequence[int]) -> bool:
    """Whether ``size`` equals ``wanted``, so that a resize can be skipped;
    never in a trace."""
    return not torch.jit.is_tracing() and tuple(size) == tuple(wanted)
