from .shapes import (
    SHAPES,
    TEXTURES,
    make_ade_layout,
    make_coco_layout,
    make_imagenet_layout,
)

__all__ = [
    'SHAPES',
    'TEXTURES',
    'make_ade_layout',
    'make_coco_layout',
    'make_imagenet_layout',
]
