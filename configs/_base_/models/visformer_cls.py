# Visformer-S classifier.
_base_ = ['../cls_in1k.py']
model = dict(
    backbone=dict(type='Visformer', arch='small', drop_path_rate=0.0, out_indices=(3,)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(in_channels=768),
)
