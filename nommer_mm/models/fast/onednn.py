"""Linear layers and long-sequence attention whose CPU fp32 matrix products
run through oneDNN.

``F.linear`` on CPU in fp32 calls the BLAS that torch was built with (MKL in
the PyPI wheels). oneDNN, also inside those wheels, has its own matmul
kernels; on AVX-512 CPUs where MKL takes a slower path (an AMD EPYC of
this project's) that was about a 2x on every linear layer, forward and
backward (README, "Speed and memory"). oneDNN also applies the MLP's GELU to
the product while it is still in cache, in place of one more pass over
memory. The fused CPU attention kernel uses the slower BLAS too, so on
AVX-512 CPUs global attention over long sequences (dense inputs) is faster
as oneDNN products per head (:func:`attention`). On an AVX2 CPU only the
forward products still gained; the backward products and the per-head
attention lost, so there the BLAS and the fused kernel stay for those
(:data:`BACKWARD_PRODUCTS`, :data:`LONG_ATTENTION`).

The fast path is taken only where it computes the same function: CPU, fp32
inputs and weights, autocast off, oneDNN enabled (``torch.backends.mkldnn``),
and neither a TorchScript trace (the FLOP counter reads ``aten::linear``) nor
``torch.compile`` (inductor picks its own kernels) in progress. Everywhere
else the plain ``F.linear`` runs. Parameters and state-dict keys are those of
``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .switch import fast_paths_enabled

ACTIVATIONS = ('none', 'gelu')


def _onednn_op():
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


_OP = _onednn_op()


def onednn_applies(*tensors: torch.Tensor) -> bool:
    """Whether the oneDNN path computes ``F.linear`` for these tensors."""
    # is_compiling first: under dynamo it is a constant that ends the test
    # before calls dynamo would not trace
    return (
        fast_paths_enabled()
        and not torch.compiler.is_compiling()
        and _OP is not None
        and not torch.jit.is_tracing()
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and all(t.device.type == 'cpu' and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled('cpu')
    )


def _onednn_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` if oneDNN reads it at full speed (contiguous, or the 2-D
    transpose of a contiguous matrix), else a contiguous copy: other strides
    (e.g. a slice of rows) send oneDNN to reference kernels, up to 1000x
    slower."""
    if t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous()):
        return t
    return t.contiguous()


def _product(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = 'none',
) -> torch.Tensor:
    """``activation(x @ weight.T + bias)``."""
    if onednn_applies(x, weight):
        # 'none' as the GELU algorithm selects the exact (erf) form
        return _OP(
            _onednn_layout(x),
            _onednn_layout(weight),
            bias,
            activation,
            [],
            'none' if activation == 'gelu' else '',
        )
    out = F.linear(x, weight, bias)
    return F.gelu(out) if activation == 'gelu' else out


def avx512_cpu(capability: str | None = None) -> bool:
    """Whether this CPU (or ``capability``, as
    ``torch.backends.cpu.get_cpu_capability()`` names it) has AVX-512: the
    CPUs where oneDNN's products were measured faster than the BLAS's in
    backward and in per-head attention, not only in forward."""
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    return capability.upper().startswith('AVX512')


# Backward products (input and weight gradients) through oneDNN on AVX-512
# CPUs only; read once, at import. On an AVX2 CPU they made a NomMer-T
# training step slower than the BLAS's (README, "Speed and memory").
BACKWARD_PRODUCTS = avx512_cpu()


def _backward_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in a backward pass."""
    if BACKWARD_PRODUCTS:
        return _product(a, b)
    return F.linear(a, b)


def input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dL/dx of ``x @ weight.T``: ``grad @ weight``,
    (..., out) -> (..., in)."""
    return _backward_product(grad, weight.t())


def weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dweight of ``x @ weight.T``: ``grad.T @ x`` over all leading dims,
    (out, in)."""
    rows = grad.reshape(-1, grad.shape[-1])
    return _backward_product(rows.t(), x.reshape(-1, x.shape[-1]).t())


def bias_grad(grad: torch.Tensor) -> torch.Tensor:
    """dL/dbias: ``grad`` summed over all leading dims, (out,)."""
    return grad.reshape(-1, grad.shape[-1]).sum(0)


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with oneDNN products in forward and backward; saves what
    ``F.linear`` saves (input and weight)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = input_grad(grad, weight) if need_x else None
        grad_w = weight_grad(grad, x) if need_w else None
        grad_b = bias_grad(grad) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = 'none',
) -> torch.Tensor:
    """``activation(F.linear(x, weight, bias))``, through oneDNN where
    :func:`onednn_applies`. ``activation`` is ``'none'`` or ``'gelu'``
    (exact erf GELU); the fused activation is used without autograd.

    Shapes: x (..., in), weight (out, in), bias (out,) -> (..., out)
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f'activation must be one of {ACTIVATIONS}, got {activation!r}')
    tracked = torch.is_grad_enabled() and (
        x.requires_grad
        or weight.requires_grad
        or (bias is not None and bias.requires_grad)
    )
    if not tracked:
        return _product(x, weight, bias, activation)
    if onednn_applies(x, weight):
        out = _OneDNNLinear.apply(x, weight, bias)
    else:
        out = F.linear(x, weight, bias)
    return F.gelu(out) if activation == 'gelu' else out


# Global attention over at least this many tokens runs through
# :func:`attention` without autograd, on CPUs with AVX-512: there the
# per-head oneDNN products beat the fused CPU kernel
# (``F.scaled_dot_product_attention``) from about a thousand tokens on, and
# lose below, where the per-head loop dominates. On an AVX2 CPU they lost at
# every size tried (README, "Speed and memory").
LONG_SEQUENCE = 1024
_ROWS = 256  # query rows per step: a (256, N) score block stays in cache


LONG_ATTENTION = avx512_cpu()  # read once, at import


def attention_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`attention` is the faster exact path for these inputs
    (an AVX-512 CPU, long sequences, no autograd, and
    :func:`onednn_applies`)."""
    return (
        LONG_ATTENTION
        and q.shape[-2] >= LONG_SEQUENCE
        and not torch.is_grad_enabled()
        and onednn_applies(q, k, v)
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, without autograd, as oneDNN products per
    image, head and block of query rows.

    Shapes: q, k, v (B, heads, N, d) -> (B, N, heads, d), the layout the
    output projection reads, so no transpose copy follows.
    """
    B, heads, N, d = q.shape
    # per-head (N, d) slices must be contiguous for oneDNN's fast kernels
    q = (q * d**-0.5).contiguous()
    k, v = k.contiguous(), v.contiguous()
    out = q.new_empty(B, N, heads, d)
    probs = q.new_empty(min(_ROWS, N), N)  # softmax output, reused
    for b in range(B):
        for h in range(heads):
            keys, values_t = k[b, h], v[b, h].t()
            for start in range(0, N, _ROWS):
                scores = _OP(q[b, h, start : start + _ROWS], keys, None, 'none', [], '')
                p = torch.ops.aten._softmax.out(
                    scores, -1, False, out=probs[: scores.shape[0]]
                )
                out[b, start : start + _ROWS, h] = _OP(
                    p, values_t, None, 'none', [], ''
                )
    return out


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) computed by
    :func:`linear`. Shapes: (..., in) -> (..., out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _plain_linear_types() -> tuple:
    """``nn.Linear`` and subclasses that compute exactly ``F.linear``."""
    types = [nn.Linear]
    try:  # mmcv's wrapper differs only for empty inputs on torch < 1.5
        from mmcv.cnn.bricks.wrappers import Linear as MMCVLinear

        types.append(MMCVLinear)
    except ImportError:
        pass
    return tuple(types)


def use_onednn_linear(model: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` inside ``model`` (also mmcv's wrapper,
    used by its FFN) into :class:`Linear`, in place with parameters
    untouched: e.g. a detector's box head, or another backbone for a
    side-by-side benchmark. Returns how many were changed."""
    plain = _plain_linear_types()
    changed = 0
    for m in model.modules():
        if type(m) in plain:
            m.__class__ = Linear
            changed += 1
    return changed
