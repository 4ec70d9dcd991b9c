"""The backbones as drop-ins for stock OpenMMLab configs: the deprecated
``pretrained=``, converter commands that write what the configs read, and
a missing pretrained file that says how to make it."""

import warnings

import pytest

from cls_helpers import ROOT, readme_converter_outputs
from nommer_mm import CoTNet, GCViT, NomMer, Visformer


@pytest.mark.parametrize(
    'cls', [NomMer, GCViT, Visformer, CoTNet], ids=lambda c: c.__name__
)
def test_pretrained_argument_maps_to_init_cfg(cls, tmp_path):
    with pytest.warns(DeprecationWarning, match='pretrained is deprecated'):
        model = cls(pretrained='some/ckpt.pth')
    assert model.init_cfg == dict(type='Pretrained', checkpoint='some/ckpt.pth')
    with pytest.raises(ValueError, match='init_cfg and pretrained'):
        cls(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth'))


def test_mmseg_model_pretrained_reaches_the_backbone(tmp_path):
    """An mmseg base config's ``model.pretrained`` with only the backbone
    swapped (before: unexpected keyword argument 'pretrained')."""
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        seg = MODELS.build(
            ConfigDict(  # as a config file gives it
                type='EncoderDecoder',
                pretrained='ckpt.pth',
                backbone=dict(type='NomMer', arch='tiny'),
                decode_head=dict(
                    type='FCNHead',
                    in_channels=768,
                    channels=8,
                    in_index=3,
                    num_convs=1,
                    num_classes=2,
                ),
            )
        )
    assert seg.backbone.init_cfg == dict(type='Pretrained', checkpoint='ckpt.pth')


@pytest.mark.parametrize(
    'cls,command',
    [
        (NomMer, 'nommer2mm.py'),
        (GCViT, 'peer2mm.py gcvit'),
        (Visformer, 'peer2mm.py visformer'),
        (CoTNet, 'peer2mm.py cotnet'),
    ],
    ids=lambda c: getattr(c, '__name__', ''),
)
def test_missing_pretrained_file_gives_the_converter_command(cls, command):
    path = 'checkpoints/not-converted-yet.pth'
    model = cls(init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    assert (
        f'python tools/model_converters/{command} <reference '
        f'checkpoint> {path}' in str(err.value)
    )


def _config_checkpoints() -> dict:
    """checkpoint / load_from paths of every config."""
    from cls_helpers import cached_config

    found = {}

    def walk(node, cfg):
        if isinstance(node, dict):
            for key, value in node.items():
                if (
                    key in ('checkpoint', 'load_from')
                    and isinstance(value, str)
                    and value.startswith('checkpoints/')
                ):
                    found.setdefault(value, []).append(cfg)
                walk(value, cfg)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value, cfg)

    for path in sorted((ROOT / 'configs').rglob('*.py')):
        if '_base_' not in path.parts:
            walk(cached_config(path).to_dict(), path.name)
    return found


def test_readme_converter_commands_write_what_the_configs_read():
    written = readme_converter_outputs()
    read = _config_checkpoints()
    assert read, 'no config reads a checkpoint?'
    missing = {p: cfgs for p, cfgs in read.items() if p not in written}
    assert not missing, missing
