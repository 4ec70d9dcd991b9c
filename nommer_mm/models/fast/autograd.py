"""Autograd functions that keep less for backward than autograd would, each
computing the same values and gradients as the plain layers it replaces."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .onednn import bias_grad, input_grad, linear, weight_grad
from .switch import fast_paths_enabled


class GeluLinear(torch.autograd.Function):
    """``linear(gelu(h))`` that keeps only ``h`` for backward: the GELU
    output, which the weight gradient needs, is recomputed there (one
    elementwise pass) instead of living from forward to backward. In an MLP
    this drops one of its two hidden-width activations."""

    @staticmethod
    def forward(
        ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        h, weight = ctx.saved_tensors
        grad_h = torch.ops.aten.gelu_backward(
            input_grad(grad, weight.to(grad.dtype)), h
        )
        grad_w = weight_grad(grad, F.gelu(h).to(grad.dtype))
        grad_b = bias_grad(grad).to(weight.dtype) if ctx.has_bias else None
        return grad_h, grad_w.to(weight.dtype), grad_b


class MaxPool2x2(torch.autograd.Function):
    """2x2 max-pool (ceil mode) that keeps only the argmax indices for
    backward: autograd's max-pool also keeps its input, a full map at twice
    the pooled resolution (at batch 8 and 224, 32 MiB over NomMer-T's three
    merges). The gradient is scattered back with ``max_unpool2d``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, index = F.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
        ctx.save_for_backward(index)
        ctx.size = x.shape[-2:]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (index,) = ctx.saved_tensors
        return F.max_unpool2d(grad, index, 2, output_size=ctx.size)


def needs_grad(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether autograd records an op on ``x`` and ``params``."""
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p is not None and p.requires_grad for p in params)
    )


def mlp_forward(mlp, x: torch.Tensor) -> torch.Tensor | None:
    """``mlp.fc2(gelu(mlp.fc1(x)))`` of an MLP whose ``act`` is GELU. With
    autograd, GELU + fc2 run as :class:`GeluLinear` (one hidden-width
    activation fewer kept); without, the GELU is applied inside fc1's oneDNN
    product. None when the fast paths are off."""
    if not fast_paths_enabled():
        return None
    if needs_grad(x, *mlp.parameters()):
        return GeluLinear.apply(mlp.fc1(x), mlp.fc2.weight, mlp.fc2.bias)
    return mlp.fc2(linear(x, mlp.fc1.weight, mlp.fc1.bias, 'gelu'))


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor | None:
    """2x2 ceil-mode max-pool keeping only indices for backward (with
    autograd); None where it does not apply."""
    if not fast_paths_enabled() or not torch.is_grad_enabled():
        return None
    return MaxPool2x2.apply(x)
