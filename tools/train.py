#!/usr/bin/env python3
"""Train any config of this repository (classification, detection or
segmentation): the codebase comes from the config's ``default_scope``.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]
"""

import argparse

from nommer_mm.checkpoint_safety import mmengine_loads_through_plugin
from nommer_mm.launch import (
    add_finite_loss_check,
    add_launch_args,
    auto_scale_lr_note,
    build_runner,
    dist_timeout,
    enable_auto_scale_lr,
    prepare,
    resolve_resume,
    shutdown_distributed,
    stop_on_bad_input,
    watch_peers,
)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work '
        'dir when no path is given',
    )
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision training'
    )
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the real total batch size',
    )
    add_launch_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = prepare(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg, args.config)
    resolve_resume(cfg, args.resume)
    add_finite_loss_check(cfg)
    with stop_on_bad_input(), mmengine_loads_through_plugin():
        runner = build_runner(cfg)
        if args.auto_scale_lr and runner.rank == 0:
            print(auto_scale_lr_note(cfg, runner.world_size), flush=True)
        with watch_peers(dist_timeout(cfg)):
            runner.train()
    shutdown_distributed()


if __name__ == '__main__':
    main()
