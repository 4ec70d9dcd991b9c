# Mask R-CNN 1x + NomMer-T: Swin-T's mmdet config with the backbone swapped.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', '../_base_/det/tta.py']
custom_imports = dict(
    imports=['nommer_mm', 'nommer_mm.models.det_tta'], allow_failed_imports=False
)
model = dict(
    backbone=dict(
        _delete_=True,
        type='NomMer',
        arch='tiny',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/nommer-tiny_in1k-224.pth',
            prefix='backbone.',
        ),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
        }
    )
)

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
