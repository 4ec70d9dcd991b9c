# Paper Table 4 ablation, NomMer-T: + conv + DCT global context, summed.
# Paper (top-1 / box AP / mask AP / mIoU): 82.2 / 51.2 / 44.3 / 45.4; the full model
# (Gumbel nominator over all three contexts) is nommer-tiny_8xb128_in1k.py.
_base_ = '../nommer-tiny_8xb128_in1k.py'
model = dict(backbone=dict(global_type='dct', fusion='sum'))
