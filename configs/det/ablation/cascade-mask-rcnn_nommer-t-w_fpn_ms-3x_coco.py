# Paper Table 4 ablation, NomMer-T: window-MHSA only.
# Paper (top-1 / box AP / mask AP / mIoU): 81.4 / 50.4 / 43.5 / 44.7; the full model
# (Gumbel nominator over all three contexts) is
# cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py.
_base_ = '../cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/nommer-tiny-w_in1k-224.pth',
        ),
        contexts=('window',),
    )
)
