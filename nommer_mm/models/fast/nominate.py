"""The nominator's fast paths: candidates summed and selected into buffers
they own (eval), and training's hard Gumbel-softmax with its
straight-through gradient as one autograd function that keeps less."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .inplace import add_into
from .switch import fast_paths_enabled


def sum_candidates(feats: list) -> torch.Tensor | None:
    """The candidates' sum, accumulated into the first fresh sum (add's
    backward needs no inputs, so this is safe under autograd too); None
    when the fast paths are off."""
    if not fast_paths_enabled() or len(feats) < 2:
        return None
    return _sum(feats)


def _sum(feats: list) -> torch.Tensor:
    summed = feats[0] + feats[1]
    for f in feats[2:]:
        summed = add_into(summed, f)
    return summed


def select_into(
    feats: list, index: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """``feats[index]`` per position, written into ``out`` (a buffer of the
    candidates' common dtype that the caller owns) or else into the last
    candidate's buffer when that is contiguous and of the common dtype: no
    new full-size allocation. None where it does not apply: fast paths off,
    autograd recording (an eval model's input gradients), or a trace (ONNX
    export: ``where`` has no ``out=`` there)."""
    if not fast_paths_enabled() or torch.is_grad_enabled() or torch.jit.is_tracing():
        return None
    return _select_into(feats, index, out)


def _select_into(
    feats: list, index: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    index = index.unsqueeze(-1)
    dtype = functools.reduce(torch.promote_types, [f.dtype for f in feats])
    if out is None:
        out = feats[-1].to(dtype).contiguous()  # itself when already so
    else:
        out.copy_(feats[-1])
    for i in range(len(feats) - 2, -1, -1):
        torch.where(index == i, feats[i], out, out=out)
    return out


class _NominateAndCombine(torch.autograd.Function):
    """Training nomination, fused: logits from the candidates' sum, a hard
    Gumbel-softmax sample, and the nominated candidate per position, with
    the straight-through gradients of the soft sample.

    The plain form (``weights = hard - soft.detach() + soft``, then
    ``sum_p weights_p * feats_p``) keeps the candidates' sum for the
    nominator's weight gradient and builds P products and P - 1 sums, all
    full-size. Here the forward selects (the one-hot weights are exactly 0
    or 1) and the backward recomputes the sum, so one full-size activation
    per block fewer is kept and most temporaries go.

    Gradients, with ``g`` the output gradient, ``s`` the soft sample and
    ``W`` the nominator's weight:
        dL/ds_p      = <g, feats_p>               (per position)
        dL/dlogits   = softmax_backward(dL/ds, s) / tau
        dL/dfeats_p  = [index == p] * g + dL/dlogits @ W
    """

    @staticmethod
    def forward(
        ctx,
        logits_fn: Callable,
        sample_fn: Callable,
        tau: float,
        weight: torch.Tensor,
        bias: torch.Tensor,
        *feats: torch.Tensor,
    ) -> tuple:
        summed = _sum(feats)
        soft = sample_fn(logits_fn(summed, weight, bias), tau)
        index = soft.argmax(-1)
        # the sum is spent: its buffer takes the output
        out = _select_into(feats, index, out=summed)
        ctx.tau = tau
        ctx.save_for_backward(weight, soft, index, *feats)
        ctx.mark_non_differentiable(index)
        return out, index

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _) -> tuple:
        weight, soft, index, *feats = ctx.saved_tensors
        C = grad.shape[-1]
        grad_soft = torch.stack(
            [torch.linalg.vecdot(grad, f.to(grad.dtype)) for f in feats], dim=-1
        ).to(soft.dtype)
        # softmax backward, on (B, H, W, P): small
        grad_logits = (
            soft * (grad_soft - (grad_soft * soft).sum(-1, keepdim=True)) / ctx.tau
        )
        rows = grad_logits.reshape(-1, len(feats))
        summed = _sum(feats)
        grad_weight = rows.t() @ summed.reshape(-1, C).to(rows.dtype)
        del summed
        grad_bias = rows.sum(0)
        grad_summed = (grad_logits @ weight.to(rows.dtype)).to(grad.dtype)
        grad_feats = []
        for p, f in enumerate(feats):
            chosen = (index == p).unsqueeze(-1).to(grad.dtype)
            if p == len(feats) - 1:  # the last one may take the buffer
                g_p = grad_summed.addcmul_(grad, chosen)
            else:
                g_p = torch.addcmul(grad_summed, grad, chosen)
            grad_feats.append(g_p.to(f.dtype))
        return (
            None,
            None,
            None,
            grad_weight.to(weight.dtype),
            grad_bias.to(weight.dtype),
            *grad_feats,
        )


def nominate_and_combine(
    feats: list,
    weight: torch.Tensor,
    bias: torch.Tensor,
    tau: float,
    logits_fn: Callable,
    sample_fn: Callable,
) -> tuple | None:
    """Training nomination in one autograd function: ``(out, index)``, the
    values and gradients of the straight-through formula. ``logits_fn`` and
    ``sample_fn`` are the model's own (logits from the sum; the Gumbel
    sample). None when the fast paths are off."""
    if not fast_paths_enabled():
        return None
    return _NominateAndCombine.apply(logits_fn, sample_fn, tau, weight, bias, *feats)
