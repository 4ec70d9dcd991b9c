"""torch.compile sees each backbone as one graph: no graph breaks in eval
or training mode (TorchDynamo's trace only; no code is generated)."""

import pytest
import torch

from small_archs import SMALL


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('backbone', list(SMALL), ids=lambda c: c.__name__)
def test_no_graph_breaks(backbone, training):
    import torch._dynamo as dynamo

    model = backbone(**SMALL[backbone], drop_path_rate=0.1).train(training)
    dynamo.reset()
    # odd size: padding branches are traced too
    explained = dynamo.explain(model)(torch.randn(2, 3, 70, 90))
    reasons = [r.reason for r in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1
