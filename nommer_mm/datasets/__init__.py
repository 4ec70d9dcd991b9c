from .loading import (
    BrokenImageError,
    CheckedLoadImageFromFile,
    check_image_loading,
    image_bytes_problem,
)

__all__ = [
    'BrokenImageError',
    'CheckedLoadImageFromFile',
    'check_image_loading',
    'image_bytes_problem',
]
