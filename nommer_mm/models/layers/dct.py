"""Block-wise 2-D DCT-II / inverse DCT with low-frequency truncation.

The transforms are fixed orthonormal bases, held as non-persistent buffers
(never trained, never saved) and applied as small matrix products per block,
not as convolutions with N x N kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def dct_basis(block: int, keep: int) -> torch.Tensor:
    """Orthonormal DCT-II basis rows for the ``keep`` lowest frequencies.

    Returns ``D`` of shape (keep, block) with
    ``D[u, x] = a(u) * cos((2x + 1) * u * pi / (2 * block))``,
    ``a(0) = sqrt(1/block)``, ``a(u > 0) = sqrt(2/block)``, so that the
    2-D coefficient of a block ``X`` is ``D @ X @ D.T`` (rows: vertical
    frequency v, columns: horizontal frequency u).
    """
    x = torch.arange(block, dtype=torch.float64)
    u = torch.arange(keep, dtype=torch.float64)[:, None]
    basis = torch.cos((2 * x + 1) * u * math.pi / (2 * block))
    scale = torch.full((keep, 1), math.sqrt(2.0 / block), dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / block)
    return scale * basis


def dct_kronecker_basis(block: int, keep: int) -> torch.Tensor:
    """2-D DCT-II of an N x N block as one matrix, (N*N, l*l), float64:
    ``K[y*N + x, v*l + u] = D[v, y] * D[u, x]`` with ``D = dct_basis``.
    Pixels (row-major) @ K gives the coefficients; K is orthonormal in its
    columns, so coefficients @ K.T is the inverse."""
    D = dct_basis(block, keep)
    return torch.einsum('vy,ux->yxvu', D, D).reshape(block**2, keep**2)


class BlockDCT(nn.Module):
    """Per-channel block DCT of an (B, H, W, C) map, keeping l x l lowest
    frequencies of every N x N block (l = ceil(N / 2) by default).

    ``forward``: (B, H, W, C), H and W multiples of N -> (B, H/N, W/N, C*l*l),
    channel order ``c*l*l + (u + v*l)`` (u horizontal, v vertical frequency).
    ``inverse``: (B, h, w, C*l*l) -> (B, h*N, w*N, C), dropped frequencies 0.
    """

    def __init__(self, block_size: int, keep: int | None = None) -> None:
        super().__init__()
        self.block_size = block_size
        self.keep = keep if keep is not None else (block_size + 1) // 2
        kron = dct_kronecker_basis(block_size, self.keep)
        self.register_buffer(
            'basis', kron.to(torch.get_default_dtype()), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        N = self.block_size
        # one copy gathers each block's pixels, one GEMM transforms them
        blocks = x.view(B, H // N, N, W // N, N, C).permute(0, 1, 3, 5, 2, 4)
        blocks = blocks.reshape(B, H // N, W // N, C, N * N)
        coeffs = blocks @ self.basis.to(x.dtype)  # (B, h, w, C, l*l)
        return coeffs.reshape(B, H // N, W // N, C * self.keep**2)

    def inverse(self, coeffs: torch.Tensor) -> torch.Tensor:
        B, h, w, Cll = coeffs.shape
        N, ll = self.block_size, self.keep**2
        C = Cll // ll
        # orthonormal basis: the inverse is the transpose
        pixels = coeffs.view(B, h, w, C, ll) @ self.basis.to(coeffs.dtype).t()
        pixels = pixels.view(B, h, w, C, N, N).permute(0, 1, 4, 2, 5, 3)
        return pixels.reshape(B, h * N, w * N, C)

    def extra_repr(self) -> str:
        return f'block_size={self.block_size}, keep={self.keep}'
