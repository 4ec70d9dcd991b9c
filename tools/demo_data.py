"""Procedurally drawn datasets in the layouts OpenMMLab reads, for the demo
and the tests (nothing is downloaded).

Every image shows filled shapes (circle, square, triangle, cross) in random
colours, sizes and places on a noisy background of another colour.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

SHAPES = ('circle', 'square', 'triangle', 'cross')
TEXTURES = ('horizontal', 'vertical', 'diagonal', 'checker')


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple:
    while True:
        c = rng.integers(0, 256, size=3)
        if np.abs(c.astype(int) - avoid.astype(int)).sum() > 180:
            return tuple(int(v) for v in c)


def draw_shape(
    canvas: np.ndarray,
    mask: np.ndarray | None,
    shape: str,
    cx: int,
    cy: int,
    r: int,
    colour: tuple,
    value: int = 1,
) -> None:
    """Draw a filled ``shape`` of radius ``r`` centred at (cx, cy) on
    ``canvas`` (H, W, 3), and ``value`` on ``mask`` (H, W) when given."""
    targets = [(canvas, colour)] + ([(mask, int(value))] if mask is not None else [])
    for img, col in targets:
        if shape == 'circle':
            cv2.circle(img, (cx, cy), r, col, -1)
        elif shape == 'square':
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), col, -1)
        elif shape == 'triangle':
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(img, [pts], col)
        elif shape == 'cross':
            t = max(r // 3, 1)
            cv2.rectangle(img, (cx - r, cy - t), (cx + r, cy + t), col, -1)
            cv2.rectangle(img, (cx - t, cy - r), (cx + t, cy + r), col, -1)
        else:
            raise ValueError(f'unknown shape {shape!r}; one of {SHAPES}')


def shape_polygon(shape: str, cx: int, cy: int, r: int) -> list[float]:
    """Outline of a shape as a flat COCO polygon [x0, y0, x1, y1, ...]."""
    if shape == 'circle':
        a = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        pts = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)
    elif shape == 'square':
        pts = np.array(
            [[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]],
            float,
        )
    elif shape == 'triangle':
        pts = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]], float)
    else:
        t = max(r // 3, 1)
        pts = np.array(
            [
                [cx - t, cy - r],
                [cx + t, cy - r],
                [cx + t, cy - t],
                [cx + r, cy - t],
                [cx + r, cy + t],
                [cx + t, cy + t],
                [cx + t, cy + r],
                [cx - t, cy + r],
                [cx - t, cy + t],
                [cx - r, cy + t],
                [cx - r, cy - t],
                [cx - t, cy - t],
            ],
            float,
        )
    return [float(v) for v in pts.reshape(-1)]


def draw_texture(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Two-colour stripes (horizontal / vertical / diagonal) or a checker
    pattern, random frequency, phase and colours, plus pixel noise."""
    y, x = np.mgrid[0:size, 0:size].astype(float)
    freq = rng.uniform(0.15, 0.45) * 64 / size
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 'horizontal':
        wave = np.sin(freq * y + phase)
    elif kind == 'vertical':
        wave = np.sin(freq * x + phase)
    elif kind == 'diagonal':
        wave = np.sin(freq * (x + y) / np.sqrt(2) + phase)
    elif kind == 'checker':
        wave = np.sin(freq * x + phase) * np.sin(freq * y + phase)
    else:
        raise ValueError(f'unknown texture {kind!r}; one of {TEXTURES}')
    a = rng.integers(0, 256, size=3)
    b = rng.integers(0, 256, size=3)
    img = np.where(wave[..., None] > 0, a, b) + rng.normal(0, 18, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_imagenet_layout(
    root: str | Path,
    per_class: dict[str, int],
    size: int = 64,
    seed: int = 0,
    kind: str = 'textures',
) -> Path:
    """``root/<split>/<class>/<n>.png``; ``per_class`` maps split name ->
    images per class. ``kind='textures'``: the classes of ``TEXTURES``
    (learnt from scratch in a few hundred steps); ``'shapes'``: one shape
    of ``SHAPES`` per image (harder: a transformer from scratch needs many
    epochs)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = TEXTURES if kind == 'textures' else SHAPES
    for split, n in per_class.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if kind == 'textures':
                    img = draw_texture(rng, name, size)
                else:
                    img = _background(rng, size, size)
                    r = int(rng.integers(size // 6, size // 3))
                    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
                    draw_shape(img, None, name, cx, cy, r, _colour(rng, img[0, 0]))
                cv2.imwrite(str(folder / f'{i:05d}.png'), img)
    return root


def make_coco_layout(
    root: str | Path,
    splits: dict[str, int],
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    max_objects: int = 3,
) -> Path:
    """COCO instances: ``root/<split>/*.png`` and
    ``root/annotations/instances_<split>.json`` with polygon masks; one
    category per shape."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    H, W = size
    categories = [dict(id=i + 1, name=s) for i, s in enumerate(SHAPES)]
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    for split, n in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img = _background(rng, H, W)
            name = f'{i:05d}.png'
            images.append(dict(id=i + 1, file_name=name, height=H, width=W))
            for _ in range(int(rng.integers(1, max_objects + 1))):
                label = int(rng.integers(len(SHAPES)))
                r = int(rng.integers(min(H, W) // 8, min(H, W) // 4))
                cx = int(rng.integers(r, W - r))
                cy = int(rng.integers(r, H - r))
                draw_shape(img, None, SHAPES[label], cx, cy, r, _colour(rng, img[0, 0]))
                poly = shape_polygon(SHAPES[label], cx, cy, r)
                xs, ys = poly[0::2], poly[1::2]
                x0, y0 = min(xs), min(ys)
                bw, bh = max(xs) - x0, max(ys) - y0
                annotations.append(
                    dict(
                        id=len(annotations) + 1,
                        image_id=i + 1,
                        category_id=label + 1,
                        segmentation=[poly],
                        area=float(bw * bh),
                        bbox=[x0, y0, bw, bh],
                        iscrowd=0,
                    )
                )
            cv2.imwrite(str(root / split / name), img)
        (root / 'annotations' / f'instances_{split}.json').write_text(
            json.dumps(
                dict(images=images, annotations=annotations, categories=categories)
            )
        )
    return root


def make_ade_layout(
    root: str | Path,
    splits: dict[str, int],
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> Path:
    """ADE20K layout: ``root/images/<split>/*.jpg`` and
    ``root/annotations/<split>/*.png`` with labels 0 = background (ignored
    with ``reduce_zero_label``), 1..4 = the shapes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    H, W = size
    for split, n in splits.items():
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = _background(rng, H, W)
            mask = np.zeros((H, W), np.uint8)
            for _ in range(int(rng.integers(2, 5))):
                label = int(rng.integers(len(SHAPES)))
                r = int(rng.integers(min(H, W) // 8, min(H, W) // 3))
                cx = int(rng.integers(r, W - r))
                cy = int(rng.integers(r, H - r))
                draw_shape(
                    img,
                    mask,
                    SHAPES[label],
                    cx,
                    cy,
                    r,
                    _colour(rng, img[0, 0]),
                    value=label + 1,
                )
            cv2.imwrite(str(root / 'images' / split / f'{i:05d}.jpg'), img)
            cv2.imwrite(str(root / 'annotations' / split / f'{i:05d}.png'), mask)
    return root
