# Paper Table 4 ablation, NomMer-T: + conv context, summed.
# Paper (top-1 / box AP / mask AP / mIoU): 81.7 / 50.6 / 43.8 / 44.8; the full model
# (Gumbel nominator over all three contexts) is
# upernet_nommer-t_8xb2-160k_ade20k-512x512.py.
_base_ = '../upernet_nommer-t_8xb2-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/nommer-tiny-wc-sum_in1k-224.pth',
        ),
        contexts=('conv', 'window'),
        fusion='sum',
    )
)
