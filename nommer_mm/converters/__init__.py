from .nommer import ConversionError, convert_reference, extract_state_dict

__all__ = ['ConversionError', 'convert_reference', 'extract_state_dict']
