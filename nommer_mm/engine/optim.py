"""Layer-wise learning-rate decay for any model whose backbone reports
``get_layer_depth`` (ours do; so do mmpretrain's), in every codebase."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS


def _depth_function(model: nn.Module) -> Callable[[str], tuple[int, int]]:
    """``name -> (depth, number of depths)`` for a model's parameters: the
    model's own ``get_layer_depth`` (mmpretrain's ImageClassifier), else
    its backbone's with the ``backbone.`` prefix (mmdet detectors, mmseg
    segmentors), under which necks and heads take the last depth."""
    if hasattr(model, 'get_layer_depth'):
        return model.get_layer_depth
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and hasattr(backbone, 'get_layer_depth'):
        return lambda name: backbone.get_layer_depth(name, prefix='backbone.')
    raise TypeError(
        f'layer-wise lr decay needs get_layer_depth on {type(model).__name__}'
        ' or on its backbone; neither has it'
    )


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor (``custom_keys``, decay multipliers,
    ...), then ``paramwise_cfg.layer_decay_rate`` r: a parameter at depth d
    of D gets its learning rate times ``r ** (D - 1 - d)``, so the stem
    learns slowest and necks and heads at the full rate.

    Registered in mmengine's root registry, so mmpretrain, mmdet and mmseg
    configs all find it as ``constructor='LayerDecayOptimWrapperConstructor'``
    (mmpretrain's own ``LearningRateDecayOptimWrapperConstructor`` serves
    classifiers only: it asks the whole model for ``get_layer_depth``).
    """

    def add_params(
        self, params: list, module: nn.Module, prefix: str = '', **kwargs
    ) -> None:
        super().add_params(params, module, prefix, **kwargs)
        if prefix:  # a recursive call: the top-level one scales all groups
            return
        rate = self.paramwise_cfg.get('layer_decay_rate', 1.0)
        if not 0 < rate <= 1:
            raise ValueError(
                f'paramwise_cfg.layer_decay_rate={rate!r}; expected a number in (0, 1]'
            )
        depth_of = _depth_function(module)
        names = {id(p): n for n, p in module.named_parameters()}
        for group in params:
            depth, num = depth_of(names[id(group['params'][0])])
            scale = rate ** (num - 1 - depth)
            group['lr'] = group.get('lr', self.base_lr) * scale
            group['layer_depth'] = depth
