# NomMer-T classifier: the reference head reads the class token.
_base_ = ['../cls_in1k.py']
model = dict(
    backbone=dict(
        type='NomMer',
        arch='tiny',
        img_size=224,
        drop_path_rate=0.1,
        out_indices=(3,),
        out_type='cls_token',
    ),
    neck=None,
    head=dict(in_channels=768),
)
