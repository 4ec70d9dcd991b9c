"""torch.compile sees each backbone as one graph, and inductor's code
computes what eager computes: outputs and gradients in training (Gumbel
nomination, drop path, BatchNorm statistics) and in eval, at a size that
needs padding everywhere (stem, windows, DCT blocks, merges)."""

import pytest
import torch

from small_archs import SMALL

from nommer_mm.analysis import nomination_margins

SIZE = (96, 136)  # not a multiple of 7 or of 32 at any stage


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('backbone', list(SMALL), ids=lambda c: c.__name__)
def test_no_graph_breaks(backbone, training):
    """TorchDynamo's trace alone (no code generated): one graph, no break."""
    import torch._dynamo as dynamo

    model = backbone(**SMALL[backbone], drop_path_rate=0.1).train(training)
    dynamo.reset()
    explained = dynamo.explain(model)(torch.randn(2, 3, 70, 90))
    reasons = [r.reason for r in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


def _loss(outs) -> torch.Tensor:
    """A loss that weighs every output differently."""
    return sum((o * (i + 1)).square().mean() for i, o in enumerate(outs))


def _run(model, x, seed: int, forward=None):
    """Outputs, parameter gradients (training) and nominations of one call
    of ``forward`` (default: ``model``; a compiled ``model`` shares its
    parameters and nomination state), with the random draws (Gumbel noise,
    drop path) seeded."""
    torch.manual_seed(seed)
    outs = (model if forward is None else forward)(x)
    grads = []
    if model.training:
        _loss(outs).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
    nominate = getattr(model, 'nomination_maps', None)
    maps = {k: v.clone() for k, v in nominate().items()} if nominate else {}
    return [o.detach() for o in outs], grads, maps


@pytest.mark.slow
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('backbone', list(SMALL), ids=lambda c: c.__name__)
def test_inductor_equals_eager(backbone, training):
    """``torch.compile(fullgraph=True)`` with inductor: the same outputs and
    gradients as eager within 1e-4 relative (eval in float32, training in
    float64). Random draws come from eager's
    generator (``fallback_random``), so the compiled model samples the same
    Gumbel noise and drop paths. NomMer's nominations are compared where
    the eager logits have no near-tie."""
    import torch._dynamo as dynamo
    import torch._inductor.config as inductor_config

    # Training compares in float64: in float32 the gradients of parameters
    # whose gradient is a near-cancelling sum (e.g. the rarely nominated
    # global context behind BatchNorm) differ by rounding far beyond 1e-4
    # between any two kernel orders, eager's own included.
    dtype = torch.float64 if training else torch.float32
    torch.manual_seed(0)
    eager = backbone(**SMALL[backbone], drop_path_rate=0.1).train(training)
    compiled = backbone(**SMALL[backbone], drop_path_rate=0.1).train(training)
    compiled.load_state_dict(eager.state_dict())
    eager, compiled = eager.to(dtype), compiled.to(dtype)
    x = torch.randn(2, 3, *SIZE, dtype=dtype)
    dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        fn = torch.compile(compiled, fullgraph=True, backend='inductor')
        with torch.no_grad() if not training else torch.enable_grad():
            with nomination_margins(eager) as margins:
                want = _run(eager, x, seed=1)
            got = _run(compiled, x, seed=1, forward=fn)
    assert got[2].keys() == want[2].keys()
    for name, eager_map in want[2].items():
        compiled_map = got[2][name]
        clear = margins[name] > 1e-3 if not training else torch.ones_like(eager_map)
        assert torch.equal(compiled_map[clear.bool()], eager_map[clear.bool()]), name
    assert len(got[0]) == len(want[0])
    for o, w in zip(got[0], want[0]):
        assert o.shape == w.shape
        assert _relative(o, w) < 1e-4
    assert len(got[1]) == len(want[1])
    # A gradient that is zero in exact arithmetic (a conv bias before
    # BatchNorm) is rounding noise in both: it must stay at that level.
    zero = 1e-9 * max(float(w.norm()) for w in want[1]) if want[1] else 0.0
    for g, w in zip(got[1], want[1]):
        if float(w.norm()) <= zero:
            assert float(g.norm()) <= zero
        else:
            assert _relative(g, w) < 1e-4
