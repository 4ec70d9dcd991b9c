# CoTNet-50, ImageNet-1K at 224.
# Recipe of JDAI-CV/CoTNet cot_experiments/CoTNet-50-350epoch: SGD
# momentum 0.9, lr 0.25 at total batch 1024, weight decay 4e-5, 5 warm-up
# epochs from 1e-4, cosine to 1e-5 over 350 epochs, drop path 0.1, model
# EMA 0.9999, Mixup 0.8 / CutMix 1.0, label smoothing 0.1. Differences:
# augmentation is the base's DeiT pipeline (the reference used RandAugment
# m15 and no random erasing) and mmpretrain's LinearClsHead has no dropout
# (the reference drops 0.25 before the classifier).
_base_ = ['../_base_/models/cotnet_cls.py']

optim_wrapper = dict(
    _delete_=True, optimizer=dict(type='SGD', lr=0.25, momentum=0.9, weight_decay=4e-5)
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-4 / 0.25,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=5,
        end=350,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=350)
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
]
