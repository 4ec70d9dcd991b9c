# Demo: NomMer-T trained from scratch on a generated 4-class texture dataset
# (64x64, ImageNet folder layout) on 2 processes x 16 images, a few minutes
# on a CPU.
# tools/demo.py generates the data at `data_root` and runs this config.
# Differences from the ImageNet recipe: tiny images, few iterations, no
# Mixup/CutMix/RandAugment (they need many epochs to pay off), and lr 2e-4
# for the total batch of 32 (1e-3 is for 1024; 5e-4 already diverges here).
_base_ = './nommer-tiny_8xb128_in1k.py'

data_root = 'work_dirs/demo/textures'
model = dict(
    backbone=dict(img_size=64, drop_path_rate=0.0),
    head=dict(num_classes=4, topk=(1,)),
    train_cfg=None,
)
data_preprocessor = dict(num_classes=4)

train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=64,
        crop_ratio_range=(0.6, 1.0),
        backend='pillow',
        interpolation='bicubic',
    ),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type='CustomDataset',
        _delete_=True,
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline,
    ),
    sampler=dict(type='InfiniteSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type='CustomDataset',
        _delete_=True,
        data_root=data_root,
        data_prefix='val',
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

max_iters = 300
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, end=30),
    dict(
        type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False, begin=30, end=max_iters
    ),
]
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=max_iters,
)
default_hooks = dict(
    logger=dict(interval=25), checkpoint=dict(by_epoch=False, interval=max_iters)
)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False)
log_processor = dict(by_epoch=False)
