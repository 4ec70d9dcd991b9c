"""torch.compile sees each backbone as one graph: no graph breaks in eval
or training mode (TorchDynamo's trace only; no code is generated)."""

import pytest
import torch

from nommer_mm import CoTNet, GCViT, NomMer, Visformer

SMALL = {
    'NomMer': lambda: NomMer(
        arch=dict(
            embed_dims=32,
            depths=[1, 1, 1, 1],
            num_heads=[2, 2, 2, 4],
            bottleneck_ratios=[2, 2],
        ),
        drop_path_rate=0.1,
    ),
    'GCViT': lambda: GCViT(
        arch=dict(
            embed_dims=16,
            depths=[2, 2, 2, 2],
            num_heads=[1, 2, 2, 4],
            mlp_ratio=2,
            layer_scale=1e-5,
        ),
        drop_path_rate=0.1,
    ),
    'Visformer': lambda: Visformer(
        arch=dict(stem_channels=8, embed_dims=32, depths=[1, 1, 1], num_heads=2),
        drop_path_rate=0.1,
    ),
    'CoTNet': lambda: CoTNet(
        arch=dict(
            depths=[1, 1, 1, 1],
            cardinality=1,
            base_width=64,
            stem='resnet',
            stem_width=64,
            avg_down=False,
            se_blocks=[[], [], [], []],
        ),
        drop_path_rate=0.1,
    ),
}


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('name', list(SMALL))
def test_no_graph_breaks(name, training):
    import torch._dynamo as dynamo

    model = SMALL[name]().train(training)
    dynamo.reset()
    # odd size: padding branches are traced too
    explained = dynamo.explain(model)(torch.randn(2, 3, 70, 90))
    reasons = [r.reason for r in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1
