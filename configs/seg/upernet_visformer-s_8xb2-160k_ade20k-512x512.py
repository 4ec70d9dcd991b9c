# UperNet + Visformer-S, ADE20K, 512x512 crops, 160k iterations, batch 16.
# The segmenter, pipeline and schedule of the NomMer configs (Swin's UperNet
# recipe, in _base_/seg); only the backbone differs.
# Output 0 (stride 4) is a learned upsampling of stage 1, trained from scratch.
_base_ = ['../_base_/seg/upernet_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/visformer-small_in1k-224.pth'
model = dict(
    backbone=dict(
        type='Visformer',
        arch='small',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    ),
    decode_head=dict(in_channels=[192, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
