# NomMer-T, ImageNet-1K, 300 epochs at 224 (paper Table 1: 82.6 top-1).
# Recipe: AdamW lr 1e-3 at total batch 1024, weight decay 0.05, cosine with
# 20 warm-up epochs (5e-7 -> 1e-3, min 5e-6), grad-norm clip 5.0, DeiT
# augmentation (RandAugment rand-m9-mstd0.5-inc1, Mixup 0.8, CutMix 1.0,
# label smoothing 0.1, random erasing 0.25, bicubic).
_base_ = ['../_base_/models/nommer_cls.py']

optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=5e-7 / 1e-3,
        by_epoch=True,
        end=20,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=5e-6,
        by_epoch=True,
        begin=20,
        end=300,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=300)
