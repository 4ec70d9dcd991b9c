from .cotnet import CoTNet
from .gcvit import GCViT
from .nommer import NomMer
from .visformer import Visformer

__all__ = ['CoTNet', 'GCViT', 'NomMer', 'Visformer']
