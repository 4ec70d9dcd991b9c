#!/usr/bin/env python3
"""Turn a checkpoint this repository's training wrote into the weights file
the next configs read.

    python tools/model_converters/publish_model.py SRC DST [--backbone-only]

SRC is a training run's checkpoint (``work_dirs/<config>/epoch_300.pth``;
where the config averages weights (EMA), its ``state_dict`` already holds
the averaged ones). DST keeps the model weights and the dataset classes
only, without optimizer and runner state: the 384 fine-tuning configs read
it as ``load_from`` and the detection and segmentation configs through
``init_cfg=dict(type='Pretrained', prefix='backbone.')``. With
``--backbone-only`` DST holds the backbone alone, without the prefix, for
``init_cfg=dict(type='Pretrained', checkpoint=DST)`` in your own configs.
"""

from __future__ import annotations

import argparse
import sys

from nommer_mm.checkpoint_safety import (
    CheckpointFileError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)
from nommer_mm.converters import ConversionError, extract_state_dict, save_converted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help="a training run's checkpoint (.pth)")
    parser.add_argument('dst', help='where to write the weights')
    parser.add_argument(
        '--backbone-only', action='store_true', help='write the backbone weights alone'
    )
    args = parser.parse_args(argv)
    try:
        checkpoint = load_checkpoint_file(args.src, map_location='cpu')
        if 'state_dict' not in checkpoint:
            raise ConversionError(
                f'{args.src} holds no `state_dict`: not a checkpoint of an '
                'mmengine training run (use nommer2mm.py or peer2mm.py for '
                'checkpoints of other code)'
            )
        state = extract_state_dict(checkpoint)
    except (CheckpointFileError, UnsafeCheckpointError, ConversionError) as err:
        sys.exit(f'error: {err}')
    old_meta = checkpoint.get('meta') or {}
    config = str(old_meta.get('cfg', ''))
    backbone = _backbone_type(config)
    if args.backbone_only:
        state = {
            k[len('backbone.') :]: v
            for k, v in state.items()
            if k.startswith('backbone.')
        }
        if not state:
            sys.exit(f'error: {args.src} holds no `backbone.*` weights')
    meta = dict(source=str(args.src), converter='publish_model', backbone=backbone)
    if 'dataset_meta' in old_meta:
        meta['dataset_meta'] = old_meta['dataset_meta']
    save_converted(state, meta, args.dst)


def _backbone_type(config_text: str) -> dict:
    """The backbone's type and arch as the run's config (kept in the
    checkpoint's meta) gave them; empty where it keeps none."""
    from mmengine.config import Config

    try:
        backbone = Config.fromstring(config_text, file_format='.py').model.backbone
    except Exception:  # no config kept, or one this mmengine cannot read
        return {}
    return {k: backbone[k] for k in ('type', 'arch') if k in backbone}


if __name__ == '__main__':
    main()
