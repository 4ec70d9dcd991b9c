#!/usr/bin/env python3
"""The main job on embedded default data: generate a small texture dataset
(ImageNet folder layout), train NomMer-T on it with 2 processes through
tools/dist_train.sh, evaluate top-1 with tools/dist_test.sh, and draw the
nomination maps of a held-out image. With ``--tasks cls det seg`` it also
trains Cascade Mask R-CNN and UperNet with NomMer-T on generated COCO and
ADE20K-layout shape data, evaluates them (CocoMetric, IoUMetric) and draws
their predictions.

    python tools/demo.py [--tasks cls det seg] [--out work_dirs/demo]
        [--gpus 2] [--iters N] [--lr LR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLS_CONFIG = ROOT / 'configs/cls/nommer-tiny_2xb16_textures-demo.py'
DET_CONFIG = ROOT / 'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
SEG_CONFIG = ROOT / 'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py'


# mmengine's progress lines: "... - INFO - Iter(train) [ 25/300]  ... eta:
# 0:01:02  ... loss: 1.3812 ..."
PROGRESS = re.compile(
    r'((?:Iter|Epoch)\((?:train|val|test)\)\s*'
    r'(?:\[\s*\d+\])?\s*\[\s*\d+/\d+\])(.*)'
)


def progress_line(line: str) -> str | None:
    """A short terminal line for a progress line of the log, else None."""
    match = PROGRESS.search(line)
    if not match:
        return None
    where, rest = match.groups()
    if '(train)' in where:
        fields = dict(re.findall(r'(eta|loss|lr): (\S+)', rest))
        return (
            '  '
            + where
            + ''.join(
                f'  {k} {fields[k]}' for k in ('loss', 'lr', 'eta') if k in fields
            )
        )
    metrics = re.findall(r'(\S+/\S+|mIoU|aAcc|mAcc): (\S+)', rest)
    return '  ' + where + ''.join(f'  {k} {v}' for k, v in metrics) if metrics else None


def run(cmd: list[str], log: Path) -> None:
    """Run ``cmd``, its whole output to ``log``, its progress to the
    terminal as it comes."""
    print('$ ' + ' '.join(str(c) for c in cmd), flush=True)
    with open(log, 'w') as f:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            text=True,
            bufsize=1,
        )
        for line in proc.stdout:
            f.write(line)
            short = progress_line(line)
            if short:
                print(short, flush=True)
        proc.wait()
    if proc.returncode:
        tail = log.read_text().splitlines()[-30:]
        sys.exit(
            '\n'.join(tail) + f'\nfailed (exit {proc.returncode}); full log: {log}'
        )


def classification(args, out: Path) -> None:
    from demo_data import make_imagenet_layout

    data = out / 'textures'
    if not (data / 'val').is_dir():
        make_imagenet_layout(data, {'train': 200, 'val': 50}, size=64)
        print(f'generated 4-class texture data (800 train, 200 val) at {data}')
    work = out / 'cls'
    work.mkdir(parents=True, exist_ok=True)
    options = [
        f'data_root={data}',
        f'train_dataloader.dataset.data_root={data}',
        f'val_dataloader.dataset.data_root={data}',
        f'test_dataloader.dataset.data_root={data}',
    ]
    if args.iters:
        # the config warms up for 30 of its 300 iterations and logs every
        # 25; a shorter run keeps those shares, with a cosine phase of at
        # least one iteration and logged points for the curves
        warmup = max(1, min(30, args.iters // 10))
        options += [
            f'train_cfg.max_iters={args.iters}',
            f'train_cfg.val_interval={args.iters}',
            f'default_hooks.checkpoint.interval={args.iters}',
            f'default_hooks.logger.interval={max(1, min(25, args.iters // 12))}',
            f'param_scheduler.0.end={warmup}',
            f'param_scheduler.1.begin={warmup}',
            f'param_scheduler.1.end={max(args.iters, warmup + 1)}',
        ]
    if args.lr is not None:
        # the config's floor, eta_min 1e-5, is 1/20 of its lr 2e-4
        options += [
            f'optim_wrapper.optimizer.lr={args.lr}',
            f'param_scheduler.1.eta_min={args.lr / 20}',
        ]
    run(
        [
            'bash',
            ROOT / 'tools/dist_train.sh',
            CLS_CONFIG,
            args.gpus,
            '--work-dir',
            work,
            '--cfg-options',
            *options,
        ],
        work / 'train.log',
    )
    ckpt = (work / 'last_checkpoint').read_text().strip()
    metrics = work / 'metrics.json'
    run(
        [
            'bash',
            ROOT / 'tools/dist_test.sh',
            CLS_CONFIG,
            ckpt,
            args.gpus,
            '--work-dir',
            work,
            '--out',
            metrics,
            '--cfg-options',
            *options,
        ],
        work / 'test.log',
    )
    top1 = json.loads(metrics.read_text())['accuracy/top1']
    image = sorted((data / 'val' / 'checker').glob('*.png'))[0]
    picture = work / 'nomination.png'
    run(
        [
            sys.executable,
            ROOT / 'tools/visualization/visualize_nomination.py',
            CLS_CONFIG,
            ckpt,
            image,
            '--out',
            picture,
            '--short-side',
            '224',
        ],
        work / 'visualize.log',
    )

    curves = work / 'curves.png'
    run(
        [
            sys.executable,
            ROOT / 'tools/analysis_tools/analyze_logs.py',
            work,
            '--keys',
            'loss',
            'lr',
            '--out',
            curves,
        ],
        work / 'curves.log',
    )

    chance = 100 / 4
    print(
        f'\nclassification: top-1 {top1:.1f}% on 200 held-out images '
        f'(chance {chance:.0f}%)'
    )
    print(f'  checkpoint:      {ckpt}')
    print(f'  metrics:         {metrics}')
    print(f'  nomination maps: {picture}')
    print(f'  training curves: {curves}')
    print(f'  logs:            {work}/train.log, test.log')
    if top1 < 2 * chance:
        sys.exit(f'top-1 {top1:.1f}% is not well above chance: the demo did not learn')


def dense(task: str, args, out: Path) -> None:
    """Detection (Cascade Mask R-CNN) or segmentation (UperNet) with
    NomMer-T on generated shapes: train, evaluate, draw predictions."""
    from demo_data import make_ade_layout, make_coco_layout
    from demo_configs import small_det_config, small_seg_config

    work = out / task
    work.mkdir(parents=True, exist_ok=True)
    iters = args.iters or 300
    if task == 'det':
        data = out / 'coco_shapes'
        if not (data / 'annotations').is_dir():
            make_coco_layout(data, {'train': 300, 'val': 30}, size=(192, 256))
        config = small_det_config(
            data,
            work / 'config.py',
            DET_CONFIG,
            iters=iters,
            scale=(256, 192),
            lr=2e-4 if args.lr is None else args.lr,
            batch=4,
        )
        image = data / 'val' / '00000.png'
        metric_keys = ('coco/bbox_mAP', 'coco/segm_mAP')
    else:
        data = out / 'ade_shapes'
        if not (data / 'images').is_dir():
            make_ade_layout(data, {'training': 300, 'validation': 30}, size=(192, 256))
        config = small_seg_config(
            data,
            work / 'config.py',
            SEG_CONFIG,
            iters=iters,
            crop=(128, 128),
            lr=2e-4 if args.lr is None else args.lr,
            batch=4,
        )
        image = data / 'images' / 'validation' / '00000.jpg'
        metric_keys = ('mIoU', 'aAcc')
    run(
        ['bash', ROOT / 'tools/dist_train.sh', config, args.gpus, '--work-dir', work],
        work / 'train.log',
    )
    ckpt = (work / 'last_checkpoint').read_text().strip()
    metrics = work / 'metrics.json'
    run(
        [
            'bash',
            ROOT / 'tools/dist_test.sh',
            config,
            ckpt,
            args.gpus,
            '--work-dir',
            work,
            '--out',
            metrics,
        ],
        work / 'test.log',
    )
    picture = work / 'predictions.png'
    run(
        [
            sys.executable,
            ROOT / 'tools/visualization/visualize_predictions.py',
            config,
            ckpt,
            image,
            '--out',
            picture,
        ],
        work / 'visualize.log',
    )
    curves = work / 'curves.png'
    run(
        [
            sys.executable,
            ROOT / 'tools/analysis_tools/analyze_logs.py',
            work,
            '--keys',
            'loss',
            'lr',
            '--out',
            curves,
        ],
        work / 'curves.log',
    )
    values = json.loads(metrics.read_text())
    name = 'detection' if task == 'det' else 'segmentation'
    print(
        f'\n{name}: '
        + ', '.join(f'{k} {values[k]:.3f}' for k in metric_keys)
        + f' on {30} generated images'
    )
    print(f'  config:      {config}')
    print(f'  checkpoint:  {ckpt}')
    print(f'  predictions: {picture}')
    print(f'  curves:      {curves}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--tasks',
        nargs='+',
        default=['cls'],
        choices=['cls', 'det', 'seg'],
        help='which demos to run (default: cls)',
    )
    parser.add_argument(
        '--out',
        default='work_dirs/demo',
        help='where data, checkpoints and pictures go',
    )
    parser.add_argument(
        '--gpus', type=int, default=2, help='processes (GPUs, or CPU processes on gloo)'
    )
    parser.add_argument(
        '--iters', type=int, default=None, help='training iterations (default: 300)'
    )
    parser.add_argument(
        '--lr',
        type=float,
        default=None,
        help='peak learning rate (default: 2e-4, the total batch of 32)',
    )
    args = parser.parse_args()
    if args.iters is not None and args.iters < 1:
        parser.error(f'--iters {args.iters}: give 1 or more training iterations')
    if args.lr is not None and args.lr < 0:
        parser.error(f'--lr {args.lr}: give a learning rate of 0 or more')
    os.environ.setdefault('PORT', '29512')
    out = (ROOT / args.out).resolve()
    for task in args.tasks:
        if task == 'cls':
            classification(args, out)
        else:
            dense(task, args, out)


if __name__ == '__main__':
    main()
