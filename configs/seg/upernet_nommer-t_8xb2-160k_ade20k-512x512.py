# UperNet + NomMer-T, ADE20K, 512x512 crops, 160k iterations, batch 16
# (paper Table 3: 46.1 mIoU, 47.3 multi-scale + flip), on the shared recipe.
_base_ = ['../_base_/seg/upernet_8xb2-160k_ade20k-512x512.py']

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
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
