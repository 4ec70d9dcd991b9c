# Cascade Mask R-CNN + GC ViT-T, 3x schedule, multi-scale training, COCO.
# The detector, pipeline and schedule of the NomMer configs (the shared 3x
# recipe in _base_/det), so the backbones compare on equal terms.
# GC ViT's reference reports 51.6 box AP, 44.6 mask AP (85M, 770G).
_base_ = ['../_base_/det/cascade-mask-rcnn_fpn_ms-3x_coco.py']

# the converted ImageNet classifier (tools/model_converters/peer2mm.py)
pretrained = 'checkpoints/gcvit-tiny_in1k-224.pth'
model = dict(
    backbone=dict(
        type='GCViT',
        arch='tiny',
        # the reference detection windows; the 7/14 bias tables of
        # the ImageNet checkpoint are resized on load
        window_size=(24, 24, 24, 24),
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    ),
    neck=dict(in_channels=[64, 128, 256, 512]),
)
