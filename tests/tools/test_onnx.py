"""tools/deployment/pytorch2onnx.py: classifiers of the four families and
backbones of dense configs export, and onnxruntime gives PyTorch's
outputs (NomMer's nominations exactly)."""

import subprocess
import sys

import onnx
import pytest

from cls_helpers import ROOT

TOOL = ROOT / 'tools/deployment/pytorch2onnx.py'


def _export(*args, cwd):
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


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


def test_dynamic_shape_where_the_model_allows_it(tmp_path):
    """CoTNet (convolutions only) runs at another batch and size; NomMer's
    window partition is fixed in the trace, which verify reports."""
    proc = _export(
        ROOT / 'configs/cls/cotnet-50_8xb128_in1k.py',
        '--out',
        tmp_path / 'cot.onnx',
        '--dynamic-shape',
        '--verify',
        '--shape',
        '96',
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert 'verify (2, 3, 128, 64) logits' in proc.stdout
    proc = _export(
        ROOT / 'configs/cls/nommer-tiny_8xb128_in1k.py',
        '--out',
        tmp_path / 'n.onnx',
        '--dynamic-shape',
        '--verify',
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert 'verify (2, 3, 224, 224) logits' in proc.stdout  # batch works
    assert 'does not run at this shape' in proc.stdout  # 96x32 does not


@pytest.mark.parametrize(
    'backbone,shape', [('nommer-t', ('224',)), ('cotnet-50', ('96', '128'))]
)
def test_backbone_of_a_detector(backbone, shape, tmp_path):
    config = ROOT / 'configs/det' / f'cascade-mask-rcnn_{backbone}_fpn_ms-3x_coco.py'
    proc = _export(
        config,
        '--out',
        tmp_path / 'bb.onnx',
        '--backbone-only',
        '--shape',
        *shape,
        '--verify',
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "outputs ['feat0', 'feat1', 'feat2', 'feat3']" in proc.stdout
    assert 'verify: OK' in proc.stdout


def test_no_whole_detector(tmp_path):
    config = ROOT / 'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
    proc = _export(config, '--out', tmp_path / 'det.onnx', cwd=tmp_path)
    assert proc.returncode != 0 and '--backbone-only' in proc.stderr
