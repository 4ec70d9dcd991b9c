# NomMer-B, ImageNet-1K, 300 epochs at 224 (paper Table 1: 84.5 top-1).
_base_ = './nommer-tiny_8xb128_in1k.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=1024)
)
