# Paper Table 4 ablation, NomMer-T: + conv context, summed.
# Paper (top-1 / box AP / mask AP / mIoU): 81.7 / 50.6 / 43.8 / 44.8; the full model
# (Gumbel nominator over all three contexts) is nommer-tiny_8xb128_in1k.py.
_base_ = '../nommer-tiny_8xb128_in1k.py'
model = dict(backbone=dict(contexts=('conv', 'window'), fusion='sum'))
