from .checkpoint_hook import SafeCheckpointHook
from .hooks import FiniteLossHook, RNGStateHook
from .optim import LayerDecayOptimWrapperConstructor

__all__ = [
    'FiniteLossHook',
    'LayerDecayOptimWrapperConstructor',
    'RNGStateHook',
    'SafeCheckpointHook',
]
