from .checkpoint_hook import SafeCheckpointHook
from .hooks import FiniteLossHook, RNGStateHook

__all__ = ['FiniteLossHook', 'RNGStateHook', 'SafeCheckpointHook']
