# UperNet NomMer-T with layer-wise learning-rate decay, the common recipe for
# fine-tuning transformer backbones in dense tasks: a parameter at depth d of
# the backbone's D depths learns at lr * 0.9 ** (D - 1 - d) (the stem
# slowest; the decode heads at the full rate). Not a setting of the paper.
_base_ = './upernet_nommer-t_8xb2-160k_ade20k-512x512.py'

optim_wrapper = dict(
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9),
)
