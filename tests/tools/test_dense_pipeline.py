"""Detection and segmentation end to end on generated COCO / ADE20K data:
2-process gloo training through tools/dist_train.sh, evaluation through
tools/dist_test.sh with mmdet's CocoMetric and mmseg's IoUMetric. The
evaluation runs an oracle model (tests/kill_hook.py: the ground truth on
even-numbered images, a fixed wrong answer on the others), whose metrics
the tests recompute from the annotation files."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cls_helpers import (
    CASCADE_T,
    ROOT,
    UPERNET_T,
    check_curves,
    failure_report,
    run_tool,
    world_size,
)
from demo_configs import small_det_config, small_seg_config
from demo_data import make_ade_layout, make_coco_layout

pytestmark = pytest.mark.slow  # torchrun pipelines, full-size detectors


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    return make_coco_layout(tmp_path_factory.mktemp('coco'), {'train': 4, 'val': 4})


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return make_ade_layout(
        tmp_path_factory.mktemp('ade'), {'training': 4, 'validation': 2}
    )


def _train_and_test(cfg, tmp_path, num_images, oracle):
    """2-process training, then 2-process testing of ``num_images`` held-out
    images with the ``oracle`` model type on the trained checkpoint, checked
    against a 1-process test.py run: every image evaluated exactly once, the
    same metrics."""
    work = tmp_path / 'work'
    train = run_tool(
        [ROOT / 'tools/dist_train.sh', cfg, 2, '--work-dir', work],
        cwd=tmp_path,
    )
    log = train.stdout + train.stderr
    assert train.returncode == 0, failure_report(train)
    assert 'Iter(train) [2/2]' in log
    ckpt = work / 'iter_2.pth'
    args = ['--cfg-options', f'test_dataloader.dataset.indices={num_images}']
    tested = oracle_config(cfg, oracle)
    out, dump = tmp_path / 'metrics.json', tmp_path / 'predictions.pkl'
    test = run_tool(
        [ROOT / 'tools/dist_test.sh', tested, ckpt, 2, '--work-dir', work]
        + ['--out', out, '--dump', dump, *args],
        cwd=tmp_path,
    )
    assert test.returncode == 0, failure_report(test)
    assert world_size(test.stdout + test.stderr) == 2
    metrics = json.loads(out.read_text())
    images = _evaluated_images(dump)
    assert len(images) == len(set(images)) == num_images, images

    out1, dump1 = tmp_path / 'metrics1.json', tmp_path / 'predictions1.pkl'
    single = run_tool(
        [ROOT / 'tools/test.py', tested, ckpt, '--work-dir', tmp_path / 'single']
        + ['--out', out1, '--dump', dump1, *args],
        cwd=tmp_path,
    )
    assert single.returncode == 0, failure_report(single)
    assert sorted(_evaluated_images(dump1)) == sorted(images)
    assert json.loads(out1.read_text()) == pytest.approx(metrics, abs=1e-6)
    return metrics, images, test.stdout + test.stderr


def oracle_config(cfg: Path, oracle: str) -> Path:
    """``cfg`` with its model type replaced by ``oracle`` (a subclass with
    the same weights, tests/kill_hook.py)."""
    path = cfg.with_name(f'{cfg.stem}_oracle.py')
    path.write_text(
        f'_base_ = {str(cfg)!r}\n'
        "custom_imports = dict(imports=['nommer_mm', 'nommer_mm.models.det_tta', "
        "'kill_hook'], "
        'allow_failed_imports=False)\n'
        f'model = dict(type={oracle!r})\n'
    )
    return path


def _evaluated_images(path) -> list:
    """The image of every sample in a --dump file (our own test output, so
    unpickling it is safe)."""
    import pickle

    with open(path, 'rb') as f:
        return [s['img_path'] for s in pickle.load(f)]


def _expected_coco_map(coco: Path, images: list) -> float:
    """COCO mAP of the oracle detector run on ``images``, from the
    annotation file: every ground-truth box and mask of the answered images
    at score 1, nothing on the others. CocoMetric scores against every image
    of the file, so objects of images not run count as missed. Without
    false positives the precision is 1 up to each category's recall r =
    answered / all of its objects, so its AP is the share of COCO's 101
    recall thresholds <= r (0 when none of its objects is answered), the
    same at every IoU threshold."""
    from kill_hook import answers

    ann = json.loads((coco / 'annotations/instances_val.json').read_text())
    ids = {im['id']: im['file_name'] for im in ann['images']}
    names = {Path(p).name for p in images}
    total, answered = {}, {}
    for box in ann['annotations']:
        name, cat = ids[box['image_id']], box['category_id']
        total[cat] = total.get(cat, 0) + 1
        hit = name in names and answers(name)
        answered[cat] = answered.get(cat, 0) + hit
    thresholds = np.linspace(0.0, 1.0, 101)
    aps = [
        (thresholds <= answered[c] / total[c]).sum() / 101 if answered[c] else 0.0
        for c in total
    ]
    return float(np.mean(aps))


def _expected_miou(ade: Path, images: list) -> float:
    """mIoU (%) of the oracle segmentor on ``images``, from the label maps:
    the truth on answered images, class 0 everywhere on the others; 0
    (background) is ignored and the shapes 1..4 become classes 0..3
    (reduce_zero_label); intersections and unions summed over the images,
    classes absent from both left out of the mean."""
    from kill_hook import answers

    inter, union = np.zeros(4), np.zeros(4)
    for path in images:
        name = Path(path).with_suffix('.png').name
        raw = cv2.imread(str(ade / 'annotations/validation' / name), 0)
        truth = raw[raw > 0].astype(int) - 1
        pred = truth if answers(path) else np.zeros_like(truth)
        for c in range(4):
            inter[c] += ((truth == c) & (pred == c)).sum()
            union[c] += ((truth == c) | (pred == c)).sum()
    with np.errstate(invalid='ignore'):
        return float(np.nanmean(inter / union) * 100)


def test_cascade_mask_rcnn_distributed(coco, tmp_path):
    cfg = small_det_config(coco, tmp_path / 'det.py', CASCADE_T)
    # 3 of 4 images over 2 ranks: the sampler pads one rank with a repeat
    metrics, images, log = _train_and_test(
        cfg, tmp_path, num_images=3, oracle='OracleCascadeRCNN'
    )
    check_curves(tmp_path / 'work', ['loss', 'coco/bbox_mAP'], tmp_path / 'curves.png')
    expected = _expected_coco_map(coco, images)
    assert 0.1 < expected < 0.9  # answered and missed objects both count
    # CocoMetric reports 3 decimals
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP'):
        assert metrics[key] == pytest.approx(expected, abs=5e-4), (key, metrics)
    assert 'Average Precision' in log  # pycocotools' summary was printed
    # multi-scale + flip: every view answers the truth as seen in that view,
    # so the merged boxes and masks, flipped back, score as without TTA
    tta = _test_once(oracle_config(cfg, 'OracleCascadeRCNN'), tmp_path, '--tta')
    tta = {k: v for k, v in tta.items() if k in metrics}
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP'):
        assert tta[key] == pytest.approx(expected, abs=5e-4), (key, tta)
    _draws_predictions(cfg, tmp_path, coco / 'val' / '00000.png')


def _test_once(cfg, tmp_path, *extra) -> dict:
    """tools/test.py on the 3 held-out images of the trained checkpoint."""
    out = tmp_path / 'once.json'
    proc = run_tool(
        [ROOT / 'tools/test.py', cfg, tmp_path / 'work' / 'iter_2.pth', *extra]
        + ['--out', out, '--work-dir', tmp_path / 'once']
        + ['--cfg-options', 'test_dataloader.dataset.indices=3'],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, failure_report(proc)
    return json.loads(out.read_text())


def test_upernet_distributed_single_and_multiscale(ade, tmp_path):
    cfg = small_seg_config(ade, tmp_path / 'seg.py', UPERNET_T)
    metrics, images, log = _train_and_test(
        cfg, tmp_path, num_images=2, oracle='OracleEncoderDecoder'
    )
    check_curves(tmp_path / 'work', ['loss', 'mIoU'], tmp_path / 'curves.png')
    expected = _expected_miou(ade, images)
    assert 10 < expected < 90  # answered and wrong pixels both count
    # IoUMetric reports 2 decimals
    assert metrics['mIoU'] == pytest.approx(expected, abs=5e-3), metrics
    assert 'per class results' in log
    # the +MS column: multi-scale + flip through SegTTAModel
    out = tmp_path / 'ms.json'
    test = run_tool(
        [
            ROOT / 'tools/test.py',
            cfg,
            tmp_path / 'work' / 'iter_2.pth',
            '--tta',
            '--out',
            out,
            '--work-dir',
            tmp_path / 'work',
        ],
        cwd=tmp_path,
    )
    assert test.returncode == 0, failure_report(test)
    assert 0 <= json.loads(out.read_text())['mIoU'] <= 100
    _draws_predictions(cfg, tmp_path, ade / 'images' / 'validation' / '00000.jpg')


def _draws_predictions(cfg, tmp_path, image):
    import cv2

    png = tmp_path / 'pred.png'
    proc = run_tool(
        [
            ROOT / 'tools/visualization/visualize_predictions.py',
            cfg,
            tmp_path / 'work' / 'iter_2.pth',
            image,
            '--out',
            png,
            '--score-thr',
            '0.0',
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    picture, source = cv2.imread(str(png)), cv2.imread(str(image))
    assert picture is not None and picture.shape[:2] == source.shape[:2]
    assert not (picture == source).all()  # something was drawn on it


ODD_SIZE_DETECTORS = [CASCADE_T] + [
    CASCADE_T.parent / f'cascade-mask-rcnn_{b}_fpn_ms-3x_coco.py'
    for b in ('gcvit-t', 'visformer-s', 'cotnet-50')
]


@pytest.mark.parametrize('config', ODD_SIZE_DETECTORS, ids=lambda p: p.name)
def test_backbone_at_odd_size_inside_cascade_mask_rcnn(config):
    """A 1333x800-like image, not padded to 32: the backbone pads its
    windows and DCT blocks (or patches) itself and FPN aligns the odd-sized
    maps."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from nommer_mm.launch import load_config
    from mmengine.registry import init_default_scope
    import nommer_mm  # noqa: F401

    init_default_scope('mmdet')
    cfg = load_config(str(config))
    cfg.model.backbone.init_cfg = None
    if 'norm_cfg' in cfg.model.backbone:
        cfg.model.backbone.norm_cfg = dict(type='BN')
    cfg.model.data_preprocessor.pad_size_divisor = 1
    cfg.model.test_cfg.rpn.max_per_img = 50
    model = MODELS.build(cfg.model).eval()
    H, W = 803, 1331
    img = torch.randint(0, 256, (3, H, W), dtype=torch.uint8)
    sample = DetDataSample(
        metainfo=dict(img_shape=(H, W), ori_shape=(H, W), scale_factor=(1.0, 1.0))
    )
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
        assert data['inputs'].shape[-2:] == (H, W)
        feats = model.backbone(data['inputs'])
        assert [f.shape[-2:] for f in feats] == [
            (201, 333),
            (101, 167),
            (51, 84),
            (26, 42),
        ]
        result = model.predict(data['inputs'], data['data_samples'])[0]
    assert result.pred_instances.bboxes.shape[1] == 4
    assert result.pred_instances.masks.shape[-2:] == (H, W)
