"""The oneDNN linear layers: same values and gradients as ``F.linear``, taken
only where they apply, and the ``nn.Linear`` swap for other models."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nommer_mm.models.fast import onednn as lin
from nommer_mm.models.layers.mlp import Mlp

needs_onednn = pytest.mark.skipif(
    lin._OP is None or not torch.backends.mkldnn.is_available(),
    reason='torch built without oneDNN',
)


@pytest.fixture
def op_calls(monkeypatch):
    """Count the calls that reach the oneDNN op."""
    calls = []

    def counted(*args):
        # only layouts oneDNN reads at full speed reach it
        for t in args[:2]:
            assert t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous()), (
                t.stride()
            )
        calls.append(args[3])  # the fused activation
        return lin._onednn_op()(*args)

    if lin._OP is not None:
        monkeypatch.setattr(lin, '_OP', counted)
    return calls


def _close(a, b, scale=1.0):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


@needs_onednn
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('backward_products', [True, False])
def test_values_and_gradients_equal_f_linear(
    bias, backward_products, op_calls, monkeypatch
):
    # both settings of the CPU gate, whatever this CPU is
    monkeypatch.setattr(lin, 'BACKWARD_PRODUCTS', backward_products)
    torch.manual_seed(0)
    # strided: a channels-first map permuted to channels-last, and a slice
    # of rows (as of a fused qkv output)
    x = torch.randn(2, 24, 5, 9).permute(0, 2, 3, 1)[:, :, :7]
    x = x.detach().requires_grad_()
    m = lin.Linear(24, 40, bias=bias)
    out = m(x)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *m.parameters()], grad)
    ref_out = F.linear(x, m.weight, m.bias)
    ref = torch.autograd.grad(ref_out, [x, *m.parameters()], grad)
    _close(out, ref_out)
    for g, r in zip(got, ref):
        _close(g, r, scale=r.abs().max().item())
    # forward, and (where the gate says so) the input and weight gradients
    # went through oneDNN; otherwise the gradients are the BLAS's
    assert len(op_calls) == (3 if backward_products else 1)


@needs_onednn
def test_fused_gelu_without_autograd(op_calls):
    x = torch.randn(3, 11, 16)
    w, b = torch.randn(32, 16), torch.randn(32)
    with torch.no_grad():
        _close(lin.linear(x, w, b, 'gelu'), F.gelu(F.linear(x, w, b)))
    assert op_calls == ['gelu']
    with pytest.raises(ValueError, match="'none', 'gelu'"):
        lin.linear(x, w, b, 'relu')


def test_plain_path_where_onednn_does_not_apply(op_calls):
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert lin.linear(x, w).dtype == torch.bfloat16  # autocast kept
    assert not lin.onednn_applies(x.double(), w.double())
    with torch.backends.mkldnn.flags(enabled=False):
        assert not lin.onednn_applies(x, w)
        _close(lin.linear(x, w), F.linear(x, w))
    # a TorchScript trace records aten::linear, which the FLOP counter reads
    traced = torch.jit.trace(lin.Linear(8, 6), x, check_trace=False)
    assert 'aten::linear' in str(traced.graph)
    assert op_calls == []


@needs_onednn
def test_mlp_eval_and_train_paths_equal_plain_formula(op_calls):
    torch.manual_seed(0)
    mlp = Mlp(16, 32)
    x = torch.randn(2, 5, 16, requires_grad=True)

    def plain(t):
        return F.linear(
            F.gelu(F.linear(t, mlp.fc1.weight, mlp.fc1.bias)),
            mlp.fc2.weight,
            mlp.fc2.bias,
        )

    with torch.no_grad():
        _close(mlp(x), plain(x))
    assert op_calls == ['gelu', 'none']  # fc1 + GELU fused, then fc2
    out = mlp(x)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *mlp.parameters()], grad)
    ref = torch.autograd.grad(plain(x), [x, *mlp.parameters()], grad)
    for g, r in zip(got, ref):
        _close(g, r, scale=r.abs().max().item())


def test_use_onednn_linear_swaps_plain_linears_only():
    from mmcv.cnn.bricks.wrappers import Linear as MMCVLinear

    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(4, 4), MMCVLinear(4, 4), Custom(4, 4), nn.ReLU())
    x = torch.randn(3, 4)
    before = model(x)
    keys = list(model.state_dict())
    assert lin.use_onednn_linear(model) == 2
    assert [type(m) for m in model][:3] == [lin.Linear, lin.Linear, Custom]
    assert list(model.state_dict()) == keys
    _close(model(x), before)
    assert lin.use_onednn_linear(model) == 0  # already swapped


def test_long_attention_only_where_it_was_measured_faster(monkeypatch):
    """The per-head oneDNN attention and the backward products on AVX-512
    CPUs only (AVX2: the fused kernel and the BLAS were faster); the CPU's
    capability is read once, at import."""
    assert lin.avx512_cpu('AVX512')
    assert lin.avx512_cpu('avx512_vnni')
    assert not lin.avx512_cpu('AVX2')
    assert not lin.avx512_cpu('DEFAULT')
    here = lin.avx512_cpu(torch.backends.cpu.get_cpu_capability())
    assert lin.LONG_ATTENTION == lin.BACKWARD_PRODUCTS == here
    monkeypatch.setattr(lin, 'LONG_ATTENTION', False)
    q = torch.randn(1, 2, lin.LONG_SEQUENCE, 8)
    with torch.no_grad():
        assert not lin.attention_applies(q, q, q)


@needs_onednn
def test_long_sequence_attention_equals_sdpa(op_calls, monkeypatch):
    """Global attention over >= LONG_SEQUENCE tokens without autograd runs
    as oneDNN products per head (rows in blocks, the last one partial), on
    an AVX-512 CPU (set here, so that the kernel is tested on any CPU)."""
    from nommer_mm.models.layers.attention import MultiheadSelfAttention

    monkeypatch.setattr(lin, 'LONG_ATTENTION', True)
    torch.manual_seed(0)
    n = lin.LONG_SEQUENCE + lin._ROWS // 2 + 3  # a partial last row block
    qkv = torch.randn(2, n, 3, 2, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # strided, as the attention layer makes them
    with torch.no_grad():
        assert lin.attention_applies(q, k, v)
        got = lin.attention(q, k, v)
    _close(got, F.scaled_dot_product_attention(q, k, v).transpose(1, 2))
    # 2 images x 2 heads x 5 row blocks x 2 products
    assert len(op_calls) == 40
    assert not lin.attention_applies(q[:, :, :100], k, v)  # short: fused
    with torch.enable_grad():
        assert not lin.attention_applies(q, k, v)  # autograd: fused kernel
    # the layer takes it, with the same result as the fused kernel
    attn = MultiheadSelfAttention(16, 2).eval()
    x = torch.randn(1, n, 16)
    op_calls.clear()
    with torch.no_grad():
        got = attn(x)
        taken = len(op_calls)
        with torch.backends.mkldnn.flags(enabled=False):
            ref = attn(x)
    _close(got, ref)
    # the layer did take it: 1 image x 2 heads x 5 row blocks x 2 products,
    # plus its qkv and proj linears; the reference run none of them
    assert taken == 20 + 2
    assert len(op_calls) == taken
