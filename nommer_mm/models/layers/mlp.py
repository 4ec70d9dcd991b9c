"""The transformer MLP shared by NomMer and GC ViT."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .onednn import Linear, bias_grad, input_grad, linear, weight_grad


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
        return linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        h, weight = ctx.saved_tensors
        grad_h = torch.ops.aten.gelu_backward(
            input_grad(grad, weight.to(grad.dtype)), h)
        grad_w = weight_grad(grad, F.gelu(h).to(grad.dtype))
        grad_b = bias_grad(grad).to(weight.dtype) if ctx.has_bias else None
        return grad_h, grad_w.to(weight.dtype), grad_b


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. (B, ..., C) -> (B, ..., C).

    When gradients are needed, GELU + fc2 run as one autograd function that
    recomputes the GELU in backward, saving a hidden-width activation per
    block (same values and gradients). Without autograd, GELU is applied
    inside fc1's product (:func:`~.onednn.linear`)."""

    def __init__(self, embed_dims: int, hidden_dims: int) -> None:
        super().__init__()
        self.fc1 = Linear(embed_dims, hidden_dims)
        self.fc2 = Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or any(
                p.requires_grad for p in self.parameters())):
            h = self.fc1(x)
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
        return self.fc2(linear(x, self.fc1.weight, self.fc1.bias, 'gelu'))
