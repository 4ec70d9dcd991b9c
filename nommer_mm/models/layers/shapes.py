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
import torch.nn.functional as F


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) of a size ``a >= 0`` and ``b > 0``. Written with
    non-negative operands: a trace for ONNX records ``-(-a // b)`` as
    ONNX's truncating division (3 windows of 7 for 24 rows, not 4)."""
    return (a + b - 1) // b


def needs_padding(*amounts: int) -> bool:
    """Whether to pad (and crop afterwards) by ``amounts``: when any is
    non-zero, and always in a trace."""
    return torch.jit.is_tracing() or sum(amounts) > 0  # amounts are >= 0


def same_size(size: Sequence[int], wanted: Sequence[int]) -> bool:
    """Whether ``size`` equals ``wanted``, so that a resize can be skipped;
    never in a trace."""
    return not torch.jit.is_tracing() and tuple(size) == tuple(wanted)


def pad_to_multiple(
    x: torch.Tensor, multiple: int, channels_last: bool = True
) -> tuple[torch.Tensor, bool]:
    """``x`` zero-padded at the bottom and right so that its height and width
    are multiples of ``multiple`` (whole windows, DCT blocks, patches), and
    whether it was padded (always in a trace, see :func:`needs_padding`).
    ``x`` is (B, H, W, C), or (B, C, H, W) without ``channels_last``; the
    caller crops what it computed back with :func:`crop_padding`."""
    H, W = x.shape[1:3] if channels_last else x.shape[-2:]
    pad_h, pad_w = (-H) % multiple, (-W) % multiple
    padded = needs_padding(pad_h, pad_w)
    if padded:
        pads = (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h)
        x = F.pad(x, pads)
    return x, padded


def crop_padding(x: torch.Tensor, H: int, W: int, padded: bool) -> torch.Tensor:
    """The (B, H, W, C) top-left of a channels-last map that
    :func:`pad_to_multiple` padded, contiguous; ``x`` itself if not padded."""
    return x[:, :H, :W].contiguous() if padded else x
