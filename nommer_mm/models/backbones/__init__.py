from .nommer import NomMer

__all__ = ['NomMer']
