"""The fast paths (nommer_mm.models.fast) against the plain model: one
switch, the same function either way, and tools that count the plain
computation whatever the switch says."""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import nommer_mm
from nommer_mm import GCViT, NomMer, fast_paths
from nommer_mm.analysis import count_flops_module_hooks
from nommer_mm.models.fast import fast_paths_enabled, onednn
from small_archs import SMALL


def test_switch_call_context_and_environment():
    assert fast_paths_enabled()
    with fast_paths(False):
        assert not fast_paths_enabled()
        with fast_paths(True):
            assert fast_paths_enabled()
        assert not fast_paths_enabled()
    assert fast_paths_enabled()
    try:
        nommer_mm.fast_paths(False)
        assert not fast_paths_enabled()
    finally:
        fast_paths(True)
    with pytest.raises(TypeError, match='expected True or False, got 0'):
        fast_paths(0)
    code = (
        'from nommer_mm.models.fast import fast_paths_enabled; '
        'print(fast_paths_enabled())'
    )
    for value, expected in (('0', 'False'), ('off', 'False'), ('1', 'True')):
        out = subprocess.run(
            [sys.executable, '-c', code],
            text=True,
            capture_output=True,
            check=True,
            env=dict(os.environ, NOMMER_FAST=value),
        ).stdout
        assert out.strip() == expected, value


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def _noms(model):
    return (
        {k: v.clone() for k, v in model.nomination_maps().items()}
        if hasattr(model, 'nomination_maps')
        else {}
    )


@pytest.mark.parametrize('cls,arch', [(NomMer, 'tiny'), (GCViT, 'xxtiny')])
@pytest.mark.parametrize('shape', [(2, 3, 224, 224), (1, 3, 100, 132)])
def test_eval_outputs_equal_with_and_without_fast_paths(cls, arch, shape):
    """224 (unpadded windows) and 100x132 (padded windows: the fast path
    masks the border windows only, the plain one every window)."""
    torch.manual_seed(0)
    model = cls(arch, out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        fast = model(x)
        fast_noms = _noms(model)
        with fast_paths(False):
            plain = model(x)
            plain_noms = _noms(model)
    for a, b in zip(fast, plain):
        assert _rel(a, b) < 1e-5
    assert fast_noms.keys() == plain_noms.keys()
    for key in fast_noms:
        assert torch.equal(fast_noms[key], plain_noms[key]), key


@pytest.mark.parametrize('cls', [NomMer, GCViT])
@pytest.mark.parametrize('backward_products', [True, False])
def test_training_gradients_equal_on_the_same_gumbel_noise(
    cls, backward_products, monkeypatch
):
    """Training mode (Gumbel nominations, the fused nominator, the MLP and
    max-pool autograd functions) against autograd on the plain forward,
    with the same noise (same seed before each); the backward products
    through oneDNN (AVX-512 CPUs) and through the BLAS, whatever this CPU."""
    monkeypatch.setattr(onednn, 'BACKWARD_PRODUCTS', backward_products)
    torch.manual_seed(0)
    fast_model = cls(**SMALL[cls], out_indices=(0, 1, 2, 3), drop_path_rate=0.0).train()
    plain_model = copy.deepcopy(fast_model)
    x = torch.randn(2, 3, 64, 72)
    results = []
    for model, enabled in ((fast_model, True), (plain_model, False)):
        inp = x.clone().requires_grad_()
        torch.manual_seed(1)
        with fast_paths(enabled):
            outs = model(inp)
            loss = sum(
                (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs
            )
            loss.backward()
        results.append(
            (
                outs,
                inp.grad,
                {n: p.grad for n, p in model.named_parameters()},
                _noms(model),
            )
        )
    (fo, fx, fg, fn), (po, px, pg, pn) = results
    for a, b in zip(fo, po):
        assert _rel(a, b) < 1e-5
    assert _rel(fx, px) < 1e-5
    assert fg.keys() == pg.keys()
    used = [n for n in fg if pg[n] is not None]
    assert len(used) > 0.8 * len(fg)  # unused: e.g. a one-block level's
    for name in fg:  # global-query generator in GC ViT
        assert (fg[name] is None) == (pg[name] is None), name
        if name in used:
            assert _rel(fg[name], pg[name]) < 1e-4, name
    for key in fn:
        assert torch.equal(fn[key], pn[key]), key


# count_flops_module_hooks of NomMer-T + a 1000-way fc at 224 on the plain
# path; before the MLP's fast path hid fc1/fc2 from the hooks, get_flops
# printed the same 5.13 G.
PINNED_B_NOMMER_T = 5_129_585_320


class _Classifier(nn.Module):
    def __init__(self, backbone, channels):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(channels, 1000)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1])


def test_module_hook_flops_see_every_layer_whatever_the_switch():
    """Convention (b) of NomMer-T at 224: pinned to the plain path's figure,
    the same with the switch on or off, and every block's fc1 and fc2 are
    among the hooked calls (the fast MLP calls them as functions)."""
    model = _Classifier(
        NomMer('tiny', out_indices=(3,), out_type='cls_token'),
        8 * NomMer.arch_zoo['tiny']['embed_dims'],
    )
    x = torch.randn(1, 3, 224, 224)
    seen = []
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: seen.append(n))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    on = count_flops_module_hooks(model, x)
    for h in handles:
        h.remove()
    with fast_paths(False):
        off = count_flops_module_hooks(model, x)
    assert on == off == PINNED_B_NOMMER_T
    blocks = [n for n, _ in model.named_modules() if n.endswith('.mlp')]
    assert len(blocks) == sum(NomMer.arch_zoo['tiny']['depths'])  # 14
    for block in blocks:
        assert f'{block}.fc1' in seen and f'{block}.fc2' in seen, block
