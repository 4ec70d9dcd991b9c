"""nommer-mm: NomMer (and its peers GC ViT, Visformer, CoTNet) as an
OpenMMLab 2.x plugin.

Importing the package registers ``type='NomMer'``, ``'GCViT'``,
``'Visformer'`` and ``'CoTNet'`` in MMEngine's root MODELS registry (found
from the mmpretrain, mmdet and mmseg scopes) and allow-lists
the types in mmengine checkpoints for ``torch.load(weights_only=True)``.
"""
from .checkpoint_safety import allow_mmengine_checkpoint_types
from .engine import RNGStateHook
from .models import CoTNet, GCViT, NomMer, Visformer
from .version import __version__

allow_mmengine_checkpoint_types()

__all__ = ['CoTNet', 'GCViT', 'NomMer', 'Visformer', 'RNGStateHook',
           'allow_mmengine_checkpoint_types', '__version__']
