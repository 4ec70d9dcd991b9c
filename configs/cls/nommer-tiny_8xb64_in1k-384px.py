# NomMer-T fine-tuned at 384 for 30 epochs from the 224 model (paper
# Table 1: 83.9 top-1): total batch 512, lr 1e-5, weight decay 1e-8, the
# 224 augmentation at 384. Put the 224 checkpoint (trained with the 224
# config, or converted with tools/model_converters/nommer2mm.py) at
# `load_from`; the position embedding (14x14) is resized to 24x24 on load.
_base_ = './nommer-tiny_8xb128_in1k.py'

model = dict(backbone=dict(img_size=384))
load_from = 'checkpoints/nommer-tiny_in1k-224.pth'

_bgr_mean = [103.53, 116.28, 123.675]
_bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(
        type='RandomResizedCrop', scale=384, backend='pillow', interpolation='bicubic'
    ),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[round(x) for x in _bgr_mean], interpolation='bicubic'),
    ),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=_bgr_mean,
        fill_std=_bgr_std,
    ),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=384, backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]
# 8 GPUs x 64 = 512 images per step
train_dataloader = dict(batch_size=64, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-5, weight_decay=1e-8))
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        eta_min=0.0,
        by_epoch=True,
        begin=0,
        end=30,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(max_epochs=30)
auto_scale_lr = dict(base_batch_size=512)
