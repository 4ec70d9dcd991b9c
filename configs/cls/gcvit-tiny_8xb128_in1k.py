# GC ViT (tiny), ImageNet-1K at 224.
# Recipe of NVlabs/GCVit configs/gc_vit_tiny.yml: AdamW lr 5e-3 at total
# batch 1024, weight decay 0.05, 20 warm-up epochs from 1e-6, cosine to 5e-6
# at epoch 300 then 10 cool-down epochs, grad-norm clip 5, model EMA 0.9998,
# DeiT augmentation (the base's pipeline, Mixup/CutMix, label smoothing).
_base_ = ['../_base_/models/gcvit_cls.py']

optim_wrapper = dict(optimizer=dict(lr=5e-3))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6 / 5e-3,
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
    dict(type='ConstantLR', factor=1.0, by_epoch=True, begin=300, end=310),
]
train_cfg = dict(max_epochs=310)
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='EMAHook', momentum=2e-4, priority='ABOVE_NORMAL'),
]
