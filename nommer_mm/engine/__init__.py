from .checkpoint_hook import SafeCheckpointHook
from .hooks import CheckedImageLoadingHook, FiniteLossHook, RNGStateHook
from .optim import LayerDecayOptimWrapperConstructor

__all__ = [
    'CheckedImageLoadingHook',
    'FiniteLossHook',
    'LayerDecayOptimWrapperConstructor',
    'RNGStateHook',
    'SafeCheckpointHook',
]
