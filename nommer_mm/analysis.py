"""Parameter and FLOP counting, saved-for-backward bytes, and the margins
of NomMer's nominations.

``count_flops`` follows fvcore's convention (one multiply-add = one FLOP,
counted on the traced graph, so the attention matrix products are included)
through mmengine's port of fvcore's counter, with one handle added: fused
``scaled_dot_product_attention``, which it does not know, is counted as the
two matrix products it replaces (Q K^T and A V), as fvcore counts them when
written out.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn


def _shape(value) -> list[int]:
    return list(value.type().sizes())


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of softmax(Q K^T) V for (..., L, E) queries and
    (..., S, E) keys, (..., S, Ev) values."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    L, E = q[-2], q[-1]
    S, Ev = k[-2], v[-1]
    return batch * L * S * (E + Ev)


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable_only
    )


def count_flops(
    model: nn.Module, inputs: torch.Tensor | Sequence, by_module: bool = False
) -> int | dict:
    """FLOPs (multiply-adds) of ``model(*inputs)`` in fvcore's convention.

    Returns the total, or with ``by_module`` the per-module counter.
    Like fvcore, elementwise ops (add, mul, softmax, GELU ...) are not
    counted.
    """
    from mmengine.analysis import FlopAnalyzer

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    was_training = model.training
    model.eval()
    try:
        analyzer = FlopAnalyzer(model, tuple(inputs))
        analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        with torch.no_grad():
            result = analyzer.by_module() if by_module else analyzer.total()
    finally:
        model.train(was_training)
    return result


# ------------------------------------------------ module-hook convention
def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _conv_flops(m: nn.Conv2d, inp, out) -> int:
    k = _numel(m.kernel_size) * (m.in_channels // m.groups)
    return out.numel() * k + (out.numel() if m.bias is not None else 0)


def _linear_flops(m: nn.Linear, inp, out) -> int:
    return inp[0].numel() * m.out_features + (out.numel() if m.bias is not None else 0)


def _norm_flops(m: nn.Module, inp, out) -> int:
    affine = getattr(m, 'affine', None) or getattr(m, 'elementwise_affine', False)
    return inp[0].numel() * (2 if affine else 1)


def _elementwise_flops(m: nn.Module, inp, out) -> int:
    return out.numel()


def _pool_flops(m: nn.Module, inp, out) -> int:
    return inp[0].numel()


_HOOK_RULES = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d), _conv_flops),
    ((nn.Linear,), _linear_flops),
    (
        (
            nn.modules.batchnorm._BatchNorm,
            nn.GroupNorm,
            nn.LayerNorm,
            nn.modules.instancenorm._InstanceNorm,
        ),
        _norm_flops,
    ),
    ((nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU), _elementwise_flops),
    (
        (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
        _pool_flops,
    ),
    ((nn.Upsample,), _elementwise_flops),
)


def count_flops_module_hooks(model: nn.Module, inputs: torch.Tensor | Sequence) -> int:
    """FLOPs counted the way mmcv 1.x's ``get_model_complexity_info`` did:
    forward hooks on conv / linear / norm / activation / pooling modules
    (multiply-adds, plus bias adds and norm affine terms). Anything done by
    functional calls is invisible to it: attention matrix products, the
    DCT, functional activations and pooling."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    total = [0]
    handles = []

    def make_hook(rule):
        def hook(m, inp, out):
            if isinstance(out, torch.Tensor):
                total[0] += rule(m, inp, out)

        return hook

    for m in model.modules():
        for types, rule in _HOOK_RULES:
            if isinstance(m, types):
                handles.append(m.register_forward_hook(make_hook(rule)))
                break
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0]


def saved_for_backward_bytes(model: nn.Module, inputs: torch.Tensor | Sequence) -> int:
    """Bytes of the distinct tensors autograd keeps from the forward of
    ``model(*inputs)`` for the backward (activations, and parameters where an
    op saves them): the part of training memory a model's design decides,
    free of allocator and optimizer effects. Tensors sharing storage count
    once."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    seen: set = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return total[0]


@contextlib.contextmanager
def nomination_margins(backbone: nn.Module) -> Iterator[dict]:
    """While active, each forward of a NomMer ``backbone`` records, for
    every block that nominates (the keys of ``nomination_maps()``), the gap
    between its nominator's two largest logits at each position, (B, H, W).
    Where the gap is within float rounding the argmax is a near tie, which
    another kernel (ONNX Runtime, another CPU, fp16) may break the other way
    without being wrong.

    Yields the dict it fills; the hooks are removed on exit."""
    from .models.layers.context import nominator_logits

    margins: dict = {}
    handles = []

    def record(name: str):
        def hook(nominator: nn.Module, args: tuple) -> None:
            logits = nominator_logits(
                sum(args[0]), nominator.fc.weight, nominator.fc.bias
            )
            top2 = logits.topk(2, dim=-1).values
            margins[name] = (top2[..., 0] - top2[..., 1]).detach()

        return hook

    nominators = getattr(backbone, 'nominators', None)  # NomMer only
    for name, nominator in nominators() if nominators else ():
        handles.append(nominator.register_forward_pre_hook(record(name)))
    try:
        yield margins
    finally:
        for h in handles:
            h.remove()
