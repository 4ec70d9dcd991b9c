# Cascade Mask R-CNN + NomMer-T, 3x schedule, multi-scale training, COCO
# (paper Table 2: 51.8 box AP, 44.7 mask AP), on the shared 3x recipe.
_base_ = ['../_base_/det/cascade-mask-rcnn_fpn_ms-3x_coco.py']

# the converted ImageNet classifier (tools/model_converters/nommer2mm.py)
pretrained = 'checkpoints/nommer-tiny_in1k-224.pth'
model = dict(
    backbone=dict(
        type='NomMer',
        arch='tiny',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
