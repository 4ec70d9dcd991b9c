# What every ImageNet-1K classification config here shares: Swin's
# mmpretrain bases (the DeiT pipeline at 224 and the AdamW schedule), an
# ImageClassifier with a label-smoothed linear head and Mixup 0.8 / CutMix
# 1.0, 8 GPUs x 128 images, no weight decay on norms, biases, position
# embeddings, class tokens and relative position tables, and the runtime
# settings of this repository. A family base (models/*.py) adds the
# backbone and neck; a config adds its recipe (lr, schedule, epochs).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['nommer_mm'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.0),
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False,
    ),
    train_cfg=dict(
        augments=[
            dict(type='Mixup', alpha=0.8),
            dict(type='CutMix', alpha=1.0),
        ]
    ),
)

# The base's DeiT training pipeline, loading with CheckedLoadImageFromFile: a
# broken image stops the run naming its path and dataset index. The test
# pipeline is the base's.
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(
        type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'
    ),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic'),
    ),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=bgr_mean,
        fill_std=bgr_std,
    ),
    dict(type='PackInputs'),
]
# 8 GPUs x 128 = 1024 images per step
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(
    # no decay on norms and biases (base: *_decay_mult=0.0), nor on:
    paramwise_cfg=dict(
        custom_keys={
            '.pos_embed': dict(decay_mult=0.0),
            '.cls_token': dict(decay_mult=0.0),
            '.relative_position_bias_table': dict(decay_mult=0.0),
        }
    ),
    clip_grad=dict(max_norm=5.0),
)
auto_scale_lr = dict(base_batch_size=1024)

# Resuming a killed run then follows the same random stream (Gumbel noise,
# drop path) as an uninterrupted one.
custom_hooks = [dict(type='RNGStateHook')]

# Checkpoints written atomically, old ones removed only once the new one is
# complete, and readable by any torch.load (nommer_mm.SafeCheckpointHook);
# evaluation images loaded with the check of the training pipeline
# (CheckedImageLoadingHook); a peer that stops answering ends the run after
# 10 minutes, not 30.
default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook'),
    image_loading=dict(type='CheckedImageLoadingHook'),
)
env_cfg = dict(dist_cfg=dict(timeout=600))
# Results are gathered through the process group, not a shared temporary
# directory: evaluation on several nodes needs no shared file system.
val_evaluator = dict(collect_device='gpu')
test_evaluator = dict(collect_device='gpu')
