"""``with_cp`` changes memory, not training: one training step with
activation checkpointing gives the outputs, gradients and BatchNorm
statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) of
the same step without it, although every block runs twice."""

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

from small_archs import SMALL

from nommer_mm import CoTNet, GCViT, NomMer, Visformer

# The backbones with BatchNorm, also built with SyncBN (on one CPU process
# it normalizes as BatchNorm does; the statistics it keeps are the same).
SYNCBN = [NomMer, Visformer, CoTNet]


def _step(model: torch.nn.Module, x: torch.Tensor) -> tuple:
    """Outputs, parameter gradients and the number of module calls in
    backward (recomputation) of one training step, with the random draws
    (Gumbel noise, drop path) and the loss's random weights seeded."""
    torch.manual_seed(1)
    outs = model(x)
    weigh = torch.Generator().manual_seed(2)
    loss = sum(
        (o * torch.randn(o.shape, generator=weigh, dtype=o.dtype)).sum() for o in outs
    )
    calls = []
    counting = register_module_forward_hook(lambda *args: calls.append(1))
    try:
        loss.backward()
    finally:
        counting.remove()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return [o.detach() for o in outs], grads, len(calls)


@pytest.mark.parametrize(
    'backbone, norm_cfg',
    [(b, None) for b in (NomMer, GCViT, Visformer, CoTNet)]
    + [(b, dict(type='SyncBN')) for b in SYNCBN],
    ids=lambda v: (
        v.__name__ if isinstance(v, type) else (v or {}).get('type', 'default')
    ),
)
def test_with_cp_step_equals_plain_step(backbone, norm_cfg):
    kwargs = dict(SMALL[backbone], drop_path_rate=0.1, out_indices=(0, 1, 2, 3))
    if norm_cfg is not None:
        kwargs['norm_cfg'] = norm_cfg
    torch.manual_seed(0)
    plain = backbone(**kwargs).double().train()
    torch.manual_seed(0)
    ckpt = backbone(**kwargs, with_cp=True).double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)

    outs, grads, recomputed = _step(plain, x)
    cp_outs, cp_grads, cp_recomputed = _step(ckpt, x)
    assert recomputed == 0 and cp_recomputed > 0

    for o, cp_o in zip(outs, cp_outs, strict=True):
        torch.testing.assert_close(cp_o, o, rtol=1e-12, atol=1e-12)
    assert cp_grads.keys() == grads.keys()
    for name, g in grads.items():
        if g is None:  # unused, e.g. GC ViT's query of a one-block level
            assert cp_grads[name] is None, name
            continue
        torch.testing.assert_close(
            cp_grads[name], g, rtol=1e-10, atol=1e-12, msg=lambda m: f'{name}: {m}'
        )
    stats = plain.state_dict()
    cp_stats = ckpt.state_dict()
    tracked = [k for k in stats if k.endswith('num_batches_tracked')]
    assert (len(tracked) > 0) == (backbone is not GCViT)
    assert all(int(stats[k]) == 1 for k in tracked)
    updates = {k: int(cp_stats[k]) for k in tracked if int(cp_stats[k]) != 1}
    assert not updates, f'BatchNorm statistics updated more than once: {updates}'
    for key, value in stats.items():
        torch.testing.assert_close(
            cp_stats[key], value, rtol=0, atol=0, msg=lambda m: f'{key}: {m}'
        )
