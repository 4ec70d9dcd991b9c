"""The transformer MLP shared by NomMer and GC ViT."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h))`` that keeps only ``h`` for backward: the GELU
    output, which the weight gradient needs, is recomputed there (one
    elementwise pass) instead of living from forward to backward. In an MLP
    this drops one of its two hidden-width activations."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        h, weight = ctx.saved_tensors
        grad_h = torch.ops.aten.gelu_backward(grad @ weight.to(grad.dtype), h)
        rows = grad.reshape(-1, grad.shape[-1])
        grad_w = rows.t() @ F.gelu(h).reshape(-1, h.shape[-1]).to(rows.dtype)
        grad_b = rows.sum(0).to(weight.dtype) if ctx.has_bias else None
        return grad_h, grad_w.to(weight.dtype), grad_b


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. (B, ..., C) -> (B, ..., C).

    When gradients are needed, GELU + fc2 run as one autograd function that
    recomputes the GELU in backward, saving a hidden-width activation per
    block (same values and gradients)."""

    def __init__(self, embed_dims: int, hidden_dims: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.fc2 = nn.Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if torch.is_grad_enabled() and (h.requires_grad or
                                        self.fc2.weight.requires_grad):
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
        return self.fc2(F.gelu(h))
