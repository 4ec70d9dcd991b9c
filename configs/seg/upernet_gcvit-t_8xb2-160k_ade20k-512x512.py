# UperNet + GC ViT-T, ADE20K, 512x512 crops, 160k iterations, batch 16.
# The segmenter, pipeline and schedule of the NomMer configs (Swin's UperNet
# recipe, in _base_/seg); only the backbone differs.
_base_ = ['../_base_/seg/upernet_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/gcvit-tiny_in1k-224.pth'
model = dict(
    backbone=dict(
        type='GCViT',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
