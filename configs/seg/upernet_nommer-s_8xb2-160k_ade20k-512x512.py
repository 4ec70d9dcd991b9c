# UperNet + NomMer-S (paper Table 3: 48.7 mIoU, 50.4 multi-scale + flip).
_base_ = './upernet_nommer-t_8xb2-160k_ade20k-512x512.py'
pretrained = 'checkpoints/nommer-small_in1k-224.pth'
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'),
    )
)
