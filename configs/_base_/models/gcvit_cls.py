# GC ViT-T classifier: average of the last stage's normed tokens.
_base_ = ['../cls_in1k.py']
model = dict(
    backbone=dict(type='GCViT', arch='tiny', drop_path_rate=0.2, out_indices=(3,)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(in_channels=512),
)
