# Paper Table 4 ablation, NomMer-T: + conv + pooled global context, summed.
# Paper (top-1 / box AP / mask AP / mIoU): 82.0 / 50.9 / 44.0 / 45.1; the full model
# (Gumbel nominator over all three contexts) is
# upernet_nommer-t_8xb2-160k_ade20k-512x512.py.
_base_ = '../upernet_nommer-t_8xb2-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/nommer-tiny-wc-pooled-sum_in1k-224.pth',
        ),
        global_type='pooled',
        fusion='sum',
    )
)
