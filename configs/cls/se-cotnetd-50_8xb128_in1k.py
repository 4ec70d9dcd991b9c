# SE-CoTNetD-50, ImageNet-1K at 224: CoTNet-50's recipe
# (cot_experiments/CoTNet-50-350epoch, applied unchanged) with this backbone.
_base_ = ['./cotnet-50_8xb128_in1k.py']

model = dict(backbone=dict(arch='se-cotnetd50'))
