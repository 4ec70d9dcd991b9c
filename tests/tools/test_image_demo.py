"""tools/image_demo.py on a real photograph (matplotlib's sample of Grace
Hopper) for the three tasks, through the codebases' own inferencers."""

import subprocess
import sys

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from cls_helpers import CASCADE_T, DEMO, ROOT, UPERNET_T, save_random_weights
from demo_configs import small_det_config, small_seg_config

PHOTO = matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)
CLASSES = ['stripes', 'dots', 'checks', 'noise']


def _demo(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / 'tools/image_demo.py'), PHOTO, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.slow
def test_classification_prints_the_top_classes(tmp_path):
    ckpt = save_random_weights(
        DEMO, 'mmpretrain', tmp_path / 'cls.pth', {'dataset_meta': {'classes': CLASSES}}
    )
    proc = _demo(DEMO, '--weights', ckpt, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [
        ln.split()
        for ln in proc.stdout.splitlines()
        if ln.strip()[:2] in ('1.', '2.', '3.', '4.')
    ]
    assert [ln[0] for ln in lines] == ['1.', '2.', '3.', '4.']
    assert sorted(ln[1] for ln in lines) == sorted(CLASSES)
    scores = [float(ln[2]) for ln in lines]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-3)  # softmax over 4


@pytest.mark.slow
@pytest.mark.parametrize('task', ['det', 'seg'])
def test_dense_tasks_draw_a_png(task, tmp_path):
    make = small_det_config if task == 'det' else small_seg_config
    base = CASCADE_T if task == 'det' else UPERNET_T
    cfg = make(tmp_path / 'data', tmp_path / f'{task}.py', base)
    scope = 'mmdet' if task == 'det' else 'mmseg'
    ckpt = save_random_weights(cfg, scope, tmp_path / f'{task}.pth', {})
    out = tmp_path / 'out'
    proc = _demo(
        cfg, '--weights', ckpt, '--out-dir', out, '--score-thr', '0.0', cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = out / 'grace_hopper.png'
    assert f'wrote {png}' in proc.stdout
    drawn = np.asarray(Image.open(png).convert('RGB'))
    photo = np.asarray(Image.open(PHOTO).convert('RGB'))
    assert drawn.shape == photo.shape
    assert np.abs(drawn.astype(int) - photo).mean() > 1  # something drawn
    if task == 'det':
        assert 'detections >= 0.0' in proc.stdout
    else:
        assert 'classes present:' in proc.stdout


@pytest.mark.slow
def test_without_weights_it_says_so(tmp_path):
    proc = _demo(DEMO, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'initial (random) weights' in proc.stderr


def test_demo_progress_lines():
    """tools/demo.py prints training progress as it comes: iteration,
    loss, lr and ETA from mmengine's log lines, and the evaluation
    metrics."""
    from cls_helpers import load_tool

    demo = load_tool('tools/demo.py')
    log = (
        '11/29 10:19:58 - mmengine - INFO - Iter(train) [ 25/300]  '
        'base_lr: 2.0000e-04 lr: 1.9000e-04  eta: 0:01:02  time: 0.2176'
        '  data_time: 0.0090  memory: 0  loss: 1.3812'
    )
    assert (
        demo.progress_line(log)
        == '  Iter(train) [ 25/300]  loss 1.3812  lr 1.9000e-04  eta 0:01:02'
    )
    val = (
        '11/29 10:20:58 - mmengine - INFO - Iter(val) [13/13]    '
        'accuracy/top1: 45.0000  data_time: 0.0100  time: 0.1000'
    )
    assert demo.progress_line(val) == '  Iter(val) [13/13]  accuracy/top1 45.0000'
    assert demo.progress_line('Loads checkpoint by local backend') is None
