"""nommer-mm: NomMer (and its peers GC ViT, Visformer, CoTNet) as an
OpenMMLab 2.x plugin.

Importing the package registers ``type='NomMer'``, ``'GCViT'``,
``'Visformer'`` and ``'CoTNet'`` in MMEngine's root MODELS registry (found
from the mmpretrain, mmdet and mmseg scopes) and the hooks
``RNGStateHook`` and ``SafeCheckpointHook``, and has every backbone's
``init_weights()`` check an ``init_cfg=Pretrained`` file before loading it
(:mod:`nommer_mm.checkpoint_fit`). It changes nothing in how torch loads
files: see :mod:`nommer_mm.checkpoint_safety`.
"""

from .stack import STACK as STACK  # first: stops on a mix of two stacks
from .checkpoint_safety import load_checkpoint_file
from .engine import RNGStateHook, SafeCheckpointHook
from .datasets import CheckedLoadImageFromFile  # noqa: F401  (registers it)
from .models import CoTNet, GCViT, NomMer, Visformer
from .models.backbones.common import StagedBackbone
from .checkpoint_fit import check_pretrained_fits
from .version import __version__

# Every backbone's init_weights() checks an init_cfg=Pretrained file against
# itself before mmengine loads it. Installed here, not in the models, so
# that nommer_mm.models reads no files; Python runs this file before any
# nommer_mm.* submodule (custom_imports=['nommer_mm.models'] included).
StagedBackbone.before_pretrained_load = (check_pretrained_fits,)

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
