from .nommer import ConversionError, convert_reference, extract_state_dict
from .save import save_converted

__all__ = [
    'ConversionError',
    'convert_reference',
    'extract_state_dict',
    'save_converted',
]
