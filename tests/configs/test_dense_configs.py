"""Every detection and segmentation config builds; the recipes and the
parameter counts of Tables 2 and 3 hold."""

import functools
from pathlib import Path

import pytest

# the tools' reader (mmseg:: bases resolve on either OpenMMLab stack), each
# config read once per test process
from cls_helpers import cached_config as load_config

ROOT = Path(__file__).resolve().parents[2]
DET = sorted((ROOT / 'configs/det').rglob('*.py'))
SEG = sorted((ROOT / 'configs/seg').rglob('*.py'))


@functools.lru_cache(maxsize=None)
def build(path: Path) -> tuple[str, str, int]:
    """Build the config's model (random backbone weights) and training
    pipeline, once per test process: the backbone's class name and module,
    and the model's trainable parameters."""
    import nommer_mm  # noqa: F401
    from mmengine.registry import init_default_scope

    cfg = load_config(str(path))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS, TRANSFORMS
    else:
        from mmseg.registry import MODELS, TRANSFORMS
    model = MODELS.build(cfg.model)
    for t in cfg.train_dataloader.dataset.pipeline:
        TRANSFORMS.build(t)
    backbone = type(model.backbone)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return backbone.__name__, backbone.__module__, params


@pytest.mark.parametrize('path', DET + SEG, ids=lambda p: p.name)
def test_config_builds(path):
    name, module, _ = build(path)
    cfg = load_config(str(path))
    # the backbone named in the config, found through the task's registry
    assert name == cfg.model.backbone.type
    assert module.startswith('nommer_mm.')
    # initialised from a converted ImageNet classifier
    init = cfg.model.backbone.init_cfg
    assert init.type == 'Pretrained' and init.prefix == 'backbone.'


PAPER_PARAMS = {
    'cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py': 80e6,
    'cascade-mask-rcnn_nommer-s_fpn_ms-3x_coco.py': 99e6,
    'cascade-mask-rcnn_nommer-b_fpn_ms-3x_coco.py': 130e6,
    'upernet_nommer-t_8xb2-160k_ade20k-512x512.py': 54e6,
    'upernet_nommer-s_8xb2-160k_ade20k-512x512.py': 73e6,
    'upernet_nommer-b_8xb2-160k_ade20k-512x512.py': 107e6,
    # GC ViT's own Cascade Mask R-CNN 3x (its reference): 85M
    'cascade-mask-rcnn_gcvit-t_fpn_ms-3x_coco.py': 85e6,
}


@pytest.mark.parametrize('name', list(PAPER_PARAMS))
def test_params_match_tables_2_and_3(name):
    folder = 'det' if name.startswith('cascade') else 'seg'
    *_, n = build(ROOT / 'configs' / folder / name)
    assert abs(n - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.03, n


@pytest.mark.parametrize('arch,dpr', [('t', 0.1), ('s', 0.3), ('b', 0.5)])
def test_cascade_3x_recipe(arch, dpr):
    cfg = load_config(
        str(ROOT / f'configs/det/cascade-mask-rcnn_nommer-{arch}_fpn_ms-3x_coco.py')
    )
    assert cfg.model.backbone.drop_path_rate == dpr
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
    assert cfg.train_cfg.max_epochs == 36
    warm, steps = cfg.param_scheduler
    assert warm.type == 'LinearLR' and steps.milestones == [27, 33]
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 0.05)
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    for k in ('pos_embed', 'cls_token', 'relative_position_bias_table', 'norm'):
        assert keys[k].decay_mult == 0
    assert cfg.train_dataloader.batch_size == 2
    heads = cfg.model.roi_head.bbox_head
    assert all(h.norm_cfg.type == 'SyncBN' and h.num_shared_convs == 4 for h in heads)
    choice = next(
        t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomChoice'
    )
    shorts = [s[0] for s in choice.transforms[0][0].scales]
    assert min(shorts) == 480 and max(shorts) == 800
    evaluator = cfg.val_evaluator
    assert evaluator.type == 'CocoMetric'
    assert set(evaluator.metric) == {'bbox', 'segm'}


@pytest.mark.parametrize('arch', ['t', 's', 'b'])
def test_upernet_160k_recipe(arch):
    cfg = load_config(
        str(ROOT / f'configs/seg/upernet_nommer-{arch}_8xb2-160k_ade20k-512x512.py')
    )
    assert cfg.crop_size == (512, 512)
    assert cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.train_cfg.max_iters == 160000
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 6e-5, 0.01)
    warm, poly = cfg.param_scheduler
    assert warm.end == 1500 and poly.type == 'PolyLR' and poly.power == 1.0
    assert cfg.model.auxiliary_head.type == 'FCNHead'
    assert cfg.tta_model.type == 'SegTTAModel'
    assert cfg.val_evaluator.type == 'IoUMetric'
