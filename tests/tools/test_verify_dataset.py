"""tools/misc/verify_dataset.py names every broken file of the cls, det and
seg layouts (a zero-byte image otherwise stops training with an OpenCV
error that names no file)."""

import json
import subprocess
import sys

import cv2
import pytest

from cls_helpers import CASCADE_T, ROOT, UPERNET_T, write_config
from demo_configs import small_det_config, small_seg_config
from demo_data import make_ade_layout, make_coco_layout, make_imagenet_layout

pytestmark = pytest.mark.slow  # runs the tool in a process of its own

TOOL = ROOT / 'tools/misc/verify_dataset.py'


def _run(cfg, cwd):
    return subprocess.run(
        [sys.executable, str(TOOL), str(cfg), '--workers', '2'],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_classification_layout(tmp_path):
    root = make_imagenet_layout(tmp_path / 'data', {'train': 4, 'val': 2}, size=32)
    cfg = write_config(tmp_path / 'cfg.py', root, iters=2)
    ok = _run(cfg, tmp_path)
    assert ok.returncode == 0 and 'dataset OK' in ok.stdout, ok.stdout[-2000:]
    images = sorted((root / 'train').rglob('*.*'))
    images[0].write_bytes(b'')
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) // 2])
    bad = _run(cfg, tmp_path)
    out = bad.stdout
    assert bad.returncode == 1, out[-2000:]
    assert f'{images[0]}: zero bytes' in out
    assert f'{images[1]}: truncated' in out or f'{images[1]}: unreadable' in out
    assert '2 problems found' in out


def test_detection_layout(tmp_path):
    root = make_coco_layout(tmp_path / 'coco', {'train': 3, 'val': 2})
    ann = root / 'annotations/instances_train.json'
    coco = json.loads(ann.read_text())
    image = coco['images'][0]
    box = next(a for a in coco['annotations'] if a['image_id'] == image['id'])
    box['bbox'] = [image['width'] - 5, 2.0, 40.0, 10.0]  # past the right edge
    ann.write_text(json.dumps(coco))
    (root / 'val' / coco_val_name(root)).unlink()
    cfg = small_det_config(root, tmp_path / 'det.py', CASCADE_T)
    proc = _run(cfg, tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, (out + proc.stderr)[-3000:]
    assert f'{image["file_name"]}: box' in out and 'lies outside' in out
    assert f'{coco_val_name(root)}: missing' in out


def coco_val_name(root):
    return json.loads((root / 'annotations/instances_val.json').read_text())['images'][
        0
    ]['file_name']


def test_segmentation_layout(tmp_path):
    """ADE20K layout: a label map of the wrong size, a zero-byte one, a
    truncated one and a missing one are each named; their images are fine."""
    root = make_ade_layout(tmp_path / 'ade', {'training': 4, 'validation': 2})
    cfg = small_seg_config(root, tmp_path / 'seg.py', UPERNET_T)
    ok = _run(cfg, tmp_path)
    assert ok.returncode == 0 and 'dataset OK' in ok.stdout, ok.stdout[-2000:]
    labels = sorted((root / 'annotations' / 'training').glob('*.png'))
    small = cv2.imread(str(labels[0]), cv2.IMREAD_UNCHANGED)[:-8]
    cv2.imwrite(str(labels[0]), small)  # 8 rows short of its image
    labels[1].write_bytes(b'')
    data = labels[2].read_bytes()
    labels[2].write_bytes(data[: len(data) // 2])
    missing = root / 'annotations' / 'validation' / '00001.png'
    missing.unlink()
    proc = _run(cfg, tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, (out + proc.stderr)[-3000:]
    height, width = small.shape
    assert f'{labels[0]}: label map {width}x{height}, image {width}x{height + 8}' in out
    assert f'{labels[1]}: label map zero bytes' in out
    assert (
        f'{labels[2]}: label map truncated' in out
        or f'{labels[2]}: label map unreadable' in out
    ), out
    assert f'{missing}: label map missing' in out
    assert '4 problems found' in out
    assert '.jpg:' not in out  # no image is blamed
