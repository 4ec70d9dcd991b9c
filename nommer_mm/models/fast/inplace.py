"""Writing a sum into a tensor the caller just created, instead of a new
buffer: on CPU a fresh full-size buffer costs more than the add itself."""

from __future__ import annotations

import torch

from .switch import fast_paths_enabled


def add_into(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, computed in ``fresh``'s memory when that gives the
    same result: same shape (no broadcast growth) and ``fresh``'s dtype is
    already the promoted one (so autocast's fp32 promotion is kept). The
    caller owns ``fresh`` and makes sure autograd does not need it."""
    if (
        not fast_paths_enabled()
        or fresh.shape != other.shape
        or torch.promote_types(fresh.dtype, other.dtype) != fresh.dtype
    ):
        return fresh + other
    return fresh.add_(other)


def residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor | None:
    """``x + branch`` of a residual block, written into ``branch`` (the
    block's own freshly computed output) when autograd is off, where its
    producer may not have saved it; ``x`` is untouched. None otherwise."""
    if not fast_paths_enabled() or torch.is_grad_enabled():
        return None
    return add_into(branch, x)
