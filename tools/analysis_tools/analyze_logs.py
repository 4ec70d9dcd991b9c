#!/usr/bin/env python3
"""Training curves of a run from its scalar logs (mmengine's
``<work_dir>/<timestamp>/vis_data/scalars.json``), for any of the three
tasks; a resumed run's logs are joined in time order.

    python tools/analysis_tools/analyze_logs.py WORK_DIR
        [--keys loss lr accuracy/top1] --out curves.png

Every key gets its own panel against the training iteration (evaluation
results at the iteration they followed). Without ``--keys``: ``loss``,
``lr`` and every evaluation metric found.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

# logged with every training iteration; evaluation rows lack them
TRAIN_MARKERS = ('loss', 'lr')
NOT_CURVES = {'step', 'iter', 'epoch', 'time', 'data_time', 'memory'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dir')
    parser.add_argument('--keys', nargs='+', default=None)
    parser.add_argument('--out', required=True, help='PNG to write')
    return parser.parse_args(argv)


def scalar_files(work_dir: Path) -> list[Path]:
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not files:
        raise SystemExit(
            f'{work_dir}: no */vis_data/scalars.json; is it the '
            'work dir of a run (tools/train.py --work-dir)?'
        )
    return files


def read_curves(files: list[Path]) -> tuple[dict, set]:
    """key -> {iteration: value} and the keys of evaluation rows."""
    curves: dict = defaultdict(dict)
    eval_keys = set()
    for path in files:
        iteration = 0
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a run killed mid-line
                print(f'{path}:{number}: skipped an unreadable line', file=sys.stderr)
                continue
            is_train = any(k in row for k in TRAIN_MARKERS)
            if is_train:
                iteration = row.get('iter', row.get('step', iteration))
            for key, value in row.items():
                if key in NOT_CURVES or not isinstance(value, (int, float)):
                    continue
                curves[key][iteration] = value  # a resume overwrites
                if not is_train:
                    eval_keys.add(key)
    return curves, eval_keys


def main(argv=None) -> None:
    args = parse_args(argv)
    curves, eval_keys = read_curves(scalar_files(Path(args.work_dir)))
    keys = args.keys or [k for k in ('loss', 'lr') if k in curves] + sorted(
        k for k in eval_keys if not k.endswith(('_50', '_75', '_l', '_m', '_s'))
    )  # headline only
    missing = [k for k in keys if k not in curves]
    if missing:
        raise SystemExit(
            f'no values for {missing} in {args.work_dir}; logged keys: {sorted(curves)}'
        )
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(keys), 1, figsize=(7, 2.4 * len(keys)), squeeze=False, sharex=True
    )
    for ax, key in zip(axes[:, 0], keys):
        points = sorted(curves[key].items())
        xs, ys = zip(*points)
        style = 'o-' if key in eval_keys else '-'
        ax.plot(xs, ys, style, markersize=4)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        print(
            f'{key}: {len(points)} points, {ys[0]:.4g} at iteration '
            f'{xs[0]} -> {ys[-1]:.4g} at iteration {xs[-1]}'
        )
    axes[-1, 0].set_xlabel('iteration')
    fig.suptitle(Path(args.work_dir).name)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
