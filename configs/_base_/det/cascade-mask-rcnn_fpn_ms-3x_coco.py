# Cascade Mask R-CNN 3x on COCO, the recipe every backbone here is compared
# with (Swin's and GC ViT's Cascade Mask R-CNN 3x, which the NomMer paper
# follows): 36 epochs (steps at 27 and 33, linear warm-up), shorter side
# 480-800 multi-scale with the DETR crop branch, AdamW lr 1e-4, weight decay
# 0.05 (none on norms, position embedding, class token, relative position
# tables), 4conv1fc box heads with SyncBN and GIoU loss, 2 images x 8 GPUs.
# The backbone is left empty (mmdet's ResNet removed): a config gives its
# backbone and the neck's in_channels.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './tta.py',
]
custom_imports = dict(
    imports=['nommer_mm', 'nommer_mm.models.det_tta'], allow_failed_imports=False
)

head_norm_cfg = dict(type='SyncBN', requires_grad=True)


def _box_head(std):
    return dict(
        type='ConvFCBBoxHead',
        num_shared_convs=4,
        num_shared_fcs=1,
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=std,
        ),
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        norm_cfg=head_norm_cfg,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0),
    )


model = dict(
    backbone=dict(_delete_=True),  # mmdet's ResNet: each config gives its own
    roi_head=dict(
        bbox_head=[
            _box_head([0.1, 0.1, 0.2, 0.2]),
            _box_head([0.05, 0.05, 0.1, 0.1]),
            _box_head([0.033, 0.033, 0.067, 0.067]),
        ]
    ),
)

# augmentation strategy originates from DETR / Sparse R-CNN (as Swin's 3x)
_scales = [
    (480, 1333),
    (512, 1333),
    (544, 1333),
    (576, 1333),
    (608, 1333),
    (640, 1333),
    (672, 1333),
    (704, 1333),
    (736, 1333),
    (768, 1333),
    (800, 1333),
]
train_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(400, 1333), (500, 1333), (600, 1333)],
                    keep_ratio=True,
                ),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True,
                ),
                dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True),
            ],
        ],
    ),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1,
    ),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05
    ),
    paramwise_cfg=dict(
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
            'relative_position_bias_table': dict(decay_mult=0.0),
            'norm': dict(decay_mult=0.0),
        }
    ),
)
auto_scale_lr = dict(enable=False, base_batch_size=16)

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
