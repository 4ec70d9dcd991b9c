"""nommer_mm.models.layers.shapes: a trace records the padding path, so a
graph traced at one size is right at others."""

import warnings

import pytest
import torch

from nommer_mm import GCViT, NomMer, Visformer
from nommer_mm.models.layers import WindowMSA, ceil_div, needs_padding, same_size


def test_ceil_div_and_the_conditions_outside_a_trace():
    assert [ceil_div(a, 7) for a in (0, 1, 7, 24, 28, 29)] == [0, 1, 1, 4, 4, 5]
    assert not needs_padding(0, 0) and needs_padding(0, 3)
    assert same_size((7, 7), [7, 7]) and not same_size((7, 8), (7, 7))


def _trace(module, x):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the tracer's int-conversion notes
        return torch.jit.trace(module, x, check_trace=False)


def test_window_attention_traced_unpadded_runs_padded_sizes():
    """Traced at 28x28 (whole windows of 7), run at 24x32 and 29x15: a
    graph that kept the traced size's no-padding branch would reshape 24
    rows into windows of 7 and fail, or give other values."""
    torch.manual_seed(0)
    attn = WindowMSA(16, 2, 7).eval()
    traced = _trace(attn, torch.randn(1, 28, 28, 16))
    for shape in ((1, 24, 32, 16), (2, 29, 15, 16), (1, 28, 28, 16)):
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), attn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    'backbone',
    [
        lambda: NomMer(arch='tiny', out_indices=(0, 1, 2, 3)),
        lambda: GCViT(arch='xxtiny', out_indices=(0, 1, 2, 3)),
        lambda: Visformer(arch='tiny', out_indices=(0, 1, 2, 3)),
    ],
    ids=['nommer', 'gcvit', 'visformer'],
)
def test_backbones_traced_at_one_size_run_at_another(backbone):
    """Whole backbones, traced at 224 (no padding anywhere for NomMer and
    GC ViT, the position embeddings' own size), at 96x136."""
    torch.manual_seed(0)
    model = backbone().eval()
    traced = _trace(model, torch.randn(1, 3, 224, 224))
    x = torch.randn(1, 3, 96, 136)
    with torch.no_grad():
        want = model(x)
        got = traced(x)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
