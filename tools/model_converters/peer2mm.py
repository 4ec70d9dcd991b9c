#!/usr/bin/env python3
"""Convert a GC ViT, Visformer or CoTNet checkpoint to an OpenMMLab one.

    python tools/model_converters/peer2mm.py {gcvit,visformer,cotnet} SRC DST
        [--layout auto|nvlabs|timm|reference] [--backbone-only] [--ema]
        [--num-heads N]

Without ``--backbone-only`` DST is an mmpretrain ImageClassifier checkpoint
(``backbone.*``, ``head.fc.*``) that loads with ``strict=True`` into the
matching ``configs/cls/`` model (backbone ``out_indices=(3,)``, global
average pooling, ``LinearClsHead``). With it, DST holds only the backbone,
for ``init_cfg=dict(type='Pretrained', checkpoint=DST)`` in detection and
segmentation configs. The backbone settings found are printed.
"""

from __future__ import annotations

import argparse
import sys

from nommer_mm.checkpoint_safety import (
    CheckpointFileError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)
from nommer_mm.converters import ConversionError, save_converted
from nommer_mm.converters.peers import CONVERTERS

BACKBONE_TYPES = {'gcvit': 'GCViT', 'visformer': 'Visformer', 'cotnet': 'CoTNet'}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', choices=sorted(CONVERTERS))
    parser.add_argument('src', help='source checkpoint (.pth / .pth.tar)')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument(
        '--layout',
        default='auto',
        help='source key layout: auto (detect); gcvit: nvlabs or timm; '
        'visformer: reference or timm; cotnet: reference',
    )
    parser.add_argument('--backbone-only', action='store_true')
    parser.add_argument(
        '--ema',
        action='store_true',
        help='convert `state_dict_ema` instead of the model',
    )
    parser.add_argument(
        '--num-heads',
        type=int,
        default=None,
        help='Visformer heads, for non-zoo checkpoints',
    )
    args = parser.parse_args(argv)

    # A checkpoint from the internet must not run code here: tensors and
    # plain data only (weights_only), nothing registered outside this load.
    try:
        checkpoint = load_checkpoint_file(args.src, map_location='cpu')
    except (CheckpointFileError, UnsafeCheckpointError) as err:
        sys.exit(f'error: {err}')
    kwargs = dict(
        layout=args.layout, backbone_only=args.backbone_only, use_ema=args.ema
    )
    if args.model == 'visformer':
        kwargs['num_heads'] = args.num_heads
    try:
        state_dict, info = CONVERTERS[args.model](checkpoint, **kwargs)
    except ConversionError as err:
        sys.exit(f'error: {err}')
    backbone = dict(type=BACKBONE_TYPES[args.model], **info)
    if not args.backbone_only:
        backbone['out_indices'] = (3,)
    meta = dict(
        source=str(args.src), converter=f'peer2mm {args.model}', backbone=backbone
    )
    save_converted(state_dict, meta, args.dst)


if __name__ == '__main__':
    main()
