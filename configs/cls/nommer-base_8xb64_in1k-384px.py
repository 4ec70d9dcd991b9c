# NomMer-B fine-tuned at 384 (paper Table 1: 84.9 top-1).
_base_ = './nommer-tiny_8xb64_in1k-384px.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=1024)
)
load_from = 'checkpoints/nommer-base_in1k-224.pth'
