"""tools/deployment/pytorch2onnx.py: classifiers of the four families and
backbones of dense configs export, and onnxruntime gives PyTorch's
outputs (NomMer's nominations exactly)."""

import subprocess
import sys

import onnx
import pytest
import torch

from cls_helpers import ROOT, load_tool

TOOL = ROOT / 'tools/deployment/pytorch2onnx.py'


def _export(*args, cwd):
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_onnxruntime_gives_pytorch_logits_at_another_size(tmp_path):
    """The exported NomMer-T classifier (dynamic shape, traced at 224) run by
    onnxruntime here, against the PyTorch model whose checkpoint was
    exported, at another batch and size (its windows and DCT blocks padded,
    where 224 fills them). An input is used only where no nomination is a
    near tie (another kernel order may break those either way); the
    nominators' weights are scaled up so that near ties are rare."""
    import onnxruntime as ort
    from nommer_mm.launch import load_config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import nommer_mm  # noqa: F401
    from nommer_mm.analysis import nomination_margins

    config = ROOT / 'configs/cls/nommer-tiny_8xb128_in1k.py'
    init_default_scope('mmpretrain')
    cfg = load_config(str(config))
    cfg.model.backbone.pop('init_cfg', None)
    torch.manual_seed(1)
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():  # decisive nominations: same argmax, wider gaps
        for _, nominator in model.backbone.nominators():
            nominator.fc.weight.mul_(1000)
            nominator.fc.bias.mul_(1000)
    ckpt, out = tmp_path / 'model.pth', tmp_path / 'nommer.onnx'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    proc = _export(config, ckpt, '--out', out, '--dynamic-shape', cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['input']
    assert [o.name for o in session.get_outputs()] == ['logits']
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(2, 3, 160, 288, generator=generator)
        with torch.no_grad(), nomination_margins(model.backbone) as margins:
            expected = model(x, mode='tensor')
        if min(float(m.min()) for m in margins.values()) > 1e-4:
            break
    else:
        pytest.fail('near ties in every input drawn')
    (got,) = session.run(None, {'input': x.numpy()})
    got = torch.from_numpy(got)
    assert got.shape == expected.shape == (2, 1000)
    scale = float(expected.abs().max())
    assert scale > 0.1  # not a vanishing output
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, scale)
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.slow
def test_nommer_classifier_with_nominations(tmp_path):
    # (at 224: with random weights at 64x64 one position of two blocks is
    # a near tie, margin ~1e-5, which float rounding may flip)
    out = tmp_path / 'nommer.onnx'
    proc = _export(
        ROOT / 'configs/cls/nommer-tiny_8xb128_in1k.py',
        '--out',
        out,
        '--verify',
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert 'verify: OK' in proc.stdout
    assert 'verify (1, 3, 224, 224) logits: max |onnx - torch|' in proc.stdout
    nominations = [ln for ln in proc.stdout.splitlines() if 'nomination:stages.' in ln]
    assert len(nominations) == 4  # NomMer-T: 2 + 2 S-NomMer blocks
    assert all('0 positions differ' in ln for ln in nominations)
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ['logits']  # deploy file: pure


@pytest.mark.slow
@pytest.mark.parametrize(
    'config',
    [
        'configs/cls/gcvit-xxtiny_8xb128_in1k.py',
        'configs/cls/visformer-tiny_8xb128_in1k.py',
    ],
)
def test_peer_classifiers(config, tmp_path):
    proc = _export(
        ROOT / config, '--out', tmp_path / 'peer.onnx', '--verify', cwd=tmp_path
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert 'verify: OK' in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    'config,shape',
    [
        ('nommer-tiny_8xb128_in1k', ()),
        ('gcvit-xxtiny_8xb128_in1k', ('96',)),
        ('visformer-tiny_8xb128_in1k', ('96',)),
        ('cotnet-50_8xb128_in1k', ('96',)),
    ],
)
def test_dynamic_shape(config, shape, tmp_path):
    """Another batch and another height and width run in the exported graph
    and give PyTorch's logits (NomMer: and nominations). The second size
    pads windows and DCT blocks that the traced size fills exactly, so a
    trace that recorded the traced size's padding decision, or its window
    counts, fails here."""
    proc = _export(
        ROOT / f'configs/cls/{config}.py',
        '--out',
        tmp_path / 'm.onnx',
        '--dynamic-shape',
        '--verify',
        *(('--shape', *shape) if shape else ()),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    side = int(shape[0]) if shape else 224
    other = f'verify (2, 3, {side + 32}, {side - 32}) logits: max |onnx - torch|'
    assert other in proc.stdout
    if config.startswith('nommer'):
        at_other = [
            ln
            for ln in proc.stdout.splitlines()
            if ln.startswith(f'verify (2, 3, {side + 32}') and 'nomination:' in ln
        ]
        assert len(at_other) == 4, proc.stdout
    assert 'verify: OK' in proc.stdout


@pytest.mark.slow
def test_nominations_at_a_padded_size(tmp_path):
    """96x128 pads stage 0's windows (24x32 tokens, windows of 7). A trace
    once recorded the window count ceil(24/7) as ONNX's truncating division
    (3, not 4) and onnxruntime then nominated other contexts."""
    proc = _export(
        ROOT / 'configs/cls/nommer-tiny_8xb128_in1k.py',
        '--out',
        tmp_path / 'n.onnx',
        '--shape',
        '96',
        '128',
        '--verify',
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count('0 positions differ') == 4


def test_near_ties_draw_another_input_and_other_flips_fail(monkeypatch, capsys):
    """verify_at's rules on given comparisons: flips all at near ties draw
    another input; a flip that is not a near tie fails at once; near ties
    at every draw fail."""
    tool = load_tool('tools/deployment/pytorch2onnx.py')
    ok = {'logits': (1e-6, 2.0), 'nomination:stages.0.blocks.0': tool.Flips(0, 0)}
    tie = {'logits': (0.3, 2.0), 'nomination:stages.0.blocks.0': tool.Flips(2, 2)}
    real = {'logits': (0.3, 2.0), 'nomination:stages.0.blocks.0': tool.Flips(2, 1)}
    x = torch.zeros(1, 3, 8, 8)

    def run(*results):
        queue = list(results)
        monkeypatch.setattr(tool, 'compare', lambda *a: queue.pop(0))
        monkeypatch.setattr(tool, 'fp32_rounding', lambda *a: None)
        good = tool.verify_at(None, 'unused.onnx', x, [], 1e-4)
        return good, capsys.readouterr().out, len(queue)

    good, out, left = run(tie, ok)
    assert good and left == 0
    assert '2 nomination(s) at near ties' in out and 'drawing another input' in out
    assert 'nomination:stages.0.blocks.0: 0 positions differ' in out
    good, out, left = run(real, ok)
    assert not good and left == 1  # no second draw
    assert '2 positions differ (1 at near ties)  FAIL' in out
    good, out, left = run(*[tie] * tool.DRAWS)
    assert not good and left == 0
    assert f'near ties flipped in each of {tool.DRAWS} inputs  FAIL' in out


def test_beyond_atol_passes_only_within_fp32_rounding(monkeypatch, capsys):
    """An output beyond atol x scale passes when it is within ROUNDING times
    PyTorch fp32's own distance from fp64, fails beyond it or where fp64
    nominates otherwise; within atol the fp64 run is not made at all."""
    tool = load_tool('tools/deployment/pytorch2onnx.py')
    x = torch.zeros(1, 3, 8, 8)
    made = []

    def run(found, rounding):
        monkeypatch.setattr(tool, 'compare', lambda *a: found)
        monkeypatch.setattr(
            tool, 'fp32_rounding', lambda *a: made.append(1) or rounding
        )
        good = tool.verify_at(None, 'unused.onnx', x, ['logits'], 1e-4)
        return good, capsys.readouterr().out

    far = {'logits': (0.3, 500.0)}  # atol bound: 0.05
    good, out = run(far, {'logits': 0.05})
    assert good and f'within {tool.ROUNDING} x that' in out
    assert 'PyTorch fp32 is itself 0.05 from fp64' in out and 'FAIL' not in out
    good, out = run(far, {'logits': 0.3 / tool.ROUNDING / 2})
    assert not good and f'beyond {tool.ROUNDING} x that  FAIL' in out
    good, out = run(far, None)
    assert not good and 'fp64 nominates otherwise here' in out and 'FAIL' in out
    assert len(made) == 3
    good, out = run({'logits': (0.04, 500.0)}, {'logits': 0.0})
    assert good and len(made) == 3 and 'fp64' not in out


class _Cancels(torch.nn.Module):
    """Logits, and a nomination that fp32 rounding flips: (1 + 1e8) - 1e8 is
    0 in fp32 (its spacing at 1e8 is 8) and 1 in fp64."""

    def forward(self, x):
        lost = (x.mean() + 1e8) - 1e8
        choice = torch.stack([lost, torch.tensor(0.5, dtype=x.dtype)]).argmax()
        return x.sum(dim=(1, 2, 3)) * 1e3, choice.reshape(1)


def test_fp32_rounding_measures_fp32_against_fp64():
    tool = load_tool('tools/deployment/pytorch2onnx.py')
    x = torch.rand(1, 3, 16, 16) / 4  # mean < 0.5: both choose 0.5
    found = tool.fp32_rounding(_Cancels(), x * 0, ['logits', 'nomination:toy'])
    assert found == {'logits': 0.0}  # zeros sum exactly; both choose 0.5
    found = tool.fp32_rounding(_Cancels(), x, ['logits', 'nomination:toy'])
    scale = 1e3 * float(x.sum())  # 768 terms summed in fp32
    assert found is not None and 0 < found['logits'] < 1e-6 * scale
    x = torch.ones(1, 3, 16, 16)  # mean 1: fp32 and fp64 choose otherwise
    assert tool.fp32_rounding(_Cancels(), x, ['logits', 'nomination:toy']) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    'backbone,shape', [('nommer-t', ('224',)), ('cotnet-50', ('96', '128'))]
)
def test_backbone_of_a_detector(backbone, shape, tmp_path):
    """The four feature maps, with a dynamic height and width (NomMer-T:
    then also at 256x192, as a detector's inputs vary)."""
    config = ROOT / 'configs/det' / f'cascade-mask-rcnn_{backbone}_fpn_ms-3x_coco.py'
    proc = _export(
        config,
        '--out',
        tmp_path / 'bb.onnx',
        '--backbone-only',
        '--shape',
        *shape,
        '--verify',
        *(('--dynamic-shape',) if backbone == 'nommer-t' else ()),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "outputs ['feat0', 'feat1', 'feat2', 'feat3']" in proc.stdout
    if backbone == 'nommer-t':
        assert 'verify (2, 3, 256, 192) feat3: max |onnx - torch|' in proc.stdout
    assert 'verify: OK' in proc.stdout


@pytest.mark.slow
def test_no_whole_detector(tmp_path):
    config = ROOT / 'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
    proc = _export(config, '--out', tmp_path / 'det.onnx', cwd=tmp_path)
    assert proc.returncode != 0 and '--backbone-only' in proc.stderr
