"""The transformer MLP shared by NomMer and GC ViT."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..fast import GeluLinear, Linear, fast_paths_enabled, linear, needs_grad


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. (B, ..., C) -> (B, ..., C).

    Fast path (:func:`~nommer_mm.fast_paths`): with autograd, GELU + fc2 run
    as one function that recomputes the GELU in backward (one hidden-width
    activation fewer kept per block); without, the GELU is applied inside
    fc1's oneDNN product."""

    def __init__(self, embed_dims: int, hidden_dims: int) -> None:
        super().__init__()
        self.fc1 = Linear(embed_dims, hidden_dims)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_paths_enabled():
            return self._fast_forward(x)
        return self.fc2(self.act(self.fc1(x)))

    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_grad(x, *self.parameters()):
            return GeluLinear.apply(self.fc1(x), self.fc2.weight, self.fc2.bias)
        return self.fc2(linear(x, self.fc1.weight, self.fc1.bias, 'gelu'))
