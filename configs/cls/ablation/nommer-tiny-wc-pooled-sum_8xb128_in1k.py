# Paper Table 4 ablation, NomMer-T: + conv + pooled global context, summed.
# Paper (top-1 / box AP / mask AP / mIoU): 82.0 / 50.9 / 44.0 / 45.1; the full model
# (Gumbel nominator over all three contexts) is nommer-tiny_8xb128_in1k.py.
_base_ = '../nommer-tiny_8xb128_in1k.py'
model = dict(backbone=dict(global_type='pooled', fusion='sum'))
