# UperNet + NomMer-B (paper Table 3: 50.0 mIoU, 51.0 multi-scale + flip).
_base_ = './upernet_nommer-t_8xb2-160k_ade20k-512x512.py'
pretrained = 'checkpoints/nommer-base_in1k-224.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    ),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
