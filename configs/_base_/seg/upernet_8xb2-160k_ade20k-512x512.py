# UperNet on ADE20K, 512x512 crops, 160k iterations, batch 16: Swin's
# UperNet recipe, which the NomMer paper follows. AdamW lr 6e-5, weight decay
# 0.01 (none on norms, position embedding, class token, relative position
# tables), 1500-iteration linear warm-up then poly decay; auxiliary FCN head
# on stage 3. Multi-scale + flip evaluation: tools/test.py CONFIG CKPT --tta.
# The backbone is left empty (mmseg's Swin removed): a config gives its
# backbone and the heads' in_channels.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['nommer_mm'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(_delete_=True),  # mmseg's Swin: each config gives its own
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
            'relative_position_bias_table': dict(decay_mult=0.0),
            'norm': dict(decay_mult=0.0),
        }
    ),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
# The base's training pipeline, loading with CheckedLoadImageFromFile: a
# broken image stops the run naming its path and dataset index. The test
# and multi-scale + flip pipelines are the base's.
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True
    ),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
# 8 GPUs x 2 images = 16
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

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
# tools/train.py --auto-scale-lr scales the lr by the real total batch / 16
auto_scale_lr = dict(enable=False, base_batch_size=16)
