# Paper Table 4 ablation, NomMer-T: window-MHSA only.
# Paper (top-1 / box AP / mask AP / mIoU): 81.4 / 50.4 / 43.5 / 44.7; the full model
# (Gumbel nominator over all three contexts) is nommer-tiny_8xb128_in1k.py.
_base_ = '../nommer-tiny_8xb128_in1k.py'
model = dict(backbone=dict(contexts=('window',)))
