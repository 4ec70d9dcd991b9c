# CoTNet-50 classifier.
_base_ = ['../cls_in1k.py']
model = dict(
    backbone=dict(type='CoTNet', arch='cotnet50', drop_path_rate=0.1, out_indices=(3,)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(in_channels=2048),
)
