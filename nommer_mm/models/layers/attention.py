"""Attention layers shared by the plugin's backbones.

Every attention runs through ``F.scaled_dot_product_attention``, so each
device picks its fused kernel (flash / memory-efficient on GPU, the fused CPU
kernel); the relative position bias of window attention and the padding of
partial windows enter as one additive mask.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model.weight_init import trunc_normal_

from .shapes import ceil_div, crop_padding, pad_to_multiple


class MultiheadSelfAttention(nn.Module):
    """Plain global multi-head self-attention over a token sequence.

    Args:
        embed_dims (int): Token channels ``C``.
        num_heads (int): Heads; ``C`` must divide by it.
        qkv_bias (bool): Bias on the fused qkv projection. NomMer's global
            attention has none.

    Shapes:
        x: (B, N, C) -> (B, N, C)
    """

    def __init__(self, embed_dims: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(
                f'embed_dims {embed_dims} is not divisible by num_heads {num_heads}'
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


def relative_position_index(window: int) -> torch.Tensor:
    """Index into a ((2w-1)^2, heads) bias table for every query/key pair of
    a w x w window, row-major tokens (Swin's layout). Shape (w*w, w*w)."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')
    )
    coords = coords.flatten(1)  # (2, w*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C), H and W multiples of ``window`` -> (B*nW, w*w, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B*nW, w*w, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


class WindowMSA(nn.Module):
    """Window multi-head self-attention with a relative position bias
    (non-shifted W-MSA).

    Inputs of any size are zero-padded to whole windows; padded tokens are
    masked out as keys, so the result on real tokens does not depend on the
    padding, and cropped away afterwards.

    Args:
        embed_dims (int): Channels ``C``.
        num_heads (int): Heads.
        window_size (int): Window side ``w``.
        qkv_bias (bool): Bias on the qkv projection.

    Shapes:
        x: (B, H, W, C) -> (B, H, W, C)
    """

    num_projections = 3  # q, k and v from the window's tokens

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int = 7,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(
                f'embed_dims {embed_dims} is not divisible by num_heads {num_heads}'
            )
        self.num_heads = num_heads
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Derived from window_size alone, so not saved in checkpoints.
        self.register_buffer(
            'relative_position_index',
            relative_position_index(window_size),
            persistent=False,
        )
        self.qkv = nn.Linear(
            embed_dims, embed_dims * self.num_projections, bias=qkv_bias
        )
        self.proj = nn.Linear(embed_dims, embed_dims)
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self._register_load_state_dict_pre_hook(self._resize_bias_table_hook)

    def _resize_bias_table_hook(
        self, state_dict: dict, prefix: str, *args, **kwargs
    ) -> None:
        """Bicubic-resize a checkpoint's bias table trained for another
        window (e.g. a 7x7 ImageNet table into a 24x24 detection window)."""
        key = prefix + 'relative_position_bias_table'
        src = state_dict.get(key)
        dst = self.relative_position_bias_table
        if (
            src is None
            or src.shape == dst.shape
            or src.ndim != 2
            or src.shape[1] != dst.shape[1]
        ):
            return  # equal, or left to the size check to report
        side_src, side_dst = round(src.shape[0] ** 0.5), 2 * self.window_size - 1
        if side_src**2 != src.shape[0]:
            return
        grid = src.T.reshape(1, -1, side_src, side_src).float()
        grid = F.interpolate(
            grid, size=(side_dst, side_dst), mode='bicubic', align_corners=False
        )
        state_dict[key] = grid.reshape(-1, side_dst**2).T.to(src.dtype)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, w*w, w*w) additive attention bias, contiguous: as a mask,
        SDPA's fused GPU kernels take it only with a last dim of stride 1
        (a permuted view would leave the GPU to the MATH backend)."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous()

    def forward(
        self, x: torch.Tensor, query: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, H, W, C = x.shape
        w = self.window_size
        x, padded = pad_to_multiple(x, w)
        Hp, Wp = x.shape[1:3]

        windows = window_partition(x, w)  # (B*nW, w*w, C)
        n = windows.shape[1]
        q, k, v = self._project(windows, query, B)  # each (B*nW, h, n, d)
        mask = self.relative_position_bias().to(q.dtype).unsqueeze(0)
        if padded:  # padded keys masked out, per window of each image
            mask = mask + self._padding_mask(H, W, q).repeat(B, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(-1, n, C))
        return crop_padding(window_reverse(out, w, Hp, Wp), H, W, padded)

    def _heads(self, windows: torch.Tensor) -> tuple:
        """The ``num_projections`` projections of (B*nW, n, C) windows, each
        split into heads: (B*nW, h, n, d)."""
        n, C = windows.shape[1:]
        proj = self.qkv(windows).reshape(
            -1, n, self.num_projections, self.num_heads, C // self.num_heads
        )
        return proj.permute(2, 0, 3, 1, 4).unbind(0)

    def _project(
        self, windows: torch.Tensor, query: torch.Tensor | None, B: int
    ) -> tuple:
        if query is not None:
            raise TypeError(f'{type(self).__name__} takes no external query')
        return self._heads(windows)

    def _padding_mask(self, H: int, W: int, ref: torch.Tensor) -> torch.Tensor:
        """(nW, 1, 1, w*w) additive mask of one image's windows, in
        :func:`window_partition` order: -inf on padded keys, 0 elsewhere.
        Built from comparisons, not by writing into slices, so that a trace
        (ONNX export) records it as computed."""
        w = self.window_size
        rows = torch.arange(ceil_div(H, w) * w, device=ref.device) < H
        cols = torch.arange(ceil_div(W, w) * w, device=ref.device) < W
        real = (rows[:, None] & cols[None, :])[None, :, :, None]
        real = window_partition(real, w)[..., 0]  # (nW, w*w)
        mask = torch.zeros(real.shape, dtype=ref.dtype, device=ref.device)
        return mask.masked_fill(~real, float('-inf'))[:, None, None, :]


class GlobalQueryWindowMSA(WindowMSA):
    """Window attention whose queries come from outside the windows (GC ViT's
    global-query attention): every window of image ``b`` attends with the
    same query map ``query[b]``; keys and values come from the window.

    Args: as :class:`WindowMSA`; ``qkv`` projects to keys and values only.

    Shapes:
        x: (B, H, W, C); query: (B, heads, w*w, C // heads) -> (B, H, W, C)
    """

    num_projections = 2

    def _project(
        self, windows: torch.Tensor, query: torch.Tensor | None, B: int
    ) -> tuple:
        if query is None:
            raise TypeError('GlobalQueryWindowMSA needs the global query')
        k, v = self._heads(windows)
        num_windows = windows.shape[0] // B
        # Window i of image b is row b * nW + i (window_partition's order),
        # so the query repeats per image, not per batch.
        q = query.unsqueeze(1).expand(-1, num_windows, -1, -1, -1)
        return q.reshape(-1, *query.shape[1:]).to(k.dtype), k, v
