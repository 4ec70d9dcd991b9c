"""The transformer MLP shared by NomMer and GC ViT."""

from __future__ import annotations

import torch
import torch.nn as nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. (B, ..., C) -> (B, ..., C)."""

    def __init__(self, embed_dims: int, hidden_dims: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
