# GC ViT (xxtiny), ImageNet-1K at 224. NVlabs/GCVit configs/gc_vit_xxtiny.yml:
# the same recipe as gc_vit_tiny.yml (lr 5e-3, EMA 0.9998).
_base_ = ['./gcvit-tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='xxtiny', drop_path_rate=0.2), head=dict(in_channels=512)
)
