# Visformer-S, ImageNet-1K at 224 (82.2 top-1 in the paper).
# DeiT recipe as used by danczs/Visformer: AdamW lr 5e-4 per 512 images
# (1e-3 at total batch 1024), weight decay 0.05, 5 warm-up epochs from 1e-6,
# cosine to 1e-5 over 300 epochs, DeiT augmentation (the base's pipeline).
_base_ = ['../_base_/models/visformer_cls.py']

optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
    paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.0)}),
    clip_grad=None,
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6 / 1e-3,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=5,
        end=300,
        convert_to_iter_based=True,
    ),
]
