"""Small CPU variants of the detection and segmentation configs: the real
model, heads, losses, runners and metrics, on generated data with small
images and 4 shape classes, derived from the config file given as ``base``
(e.g. the repository's NomMer-T Cascade Mask R-CNN or UperNet config).
Used by the tests, tools/demo.py and tools/gpu_check.py."""

from __future__ import annotations

from pathlib import Path

from mmengine.config import Config

from nommer_mm.launch import load_config

from demo_data import SHAPES


def _iter_schedule(cfg: Config, iters: int, lr: float | None) -> None:
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
    warmup = max(iters // 10, 1)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warmup),
        dict(
            type='CosineAnnealingLR',
            by_epoch=False,
            begin=warmup,
            end=max(iters, warmup + 1),
            eta_min=0.0,
        ),
    ]
    if lr is not None:
        cfg.optim_wrapper.optimizer.lr = lr
    cfg.default_hooks.checkpoint = dict(
        type='SafeCheckpointHook', by_epoch=False, interval=iters
    )
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)


def _set_data(
    cfg: Config, train_dataset: dict, val_dataset: dict, batch: int, evaluator: dict
) -> None:
    """Replace the loaders (main-process loading) and evaluators."""
    cfg.train_dataloader = dict(
        batch_size=batch,
        num_workers=0,
        dataset=train_dataset,
        sampler=dict(type='DefaultSampler', shuffle=True),
    )
    cfg.val_dataloader = dict(
        batch_size=2,
        num_workers=0,
        dataset=val_dataset,
        sampler=dict(type='DefaultSampler', shuffle=False),
    )
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = evaluator
    cfg.test_evaluator = evaluator


def _set_num_classes(node, n: int) -> None:
    if isinstance(node, dict):
        if 'num_classes' in node:
            node['num_classes'] = n
        for v in node.values():
            _set_num_classes(v, n)
    elif isinstance(node, list):
        for v in node:
            _set_num_classes(v, n)


def small_det_config(
    data_root: Path,
    out: Path,
    base: str | Path,
    iters: int = 2,
    scale=(128, 96),
    lr: float | None = None,
    batch: int = 2,
) -> Path:
    cfg = load_config(str(base))  # mmseg:: bases on either stack
    cfg.model.backbone.init_cfg = None
    _set_num_classes(cfg.model, len(SHAPES))
    # fewer RoIs keep the CPU run short; the heads are unchanged
    if 'rpn_proposal' in cfg.model.get('train_cfg', {}):
        cfg.model.train_cfg.rpn_proposal.max_per_img = 64
        cfg.model.test_cfg.rpn.max_per_img = 64
    # an untrained model scores below 0.05: keep every box so that the COCO
    # metric has detections to evaluate
    if 'rcnn' in cfg.model.get('test_cfg', {}):
        cfg.model.test_cfg.rcnn.score_thr = 0.0
    elif 'score_thr' in cfg.model.get('test_cfg', {}):
        cfg.model.test_cfg.score_thr = 0.0
    metainfo = dict(classes=SHAPES)
    train_pipeline = [
        dict(type='CheckedLoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=scale, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=scale, keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(
            type='PackDetInputs',
            meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
        ),
    ]

    def coco(split, pipeline):
        return dict(
            type='CocoDataset',
            data_root=str(data_root),
            metainfo=metainfo,
            ann_file=f'annotations/instances_{split}.json',
            data_prefix=dict(img=f'{split}/'),
            pipeline=pipeline,
            filter_cfg=dict(filter_empty_gt=True, min_size=1)
            if split == 'train'
            else None,
            test_mode=split != 'train',
        )

    _set_data(
        cfg,
        coco('train', train_pipeline),
        coco('val', test_pipeline),
        batch,
        dict(
            type='CocoMetric',
            metric=['bbox', 'segm'],
            ann_file=str(data_root / 'annotations/instances_val.json'),
        ),
    )
    tta = cfg.tta_pipeline[1].transforms
    tta[0] = [
        dict(
            type='Resize',
            scale=(round(scale[0] * r), round(scale[1] * r)),
            keep_ratio=True,
        )
        for r in (1.0, 0.75, 1.25)
    ]
    _iter_schedule(cfg, iters, lr)
    cfg.dump(str(out))
    return out


def small_seg_config(
    data_root: Path,
    out: Path,
    base: str | Path,
    iters: int = 2,
    crop=(64, 64),
    lr: float | None = None,
    batch: int = 2,
) -> Path:
    cfg = load_config(str(base))  # mmseg:: bases on either stack
    cfg.model.backbone.init_cfg = None
    _set_num_classes(cfg.model, len(SHAPES))
    cfg.model.data_preprocessor.size = crop
    cfg.crop_size = crop
    scale = (128, 96)
    metainfo = dict(
        classes=SHAPES,
        palette=[[220, 20, 60], [0, 128, 0], [0, 0, 230], [250, 170, 30]],
    )
    train_pipeline = [
        dict(type='CheckedLoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(
            type='RandomResize', scale=scale, ratio_range=(0.75, 1.25), keep_ratio=True
        ),
        dict(type='RandomCrop', crop_size=crop, cat_max_ratio=0.9),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=scale, keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs'),
    ]

    def ade(split, pipeline):
        # ADE20K's layout and label convention (0 = other, ignored), read by
        # the base class because ADE20KDataset fixes its 150 classes
        return dict(
            type='BaseSegDataset',
            data_root=str(data_root),
            metainfo=metainfo,
            img_suffix='.jpg',
            seg_map_suffix='.png',
            reduce_zero_label=True,
            data_prefix=dict(
                img_path=f'images/{split}', seg_map_path=f'annotations/{split}'
            ),
            pipeline=pipeline,
        )

    _set_data(
        cfg,
        ade('training', train_pipeline),
        ade('validation', test_pipeline),
        batch,
        dict(type='IoUMetric', iou_metrics=['mIoU']),
    )
    cfg.tta_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(
            type='TestTimeAug',
            transforms=[
                [
                    dict(type='Resize', scale_factor=r, keep_ratio=True)
                    for r in (0.75, 1.0, 1.25)
                ],
                [
                    dict(type='RandomFlip', prob=0.0, direction='horizontal'),
                    dict(type='RandomFlip', prob=1.0, direction='horizontal'),
                ],
                [dict(type='LoadAnnotations', reduce_zero_label=True)],
                [dict(type='PackSegInputs')],
            ],
        ),
    ]
    _iter_schedule(cfg, iters, lr)
    cfg.dump(str(out))
    return out
