from .backbones import NomMer  # registers the backbone

__all__ = ['NomMer']
