# Cascade Mask R-CNN + CoTNet-50, 3x schedule, multi-scale training, COCO.
# The same detector, pipeline and schedule as the NomMer-T config (the
# Swin / GC ViT 3x recipe: AdamW 1e-4, weight decay 0.05, DETR-style
# multi-scale 480-800 with crops, 4conv1fc SyncBN heads with GIoU loss), so
# the backbones compare on equal terms; only the backbone differs.
_base_ = ['./cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py']

# the converted ImageNet classifier (tools/model_converters/peer2mm.py)
pretrained = 'checkpoints/cotnet-50_in1k-224.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='CoTNet',
        arch='cotnet50',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    ),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
)
