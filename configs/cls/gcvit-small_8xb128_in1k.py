# GC ViT (small), ImageNet-1K at 224. NVlabs/GCVit configs/gc_vit_small.yml:
# lr 1e-3 instead of 5e-3 and no model EMA, otherwise as tiny.
_base_ = ['./gcvit-tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3), head=dict(in_channels=768)
)

optim_wrapper = dict(optimizer=dict(lr=1e-3))
custom_hooks = [dict(type='RNGStateHook')]  # no EMA
