"""tools/test.py --tta and tools/train.py --auto-scale-lr on every task's
configs: what each does, or the one line that says why it cannot."""

import pytest

from cls_helpers import ROOT

CONFIGS = {
    'cls': ROOT / 'configs/cls/nommer-tiny_8xb128_in1k.py',
    'cls-384': ROOT / 'configs/cls/nommer-tiny_8xb64_in1k-384px.py',
    'cascade': ROOT / 'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py',
    'retinanet': ROOT / 'configs/det/retinanet_nommer-t_fpn_1x_coco.py',
    'upernet': ROOT / 'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py',
}


def _cfg(name):
    from nommer_mm.launch import load_config

    return load_config(str(CONFIGS[name]))


@pytest.mark.parametrize('name', ['cascade', 'retinanet', 'upernet'])
def test_tta_wraps_the_model_and_tests_every_flip_and_scale(name):
    from nommer_mm.launch import use_tta

    cfg = _cfg(name)
    model = cfg.model
    use_tta(cfg, 'CFG')
    assert cfg.model.module == model
    assert cfg.model.type in ('InstanceSegTTAModel', 'SegTTAModel')
    load, tta = cfg.test_dataloader.dataset.pipeline
    assert load.type == 'LoadImageFromFile' and tta.type == 'TestTimeAug'
    scales, flips = tta.transforms[:2]
    assert len(scales) >= 3 and sorted(f['prob'] for f in flips) == [0.0, 1.0]


@pytest.mark.parametrize('name', ['cls', 'cls-384'])
def test_tta_on_a_classifier_is_refused_in_one_line(name):
    from nommer_mm.launch import use_tta

    with pytest.raises(SystemExit) as stop:
        use_tta(_cfg(name), 'CFG')
    said = str(stop.value)
    assert said.startswith('--tta: CFG defines no test-time augmentation')
    assert '\n' not in said


@pytest.mark.parametrize(
    'name, base, per_process',
    [('cls', 1024, 128), ('cls-384', 512, 64), ('cascade', 16, 2), ('upernet', 16, 2)],
)
def test_auto_scale_lr_says_what_it_does(name, base, per_process):
    from nommer_mm.launch import auto_scale_lr_note, enable_auto_scale_lr

    cfg = _cfg(name)
    enable_auto_scale_lr(cfg, 'CFG')
    assert cfg.auto_scale_lr.enable
    ratio = 2 * per_process / base
    assert auto_scale_lr_note(cfg, 2) == (
        f'--auto-scale-lr: total batch {2 * per_process} (2 processes x '
        f'{per_process}) for a recipe of {base}: lr x {ratio:g}'
    )


def test_auto_scale_lr_without_a_base_batch_stops():
    from nommer_mm.launch import enable_auto_scale_lr

    cfg = _cfg('upernet')
    cfg.pop('auto_scale_lr')
    with pytest.raises(SystemExit, match='CFG sets no auto_scale_lr.base_batch_size'):
        enable_auto_scale_lr(cfg, 'CFG')
