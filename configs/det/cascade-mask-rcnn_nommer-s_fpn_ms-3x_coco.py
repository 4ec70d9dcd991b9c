# Cascade Mask R-CNN + NomMer-S, 3x (paper Table 2: 52.4 box AP, 45.1 mask AP).
_base_ = './cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
pretrained = 'checkpoints/nommer-small_in1k-224.pth'
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    )
)
