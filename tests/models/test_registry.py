import pytest
import torch

import nommer_mm  # noqa: F401  (registers NomMer)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_nommer_builds_from_each_scope(scope):
    from mmengine.registry import DefaultScope, init_default_scope

    init_default_scope(scope)
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    elif scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    assert DefaultScope.get_current_instance().scope_name == scope
    model = MODELS.build(dict(type='NomMer', arch='tiny', out_indices=(3,)))
    assert type(model).__name__ == 'NomMer'
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 768, 2, 2)


def test_custom_imports_in_a_config(tmp_path):
    """The way users reach it: custom_imports in an mmdet config."""
    from mmengine.config import Config

    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(
        "custom_imports = dict(imports=['nommer_mm'], "
        'allow_failed_imports=False)\n'
        "default_scope = 'mmdet'\n"
        "model = dict(type='NomMer', arch='small', out_indices=(0, 1))\n"
    )
    cfg = Config.fromfile(str(cfg_file))
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert model.arch_settings['depths'] == [6, 6, 16, 4]


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
@pytest.mark.parametrize(
    'backbone',
    [
        dict(type='GCViT', arch='xxtiny'),
        dict(type='Visformer', arch='tiny'),
        dict(type='CoTNet', arch='cotnet50'),
    ],
    ids=lambda b: b['type'],
)
def test_peer_backbones_build_from_each_scope(scope, backbone):
    from mmengine.registry import init_default_scope
    import importlib

    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model = registry.build(dict(backbone, out_indices=(0, 3))).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (2, 2)]
