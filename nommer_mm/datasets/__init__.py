from .loading import BrokenImageError, CheckedLoadImageFromFile, image_bytes_problem

__all__ = ['BrokenImageError', 'CheckedLoadImageFromFile', 'image_bytes_problem']
