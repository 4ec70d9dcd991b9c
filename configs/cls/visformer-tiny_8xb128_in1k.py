# Visformer-Ti, ImageNet-1K at 224 (78.6 top-1 in the paper): Visformer-S's
# recipe with the tiny backbone.
_base_ = ['./visformer-small_8xb128_in1k.py']

model = dict(backbone=dict(arch='tiny'), head=dict(in_channels=384))
