#!/usr/bin/env python3
"""Evaluate a checkpoint with any config of this repository.

python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--tta]
    [--out FILE] [--dump FILE.pkl] [--cfg-options k=v ...] [--launcher ...]
"""

import argparse
from pathlib import Path

from nommer_mm.checkpoint_safety import mmengine_loads_through_plugin
from nommer_mm.launch import (
    add_launch_args,
    build_runner,
    check_weights_fit,
    dist_timeout,
    prepare,
    shutdown_distributed,
    stop_on_bad_input,
    use_tta,
    watch_peers,
)


def parse_args():
    parser = argparse.ArgumentParser(description='Test a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where to save the metrics')
    parser.add_argument('--out', help='dump the metrics (json) to this file')
    parser.add_argument(
        '--dump',
        help="also save every evaluated sample's prediction to this .pkl file "
        "(mmengine's DumpResults, gathered like the metrics)",
    )
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation from the config '
        '(tta_model / tta_pipeline), e.g. multi-scale + flip',
    )
    add_launch_args(parser)
    return parser.parse_args()


def add_dump(cfg, path: str) -> None:
    """Append mmengine's DumpResults to the test evaluator, collecting as the
    config's first metric does (through the process group or a directory)."""
    if not path.endswith(('.pkl', '.pickle')):
        raise SystemExit(f'--dump {path}: the file must end in .pkl or .pickle')
    metrics = cfg.test_evaluator
    metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    collect = metrics[0].get('collect_device', 'cpu')
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cfg.test_evaluator = [
        *metrics,
        dict(type='DumpResults', out_file_path=path, collect_device=collect),
    ]


def main():
    args = parse_args()
    cfg = prepare(args)
    cfg.load_from = args.checkpoint
    if args.tta:
        use_tta(cfg, args.config)
    if args.dump:
        add_dump(cfg, args.dump)
    with stop_on_bad_input(), mmengine_loads_through_plugin():
        runner = build_runner(cfg)
        check_weights_fit(runner.model, args.checkpoint)
        with watch_peers(dist_timeout(cfg)):
            metrics = runner.test()
    if args.out and runner.rank == 0:
        import json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    k: float(v) if hasattr(v, '__float__') else v
                    for k, v in metrics.items()
                },
                indent=2,
            )
        )
    shutdown_distributed()


if __name__ == '__main__':
    main()
