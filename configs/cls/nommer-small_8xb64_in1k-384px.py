# NomMer-S fine-tuned at 384 (paper Table 1: 84.6 top-1).
_base_ = './nommer-tiny_8xb64_in1k-384px.py'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3))
load_from = 'checkpoints/nommer-small_in1k-224.pth'
