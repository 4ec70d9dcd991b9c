# Paper Table 4 ablation, NomMer-T: + conv + DCT global context, summed.
# Paper (top-1 / box AP / mask AP / mIoU): 82.2 / 51.2 / 44.3 / 45.4; the full model
# (Gumbel nominator over all three contexts) is
# cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py.
_base_ = '../cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/nommer-tiny-wc-dct-sum_in1k-224.pth',
        ),
        global_type='dct',
        fusion='sum',
    )
)
