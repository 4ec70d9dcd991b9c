from .backbones import CoTNet, GCViT, NomMer, Visformer  # registers them

__all__ = ['CoTNet', 'GCViT', 'NomMer', 'Visformer']
