# NomMer-T, ImageNet-1K, 300 epochs at 224 (paper Table 1: 82.6 top-1).
# Recipe: AdamW lr 1e-3 at total batch 1024, weight decay 0.05, cosine with
# 20 warm-up epochs (5e-7 -> 1e-3, min 5e-6), grad-norm clip 5.0, DeiT
# augmentation (RandAugment rand-m9-mstd0.5-inc1, Mixup 0.8, CutMix 1.0,
# label smoothing 0.1, random erasing 0.25, bicubic).
# Swin's mmpretrain bases already carry the DeiT pipeline and the AdamW
# schedule; only what differs is stated here.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['nommer_mm'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='NomMer',
        arch='tiny',
        img_size=224,
        drop_path_rate=0.1,
        out_indices=(3,),
        out_type='cls_token',
    ),  # the reference head reads the class token
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
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

# 8 GPUs x 128 = 1024 images per step
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
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
auto_scale_lr = dict(base_batch_size=1024)

# Resuming a killed run then follows the same random stream (Gumbel noise,
# drop path) as an uninterrupted one.
custom_hooks = [dict(type='RNGStateHook')]

# Checkpoints written atomically, old ones removed only once the new one is
# complete, and readable by any torch.load (nommer_mm.SafeCheckpointHook);
# a peer that stops answering ends the run after 10 minutes, not 30.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
env_cfg = dict(dist_cfg=dict(timeout=600))
# Results are gathered through the process group, not a shared temporary
# directory: evaluation on several nodes needs no shared file system.
val_evaluator = dict(collect_device='gpu')
test_evaluator = dict(collect_device='gpu')
