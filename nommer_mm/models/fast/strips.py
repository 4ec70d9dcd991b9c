"""Window attention's fast paths: large maps a strip of window rows at a
time without autograd, and padded maps with only their border windows
masked."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .switch import fast_paths_enabled

# Input bytes per strip of window rows in inference. Measured on stage 0 of
# NomMer-T at 800x1333, batch 2: small strips are several times faster than
# the whole map, whose temporaries glibc maps afresh, page by page.
STRIP_BYTES = 4 << 20


def window_attention_in_strips(
    forward: Callable, x: torch.Tensor, window: int, *args
) -> torch.Tensor | None:
    """``forward(x, *args)`` of a window attention, run a strip of window
    rows at a time when autograd is off and ``x`` is a large CPU map; None
    otherwise.

    Windows start at multiples of ``window`` from the top-left, so none
    straddles two strips and the result is the same; the temporaries (q/k/v
    alone is 3x the input) stay small enough for glibc's allocator to reuse
    instead of mapping fresh pages for each, and in cache. CPU only: a GPU's
    caching allocator reuses its blocks anyway, and there the strips would
    only launch every kernel of the layer once per strip and add a copy of
    the map."""
    if (
        not fast_paths_enabled()
        or torch.is_grad_enabled()
        or x.device.type != 'cpu'
        or x.numel() * x.element_size() <= 2 * STRIP_BYTES
    ):
        return None
    B, H, W, C = x.shape
    rows = max(1, STRIP_BYTES // (B * window * W * C * x.element_size())) * window
    out = None
    for top in range(0, H, rows):
        part = forward(x[:, top : top + rows], *args)
        if out is None:
            out = part.new_empty(B, H, W, part.shape[-1])
        out[:, top : top + rows] = part
    return out


def attention_with_border_masks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    batch: int,
    border_windows: Callable[[], tuple],
) -> torch.Tensor | None:
    """Attention of (B*nW, h, n, d) windows (``batch`` images) of which
    ``border_windows()`` gives those that hold padding, as (nb,) indices
    within one image and the (nb, 1, 1, n) mask of their keys. All windows
    first run with the bias alone, which is exact for the others; the border
    windows then run again, masked. One (B*nW, h, n, n) mask over every
    window (53 MiB per stage-0 block of NomMer-T at 800x1333, batch 2) is
    never built. None when the fast paths are off, and in a trace (which
    ones are border windows depends on the input size)."""
    if not fast_paths_enabled() or torch.jit.is_tracing():
        return None
    border, border_mask = border_windows()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    num_windows = q.shape[0] // batch
    index = (
        torch.arange(batch, device=q.device)[:, None] * num_windows + border
    ).flatten()
    mask = bias + border_mask.repeat(batch, 1, 1, 1)  # (B*nb, h, n, n)
    redone = F.scaled_dot_product_attention(
        q[index], k[index], v[index], attn_mask=mask
    )
    if torch.is_grad_enabled():  # SDPA's backward may keep ``out``
        return out.index_copy(0, index, redone)
    return out.index_copy_(0, index, redone)
