"""The configs through OpenMMLab's own entry points, where mmpretrain, mmdet
and mmseg users reach them: the codebases' inferencers, and mmengine's
``Runner.from_cfg`` as the codebases' ``tools/train.py`` and
``tools/test.py`` call it, without this repository's tools or wrappers."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from cls_helpers import CASCADE_T, DEMO, ROOT, UPERNET_T, save_random_weights
from demo_configs import small_det_config, small_seg_config
from demo_data import make_ade_layout, make_coco_layout, make_imagenet_layout

CLS = ROOT / 'configs/cls'
DET = ROOT / 'configs/det'
SEG = ROOT / 'configs/seg'
SCOPE = dict(cls='mmpretrain', det='mmdet', seg='mmseg')


def _task(config: Path) -> str:
    return config.parent.name  # cls, det or seg


@pytest.fixture(autouse=True)
def fresh_scope():
    """No default scope left over from other tests, as in a new process
    (mmpretrain's inferencer builds its pipeline in the current scope)."""
    from mmengine.registry import DefaultScope

    saved = DefaultScope._instance_dict.copy()
    DefaultScope._instance_dict.clear()
    yield
    DefaultScope._instance_dict.update(saved)


def _inferencer(config, task: str, weights: str | None):
    """The codebase's inferencer, made as its documentation shows."""
    if task == 'cls':
        from mmpretrain.apis import ImageClassificationInferencer

        return ImageClassificationInferencer(config, pretrained=weights or False)
    if task == 'det':
        from mmdet.apis import DetInferencer

        return DetInferencer(config, weights=weights, show_progress=False)
    from mmseg.apis import MMSegInferencer

    return MMSegInferencer(config, weights=weights)


def _run(inferencer, task: str, inputs: list) -> list:
    """One prediction per input, checked for the task's kind of output."""
    out = inferencer(inputs) if task != 'seg' else inferencer(inputs, show=False)
    preds = out['predictions'] if isinstance(out, dict) else out
    if task == 'seg' and len(inputs) == 1:
        preds = [preds]
    assert len(preds) == len(inputs)
    for pred in preds:
        if task == 'cls':
            assert np.isclose(sum(pred['pred_scores']), 1.0, atol=1e-4)
        elif task == 'det':
            assert len(pred['bboxes']) == len(pred['scores']) == len(pred['labels'])
        else:
            assert np.asarray(pred).ndim == 2
    return preds


def _weights(config, task: str, path: Path) -> str:
    """Random weights of the config's model with classes in their meta."""
    meta = {'dataset_meta': {'classes': [f'c{i}' for i in range(1000)]}}
    return str(save_random_weights(config, SCOPE[task], path, meta))


def _image(tmp_path: Path) -> tuple[np.ndarray, str]:
    """An odd-sized picture as an array (BGR, as the inferencers read) and
    as a file."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (75, 101, 3), dtype=np.uint8)
    path = tmp_path / 'picture.jpg'
    cv2.imwrite(str(path), img)
    return img, str(path)


def _check_weights_loaded(inferencer, weights: str) -> None:
    saved = torch.load(weights, map_location='cpu')['state_dict']
    loaded = inferencer.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k].cpu()) for k in saved)


@pytest.mark.parametrize(
    'config',
    [CLS / 'nommer-tiny_8xb128_in1k.py', CLS / 'nommer-tiny_8xb64_in1k-384px.py'],
    ids=lambda p: p.stem,
)
def test_classifier_inferencer_on_an_array_and_a_file_with_and_without_weights(
    config, tmp_path
):
    img, path = _image(tmp_path)
    _run(_inferencer(str(config), 'cls', None), 'cls', [img, path])
    weights = _weights(config, 'cls', tmp_path / 'weights.pth')
    inferencer = _inferencer(str(config), 'cls', weights)
    _check_weights_loaded(inferencer, weights)
    _run(inferencer, 'cls', [path, img])


@pytest.mark.slow
@pytest.mark.parametrize(
    'config',
    [
        CLS / 'gcvit-tiny_8xb128_in1k.py',
        CLS / 'visformer-tiny_8xb128_in1k.py',
        CLS / 'cotnet-50_8xb128_in1k.py',
        DET / 'cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py',
        DET / 'mask-rcnn_nommer-t_fpn_1x_coco.py',
        DET / 'retinanet_nommer-t_fpn_1x_coco.py',
        DET / 'atss_nommer-t_fpn_1x_coco.py',
        SEG / 'upernet_nommer-t_8xb2-160k_ade20k-512x512.py',
    ],
    ids=lambda p: p.stem,
)
def test_every_config_family_through_its_inferencer(config, tmp_path):
    """Each family's config file as it is (its own test size): an array
    without weights, a file with them."""
    task = _task(config)
    img, path = _image(tmp_path)
    _run(_inferencer(str(config), task, None), task, [img])
    weights = _weights(config, task, tmp_path / 'weights.pth')
    inferencer = _inferencer(str(config), task, weights)
    _check_weights_loaded(inferencer, weights)
    _run(inferencer, task, [path])


# ------------------------------------------ Runner.from_cfg, train and test
def _stock_train(config: Path, work_dir: Path) -> Path:
    """What mmpretrain's, mmdet's and mmseg's tools/train.py do."""
    from mmengine.runner import Runner

    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(work_dir)
    Runner.from_cfg(cfg).train()
    return Path((work_dir / 'last_checkpoint').read_text().strip())


def _stock_test(config: Path, checkpoint: Path, work_dir: Path) -> dict:
    """What their tools/test.py do."""
    from mmengine.runner import Runner

    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(work_dir)
    cfg.load_from = str(checkpoint)
    return Runner.from_cfg(cfg).test()


def _small_cls(tmp_path: Path) -> Path:
    """The demo config (NomMer-T) at 32x32, main-process loading."""
    data = make_imagenet_layout(tmp_path / 'data', {'train': 2, 'val': 2}, size=32)
    cfg = tmp_path / 'cls.py'
    cfg.write_text(f"""
_base_ = {str(DEMO)!r}
model = dict(backbone=dict(img_size=32))
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32, backend='pillow'),
    dict(type='PackInputs'),
]
loader = dict(num_workers=0, persistent_workers=False, batch_size=4)
train_dataloader = dict(**loader, dataset=dict(
    data_root={str(data)!r}, pipeline=train_pipeline))
val_dataloader = dict(**loader, dataset=dict(data_root={str(data)!r}))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=1, val_interval=1)
default_hooks = dict(checkpoint=dict(interval=1))
""")
    return cfg


def _small_dense(task: str, tmp_path: Path) -> Path:
    if task == 'det':
        data = make_coco_layout(tmp_path / 'data', {'train': 2, 'val': 2})
        return small_det_config(data, tmp_path / 'det.py', CASCADE_T, iters=1)
    data = make_ade_layout(tmp_path / 'data', {'training': 2, 'validation': 2})
    return small_seg_config(data, tmp_path / 'seg.py', UPERNET_T, iters=1)


def _val_images(config: Path) -> list[Path]:
    cfg = Config.fromfile(str(config))
    ds = cfg.test_dataloader.dataset
    root = Path(ds.data_root)
    prefix = ds.data_prefix
    folder = prefix if isinstance(prefix, str) else next(iter(prefix.values()))
    return sorted(p for p in (root / folder).rglob('*') if p.is_file())


@pytest.mark.parametrize(
    'task',
    [
        pytest.param('cls'),
        *(pytest.param(t, marks=pytest.mark.slow) for t in ('det', 'seg')),
    ],
)
def test_stock_train_and_test_runs_and_still_names_a_broken_image(task, tmp_path):
    """One training iteration, then a test of the checkpoint it wrote, each
    through ``Runner.from_cfg`` alone; then a test set holding a cut-short
    image stops naming it."""
    from nommer_mm.datasets import BrokenImageError

    config = _small_cls(tmp_path) if task == 'cls' else _small_dense(task, tmp_path)
    checkpoint = _stock_train(config, tmp_path / 'work')
    assert checkpoint.is_file()
    metrics = _stock_test(config, checkpoint, tmp_path / 'test')
    key = dict(cls='accuracy/top1', det='coco/bbox_mAP', seg='mIoU')[task]
    assert key in metrics, metrics
    broken = _val_images(config)[-1]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with pytest.raises(BrokenImageError, match=f'image {broken} \\(index \\d+ of'):
        _stock_test(config, checkpoint, tmp_path / 'test-broken')
