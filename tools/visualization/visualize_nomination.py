#!/usr/bin/env python3
"""Nomination maps (paper Fig. 4): for every S-NomMer layer, which context
the nominator picked at each position, over the input image:
red = conv context, green = window (local) context, blue = global context.

    python tools/visualization/visualize_nomination.py CONFIG CHECKPOINT IMAGE --out PNG
        [--short-side N]

Works with any config of this repository whose backbone is NomMer
(classifier, detector or segmentor).
"""

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from nommer_mm.checkpoint_safety import mmengine_loads_through_plugin
from nommer_mm.launch import load_config, setup_codebase, stop_on_bad_input

COLOURS = {'conv': (220, 40, 40), 'window': (40, 180, 40), 'global': (40, 90, 230)}


def nomination_maps(model, image_bgr: np.ndarray):
    """Run the backbone on one image; return {layer: (H, W) index map} and
    each layer's context names."""
    tensor = torch.from_numpy(image_bgr).permute(2, 0, 1).contiguous()
    data = model.data_preprocessor(dict(inputs=[tensor]), False)
    backbone = model.backbone
    with torch.no_grad():
        backbone(data['inputs'])
    maps = backbone.nomination_maps()
    if not maps:
        raise SystemExit(
            'this backbone does not nominate (fusion="sum" or a '
            'single context): there is nothing to draw'
        )
    names = {}
    for key in maps:
        i, j = int(key.split('.')[1]), int(key.split('.')[3])
        names[key] = backbone.stages[i].blocks[j].mixer.contexts
    return {k: v[0].cpu().numpy() for k, v in maps.items()}, names


def overlay(image_rgb: np.ndarray, index: np.ndarray, contexts, alpha=0.55):
    H, W = image_rgb.shape[:2]
    palette = np.array([COLOURS[c] for c in contexts], np.uint8)
    colour = palette[index]
    colour = cv2.resize(colour, (W, H), interpolation=cv2.INTER_NEAREST)
    return (image_rgb * (1 - alpha) + colour * alpha).astype(np.uint8)


def draw_figure(image_rgb, maps, names, out: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = len(maps) + 1
    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis('off')
    axes.flat[0].imshow(image_rgb)
    axes.flat[0].set_title('input')
    for ax, (key, index) in zip(list(axes.flat)[1:], maps.items()):
        ax.imshow(overlay(image_rgb, index, names[key]))
        share = np.bincount(index.ravel(), minlength=len(names[key]))
        share = share / share.sum()
        ax.set_title(
            key + '\n' + ' '.join(f'{c[0]}:{s:.0%}' for c, s in zip(names[key], share)),
            fontsize=9,
        )
    fig.legend(
        handles=[Patch(color=np.array(c) / 255, label=n) for n, c in COLOURS.items()],
        loc='lower center',
        ncol=3,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('image')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument(
        '--short-side',
        type=int,
        default=None,
        help='resize the image so its short side is N',
    )
    args = parser.parse_args()

    cfg = load_config(args.config)
    setup_codebase(cfg)
    from mmengine.registry import MODELS
    from mmengine.runner import load_checkpoint

    cfg.model.get('backbone', {}).pop('init_cfg', None)
    model = MODELS.build(cfg.model)
    with stop_on_bad_input(), mmengine_loads_through_plugin():
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    model.eval()
    if type(model.backbone).__name__ != 'NomMer':
        raise SystemExit(
            f'{args.config}: the backbone is '
            f'{type(model.backbone).__name__}, not NomMer'
        )
    image = cv2.imread(args.image)
    if image is None:
        raise SystemExit(f'cannot read image {args.image}')
    if args.short_side:
        s = args.short_side / min(image.shape[:2])
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    maps, names = nomination_maps(model, image)
    draw_figure(image[..., ::-1], maps, names, args.out)
    print(f'wrote {args.out} ({len(maps)} S-NomMer layers)')


if __name__ == '__main__':
    main()
