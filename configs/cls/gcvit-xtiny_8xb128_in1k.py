# GC ViT (xtiny), ImageNet-1K at 224. NVlabs/GCVit configs/gc_vit_xtiny.yml:
# lr 1e-3 instead of 5e-3 (the reference ran 32 images per process; the
# number of processes is not in the config), otherwise as tiny.
_base_ = ['./gcvit-tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='xtiny', drop_path_rate=0.2), head=dict(in_channels=512)
)

optim_wrapper = dict(optimizer=dict(lr=1e-3))
