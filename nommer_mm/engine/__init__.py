from .checkpoint_hook import SafeCheckpointHook
from .hooks import RNGStateHook

__all__ = ['RNGStateHook', 'SafeCheckpointHook']
