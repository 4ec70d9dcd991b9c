#!/usr/bin/env python3
"""Convert a reference NomMer checkpoint to an OpenMMLab one.

    python tools/model_converters/nommer2mm.py SRC DST [--backbone-only]
        [--arch tiny|small|base|'{"embed_dims": ..., ...}'] [--ema]

Without ``--backbone-only`` DST is an mmpretrain ImageClassifier checkpoint
(``backbone.*``, ``head.fc.*``) that loads with ``strict=True`` into
``ImageClassifier(backbone=NomMer(arch=arch, out_type='cls_token',
out_indices=(3,)), head=LinearClsHead(num_classes, 8C))``. With it, DST holds
only the backbone, for ``init_cfg=dict(type='Pretrained', checkpoint=DST)``
in detection and segmentation configs.
"""

from __future__ import annotations

import argparse
import json
import sys

from nommer_mm.checkpoint_safety import (
    CheckpointFileError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)
from nommer_mm.converters import (
    ConversionError,
    convert_reference,  # noqa
    save_converted,
)


def parse_arch(text: str | None):
    if text is None:
        return None
    text = text.strip()
    return json.loads(text) if text.startswith('{') else text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('src', help='reference checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument(
        '--backbone-only', action='store_true', help='write the backbone weights alone'
    )
    parser.add_argument(
        '--arch',
        default=None,
        help='zoo name or JSON dict; required when the checkpoint is no zoo arch',
    )
    parser.add_argument(
        '--ema', action='store_true', help='convert `state_dict_ema` instead of `model`'
    )
    args = parser.parse_args(argv)

    # A checkpoint from the internet must not run code here: tensors and
    # plain data only (weights_only), nothing registered outside this load.
    try:
        checkpoint = load_checkpoint_file(args.src, map_location='cpu')
    except (CheckpointFileError, UnsafeCheckpointError) as err:
        sys.exit(f'error: {err}')
    try:
        state_dict, info = convert_reference(
            checkpoint,
            arch=parse_arch(args.arch),
            backbone_only=args.backbone_only,
            use_ema=args.ema,
        )
    except ConversionError as err:
        sys.exit(f'error: {err}')
    backbone = dict(type='NomMer', **info)
    if not args.backbone_only:
        backbone.update(out_type='cls_token', out_indices=(3,))
    meta = dict(source=str(args.src), converter='nommer2mm', backbone=backbone)
    if not args.backbone_only:
        meta['num_classes'] = int(state_dict['head.fc.weight'].shape[0])
    save_converted(state_dict, meta, args.dst)


if __name__ == '__main__':
    main()
