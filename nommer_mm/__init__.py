"""nommer-mm: NomMer (and its peers GC ViT, Visformer, CoTNet) as an
OpenMMLab 2.x plugin.

Importing the package registers ``type='NomMer'``, ``'GCViT'``,
``'Visformer'`` and ``'CoTNet'`` in MMEngine's root MODELS registry (found
from the mmpretrain, mmdet and mmseg scopes) and the hooks
``RNGStateHook`` and ``SafeCheckpointHook``. It changes nothing in how
torch loads files: see :mod:`nommer_mm.checkpoint_safety`.
"""

from .stack import STACK as STACK  # first: stops on a mix of two stacks
from .checkpoint_safety import load_checkpoint_file
from .engine import RNGStateHook, SafeCheckpointHook
from .datasets import CheckedLoadImageFromFile  # noqa: F401  (registers it)
from .models import CoTNet, GCViT, NomMer, Visformer
from .version import __version__

__all__ = [
    'CoTNet',
    'GCViT',
    'NomMer',
    'Visformer',
    'RNGStateHook',
    'SafeCheckpointHook',
    'load_checkpoint_file',
    '__version__',
]
