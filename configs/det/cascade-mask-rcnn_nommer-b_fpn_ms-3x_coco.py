# Cascade Mask R-CNN + NomMer-B, 3x (paper Table 2: 52.7 box AP, 45.6 mask AP).
_base_ = './cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
pretrained = 'checkpoints/nommer-base_in1k-224.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    ),
    neck=dict(in_channels=[128, 256, 512, 1024]),
)
