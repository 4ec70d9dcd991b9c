import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nommer_mm.converters import ConversionError, convert_reference
from reference_layout import ReferenceLayoutNomMer, randomize_

ROOT = Path(__file__).resolve().parents[2]
CONVERTER = ROOT / 'tools' / 'model_converters' / 'nommer2mm.py'

CUSTOM = dict(
    embed_dims=48, depths=[1, 2, 2, 1], num_heads=[3, 2, 6, 4], bottleneck_ratios=[3, 2]
)


@pytest.fixture
def float64():
    """Compare in float64: the nominator's argmax is discontinuous, so in
    float32 rounding alone can flip near-tied positions of random weights."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def build_classifier(info: dict, num_classes: int):
    from mmengine.registry import init_default_scope
    from mmpretrain.models import ImageClassifier

    init_default_scope('mmpretrain')  # earlier tests may leave another
    C = info['arch']['embed_dims']
    return ImageClassifier(
        backbone=dict(type='NomMer', out_type='cls_token', out_indices=(3,), **info),
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=8 * C),
    ).eval()


@pytest.mark.parametrize(
    'arch,num_classes',
    [pytest.param('tiny', 1000, marks=pytest.mark.slow), ('custom', 7)],
)
def test_converted_logits_equal_reference(float64, arch, num_classes):
    torch.manual_seed(0)
    kwargs = {} if arch == 'tiny' else dict(CUSTOM)
    ref = randomize_(ReferenceLayoutNomMer(num_classes=num_classes, **kwargs))
    ref.eval()
    state, info = convert_reference(
        {'model': ref.state_dict()}, arch=None if arch == 'tiny' else CUSTOM
    )
    model = build_classifier(info, num_classes)
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = ref(x)
        got = model(x, mode='tensor')
    assert expected.abs().max() > 1  # not a trivially small output
    # float64: only rounding separates the two programs
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()


def _small_reference(seed: int) -> dict:
    ref = ReferenceLayoutNomMer(
        embed_dims=32,
        depths=(1, 1, 1, 1),
        num_heads=(2, 2, 2, 2),
        bottleneck_ratios=(2, 2),
        num_classes=5,
    )
    return randomize_(ref, seed=seed).state_dict()


def test_checkpoint_wrappers_are_accepted():
    """The EMA weights of a checkpoint that holds two sets (``model`` and
    ``state_dict_ema``, DDP's ``module.`` prefix) are the ones converted,
    tensor for tensor."""
    sd, other = _small_reference(0), _small_reference(1)
    arch = dict(
        embed_dims=32,
        depths=[1, 1, 1, 1],
        num_heads=[2, 2, 2, 2],
        bottleneck_ratios=[2, 2],
    )
    plain, _ = convert_reference(sd, arch=arch)
    from_model, _ = convert_reference({'model': other}, arch=arch)
    ema = {
        'model': other,
        'state_dict_ema': {f'module.{k}': v for k, v in sd.items()},
    }
    from_ema, _ = convert_reference(ema, arch=arch, use_ema=True)
    assert plain.keys() == from_ema.keys()
    for key in plain:
        assert torch.equal(from_ema[key], plain[key]), key
    # the two sets differ, so taking ``model`` would have been seen
    assert any(not torch.equal(from_model[k], plain[k]) for k in plain)
    with pytest.raises(ConversionError, match='state_dict_ema'):
        convert_reference({'model': sd}, arch=arch, use_ema=True)


def test_errors_name_the_problem():
    ref = ReferenceLayoutNomMer(
        embed_dims=32,
        depths=(1, 1, 1, 1),
        num_heads=(2, 2, 2, 2),
        bottleneck_ratios=(2, 2),
        num_classes=5,
    )
    sd = ref.state_dict()
    # a non-zoo arch needs its stage 2-3 heads spelled out
    with pytest.raises(ConversionError, match='no zoo arch'):
        convert_reference(sd)
    arch = dict(
        embed_dims=32,
        depths=[1, 1, 1, 1],
        num_heads=[2, 2, 2, 2],
        bottleneck_ratios=[2, 2],
    )
    with pytest.raises(ConversionError, match='depths'):
        convert_reference(sd, arch=dict(arch, depths=[1, 1, 2, 1]))
    bad = dict(sd)
    bad['transformer1.layers.0.0.fn.mystery.weight'] = torch.zeros(1)
    with pytest.raises(ConversionError, match='mystery'):
        convert_reference(bad, arch=arch)
    bad = dict(sd)
    key = 'transformer2.layers.0.0.fn.attentionG.dct_conv_8x8.weight'
    bad[key] = bad[key].flip(-1)
    with pytest.raises(ConversionError, match='analytic'):
        convert_reference(bad, arch=arch)


@pytest.mark.slow
def test_cli_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = randomize_(ReferenceLayoutNomMer(num_classes=10)).eval()
    src = tmp_path / 'ref.pth'
    torch.save({'model': ref.state_dict(), 'epoch': 299}, src)
    dst = tmp_path / 'cls.pth'
    subprocess.run(
        [sys.executable, str(CONVERTER), str(src), str(dst)],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    ckpt = torch.load(dst, weights_only=True)
    info = {
        k: v
        for k, v in ckpt['meta']['backbone'].items()
        if k not in ('type', 'out_type', 'out_indices')
    }
    model = build_classifier(info, ckpt['meta']['num_classes'])
    model.load_state_dict(ckpt['state_dict'], strict=True)

    bb = tmp_path / 'backbone.pth'
    subprocess.run(
        [sys.executable, str(CONVERTER), str(src), str(bb), '--backbone-only'],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    from nommer_mm import NomMer

    dense = NomMer(**info, init_cfg=dict(type='Pretrained', checkpoint=str(bb)))
    dense.init_weights()
    state = torch.load(bb, weights_only=True)['state_dict']
    assert not any(k.startswith(('backbone.', 'head.')) for k in state)
    assert torch.equal(dense.stem.conv.weight, state['stem.conv.weight'])


@pytest.mark.slow
def test_cli_reports_conversion_errors(tmp_path):
    src = tmp_path / 'broken.pth'
    torch.save({'model': {'something.else': torch.zeros(1)}}, src)
    proc = subprocess.run(
        [sys.executable, str(CONVERTER), str(src), str(tmp_path / 'out.pth')],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert 'cnn1.weight' in proc.stderr


MISSING = pytest.mark.parametrize(
    'drop,named',
    [
        (
            'transformer3.layers.1.1.fn.net.3.bias',
            'transformer3.layers.1.1.fn.net.3.bias',
        ),
        (
            'transformer1.layers.0.0.fn.cnn.bn2.running_var',
            'transformer1.layers.0.0.fn.cnn.bn2.running_var',
        ),
        ('pos_embedding', 'pos_embedding'),
        ('mlp_head.1.weight', 'mlp_head.1.weight'),
    ],
)


@MISSING
def test_incomplete_checkpoint_fails_naming_the_tensor(drop, named):
    """One missing reference tensor: the error names it."""
    sd = ReferenceLayoutNomMer(num_classes=10).state_dict()
    del sd[drop]
    with pytest.raises(ConversionError, match=named.replace('.', r'\.')):
        convert_reference(sd)


@pytest.mark.slow
@MISSING
def test_cli_writes_no_file_of_an_incomplete_checkpoint(drop, named, tmp_path):
    """One missing reference tensor: the converter exits non-zero naming it,
    without a traceback, and writes no file."""
    sd = ReferenceLayoutNomMer(num_classes=10).state_dict()
    del sd[drop]
    src, dst = tmp_path / 'ref.pth', tmp_path / 'out.pth'
    torch.save({'model': sd}, src)
    proc = subprocess.run(
        [sys.executable, str(CONVERTER), str(src), str(dst)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and named in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and not dst.exists()


def test_backbone_only_needs_no_head():
    sd = ReferenceLayoutNomMer(num_classes=10).state_dict()
    del sd['mlp_head.1.weight'], sd['mlp_head.1.bias']
    out, _ = convert_reference(sd, backbone_only=True)
    assert 'pos_embed' in out and not any(k.startswith('head') for k in out)
