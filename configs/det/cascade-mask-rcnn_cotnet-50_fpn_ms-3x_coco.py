# Cascade Mask R-CNN + CoTNet-50, 3x schedule, multi-scale training, COCO.
# The detector, pipeline and schedule of the NomMer configs (the shared 3x
# recipe in _base_/det), so the backbones compare on equal terms.
_base_ = ['../_base_/det/cascade-mask-rcnn_fpn_ms-3x_coco.py']

# the converted ImageNet classifier (tools/model_converters/peer2mm.py)
pretrained = 'checkpoints/cotnet-50_in1k-224.pth'
model = dict(
    backbone=dict(
        type='CoTNet',
        arch='cotnet50',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    ),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
)
