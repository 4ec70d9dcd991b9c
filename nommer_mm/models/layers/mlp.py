"""The transformer MLP shared by NomMer and GC ViT."""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import fast
from ..fast import Linear


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. (B, ..., C) -> (B, ..., C).

    Fast path (:func:`~nommer_mm.fast_paths`): :func:`.fast.mlp_forward`."""

    def __init__(self, embed_dims: int, hidden_dims: int) -> None:
        super().__init__()
        self.fc1 = Linear(embed_dims, hidden_dims)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fast.mlp_forward(self, x)
        return out if out is not None else self.fc2(self.act(self.fc1(x)))
