#!/usr/bin/env python3
"""Markdown tables from benchmark.py's JSON files.

    python tools/analysis_tools/benchmark_table.py work_dirs/bench
    python tools/analysis_tools/benchmark_table.py a.json b.json

Each file (``--json`` of benchmark.py; a folder stands for its ``*.json``)
becomes a heading with the device and the setting it was run with, and a
row per model and mode, with the figures exactly as the tool measured them.
A run stopped by its time limit keeps the modes it finished, and a file that
is not benchmark.py's JSON is named and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODES = {'infer': 'inference', 'train': 'training'}


def load(paths: list[str]) -> dict[str, list[dict]]:
    """Name (the file's stem) -> benchmark.py's rows."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob('*.json')) if p.is_dir() else [p]
    runs = {}
    for f in files:
        try:
            rows = json.loads(f.read_text())
            if not (isinstance(rows, list) and rows[0]['mode'] == 'run'):
                raise ValueError('no leading "run" row')
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            print(
                f'benchmark_table: skipped {f}: not benchmark.py --json ({e})',
                file=sys.stderr,
            )
            continue
        runs[f.stem] = rows
    return runs


def _cell(value, fmt: str) -> str:
    return '-' if value is None else format(value, fmt)


def table(name: str, rows: list[dict]) -> str:
    run = rows[0]
    setting = ', '.join(
        x
        for x in [
            run['dtype'],
            'x'.join(map(str, run['shape'])),
            run['options'],
            f'torch {run["torch"]}',
            f'{run["reps"]} reps after {run["warmup"]} warm-up',
        ]
        if x
    )
    lines = [f'**{name}**: {run["device"]}; {setting}', '']
    lines += [
        '| model | batch | mode | img/s | median ms (min-max) | peak MiB '
        '| saved MiB | GFLOPs | vs 1st |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    timed = [r for r in rows if r['mode'] in MODES]
    for r in timed:
        flops = r.get('flops_per_image')
        lines.append(
            f'| {r["model"]} | {r["batch"]} | {MODES[r["mode"]]} '
            f'| {r["images_per_s"]:.1f} '
            f'| {r["median_ms"]:.1f} ({r["min_ms"]:.1f}-{r["max_ms"]:.1f}) '
            f'| {_cell(r["peak_mib"], ".0f")} | {_cell(r.get("saved_mib"), ".1f")} '
            f'| {_cell(None if flops is None else flops / 1e9, ".2f")} '
            f'| {r["throughput_vs_first"]:.2f}x |'
        )
    if not timed:
        lines.append('| (no mode finished) | | | | | | | | |')
    if run['memory']:
        lines += ['', f'({run["memory"]})']
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('paths', nargs='+', help='JSON files or folders of them')
    args = parser.parse_args(argv)
    runs = load(args.paths)
    print('\n\n'.join(table(name, rows) for name, rows in runs.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
