"""Checkpoint converters: the reference NomMer layout and the peers'
(timm, NVlabs, the Visformer and CoTNet releases) to this plugin's."""

from .common import ConversionError, extract_state_dict, rename, save_converted
from .nommer import convert_reference

__all__ = [
    'ConversionError',
    'convert_reference',
    'extract_state_dict',
    'rename',
    'save_converted',
]
