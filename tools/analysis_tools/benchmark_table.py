#!/usr/bin/env python3
"""Markdown tables from benchmark.py's JSON files, and issue 13's targets.

    python tools/analysis_tools/benchmark_table.py work_dirs/gpu_figures
    python tools/analysis_tools/benchmark_table.py a.json b.json --targets

Each file (``--json`` of benchmark.py; a folder stands for its ``*.json``)
becomes a heading with the device and the setting it was run with, and a
row per model and mode, with the figures exactly as the tool measured them.
A run stopped by its time limit keeps the modes it finished, and a file that
is not benchmark.py's JSON is named and skipped.

``--targets`` checks the GPU targets of issue 13 on the files that
``tools/gpu_figures.sh`` names after its steps: NomMer-T at least 1.0x
Swin-T's throughput in inference and in training (``t128``, ``t256``,
``compile``), at least 25% MFU for bf16 training at batch 128 (the NomMer
rows of ``t128``, ``s128``, ``b128``) and the whole Cascade Mask R-CNN
NomMer-B iteration within 32 GB (``cascade-fp32``, ``cascade-fp16``;
32e9 bytes). A target whose file is missing is reported as not measured.
The exit status is 1 if a measured target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODES = {'infer': 'inference', 'train': 'training'}
MFU_TARGET = 0.25
MEMORY_TARGET_MIB = 32e9 / 2**20


def load(paths: list[str]) -> dict[str, list[dict]]:
    """Step name (the file's stem) -> benchmark.py's rows."""
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


def table(step: str, rows: list[dict]) -> str:
    run = rows[0]
    setting = ', '.join(
        x
        for x in [
            run['dtype'],
            f'batch {run["batch"]}',
            'x'.join(map(str, run['shape'])),
            'backbone only' if run['backbone_only'] else '',
            run['options'],
            f'torch {run["torch"]}',
            f'{run["reps"]} reps after {run["warmup"]} warm-up',
        ]
        if x
    )
    lines = [f'**{step}**: {run["device"]}; {setting}', '']
    for r in rows:
        if r['mode'] == 'peak':
            lines += [
                f'matrix-product peak: {r["flop_per_s"] / 1e12:.3g} TFLOP/s '
                f'({r["matmul"]}, measured)',
                '',
            ]
    lines += [
        '| model | mode | img/s | median ms (min-max) | peak MiB | MFU | vs 1st |',
        '|---|---|---|---|---|---|---|',
    ]
    timed = [r for r in rows if r['mode'] in MODES]
    for r in timed:
        lines.append(
            f'| {r["model"]} | {MODES[r["mode"]]} | {r["images_per_s"]:.1f} '
            f'| {r["median_ms"]:.1f} ({r["min_ms"]:.1f}-{r["max_ms"]:.1f}) '
            f'| {_cell(r["peak_mib"], ".0f")} '
            f'| {_cell(r.get("mfu"), ".1%")} | {r["throughput_vs_first"]:.2f}x |'
        )
    if not timed:
        lines.append('| (no mode finished) | | | | | | |')
    if run['memory']:
        lines += ['', f'({run["memory"]})']
    return '\n'.join(lines)


def targets(runs: dict[str, list[dict]]) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met: True / False / None = not measured)."""
    out = []
    for step in ('t128', 't256', 'compile'):
        for mode in MODES:
            name = f'NomMer-T >= 1.0x Swin-T, {MODES[mode]} ({step})'
            rows = [r for r in runs.get(step, []) if r['mode'] == mode]
            nommer = [r for r in rows if 'nommer' in r['model']]
            swin = [r for r in rows if 'swin' in r['model']]
            if not (nommer and swin):
                out.append((name, 'not measured', None))
                continue
            ratio = nommer[0]['images_per_s'] / swin[0]['images_per_s']
            out.append((name, f'{ratio:.2f}x', ratio >= 1.0))
    for step in ('t128', 's128', 'b128'):
        rows = [
            r
            for r in runs.get(step, [])
            if r['mode'] == 'train' and 'nommer' in r['model']
        ]
        name = f'MFU >= 25%, bf16 training, batch 128 ({step})'
        if not rows or rows[0].get('mfu') is None or runs[step][0]['dtype'] != 'bf16':
            out.append((name, 'not measured', None))
            continue
        util = rows[0]['mfu']
        out.append((name, f'{util:.1%} ({rows[0]["model"]})', util >= MFU_TARGET))
    for step in ('cascade-fp32', 'cascade-fp16'):
        rows = [r for r in runs.get(step, []) if r['mode'] == 'train']
        name = f'Cascade Mask R-CNN NomMer-B iteration within 32 GB ({step})'
        if not rows or rows[0]['peak_mib'] is None:
            out.append((name, 'not measured', None))
            continue
        mib = rows[0]['peak_mib']
        out.append((name, f'{mib:.0f} MiB', mib <= MEMORY_TARGET_MIB))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('paths', nargs='+', help='JSON files or folders of them')
    parser.add_argument(
        '--targets', action='store_true', help="also check issue 13's GPU targets"
    )
    args = parser.parse_args(argv)
    runs = load(args.paths)
    print('\n\n'.join(table(step, rows) for step, rows in runs.items()))
    if not args.targets:
        return 0
    checks = targets(runs)
    print('\n| target | measured | met |\n|---|---|---|')
    for name, measured, met in checks:
        verdict = {True: 'yes', False: '**no**', None: '-'}[met]
        print(f'| {name} | {measured} | {verdict} |')
    return 1 if any(met is False for _, _, met in checks) else 0


if __name__ == '__main__':
    sys.exit(main())
