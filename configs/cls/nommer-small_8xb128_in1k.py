# NomMer-S, ImageNet-1K, 300 epochs at 224 (paper Table 1: 83.7 top-1).
_base_ = './nommer-tiny_8xb128_in1k.py'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3))
