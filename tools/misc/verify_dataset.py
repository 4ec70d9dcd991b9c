#!/usr/bin/env python3
"""Check every file a config's train/val/test datasets reference before a
long job: classification (image folders or annotation lists), detection
(COCO-style) and segmentation (image + label map) layouts.

    python tools/misc/verify_dataset.py CONFIG [--splits train val test]
        [--workers N] [--cfg-options k=v ...]

Lists missing, zero-byte, unreadable or truncated images and label maps,
label maps whose size differs from their image, and boxes that lie outside
their image, one line each naming the file; exits 1 when anything is wrong.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

from nommer_mm.launch import load_config, setup_codebase


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--splits', nargs='+', default=['train', 'val', 'test'])
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def _image_problem(path: str) -> tuple[str | None, tuple | None]:
    """(why ``path`` is no usable image, or None; its (W, H))."""
    if not osp.exists(path):
        return 'missing', None
    if osp.getsize(path) == 0:
        return 'zero bytes', None
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decodes every pixel: a truncated file raises here
            return None, img.size
    except Exception as err:
        reason = str(err) or type(err).__name__
        kind = 'truncated' if 'truncated' in reason.lower() else 'unreadable'
        return f'{kind} ({reason})', None


def check_item(item: dict) -> list[str]:
    """Problems of one sample: its image, label map and boxes."""
    problems = []
    problem, size = _image_problem(item['img'])
    if problem:
        problems.append(f'{item["img"]}: {problem}')
    if item.get('seg'):
        seg_problem, seg_size = _image_problem(item['seg'])
        if seg_problem:
            problems.append(f'{item["seg"]}: label map {seg_problem}')
        elif size and seg_size != size:
            problems.append(
                f'{item["seg"]}: label map {seg_size[0]}x'
                f'{seg_size[1]}, image {size[0]}x{size[1]}'
            )
    if size:
        W, H = size
        for box in item.get('boxes', []):
            x1, y1, x2, y2 = box
            if x1 < 0 or y1 < 0 or x2 > W or y2 > H or x2 <= x1 or y2 <= y1:
                problems.append(
                    f'{item["img"]}: box {list(box)} lies outside '
                    f'the {W}x{H} image or is empty'
                )
    return problems


def collect(dataset) -> list[dict]:
    """One entry per distinct image: its path, label map and boxes."""
    items = {}
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        path = info.get('img_path')
        if path is None or path in items:
            continue
        items[path] = dict(
            img=path,
            seg=info.get('seg_map_path'),
            boxes=[
                tuple(float(v) for v in inst['bbox'])
                for inst in info.get('instances', [])
                if 'bbox' in inst
            ],
        )
    return list(items.values())


def build_dataset(cfg, split: str):
    """The split's dataset with its annotations read, without its pipeline
    (so missing annotation files show up here, images in the check)."""
    import copy

    from mmengine.registry import DATASETS

    loader = cfg.get(f'{split}_dataloader')
    if not loader:
        return None
    dataset_cfg = copy.deepcopy(loader['dataset'])

    def strip(node):
        if isinstance(node, dict):
            if 'pipeline' in node:
                node['pipeline'] = []
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(dataset_cfg)
    return DATASETS.build(dataset_cfg)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    setup_codebase(cfg)
    from mmengine.utils import track_parallel_progress, track_progress

    bad = 0
    seen = set()
    for split in args.splits:
        try:
            dataset = build_dataset(cfg, split)
        except Exception as err:  # e.g. a missing or broken annotation file
            print(f'[{split}] cannot read the dataset: {type(err).__name__}: {err}')
            bad += 1
            continue
        if dataset is None:
            continue
        items = [it for it in collect(dataset) if it['img'] not in seen]
        seen.update(it['img'] for it in items)
        print(f'[{split}] checking {len(items)} images with {args.workers} workers')
        if args.workers > 1 and len(items) > 1:
            results = track_parallel_progress(
                check_item, items, args.workers, chunksize=16
            )
        else:
            results = track_progress(check_item, items)
        problems = [p for result in results for p in result]
        for problem in problems:
            print(f'[{split}] {problem}')
        print(f'[{split}] {len(problems)} problems in {len(items)} images')
        bad += len(problems)
    print('dataset OK' if not bad else f'{bad} problems found')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
