#!/usr/bin/env python3
"""Issue 13's GPU work in one bounded command, for a short GPU lease:

    python3 tools/gpu_lease.py --out DIR [--seconds 420] [--parts NAME ...]
    python3 tools/gpu_lease.py --dry-run

A lent GPU machine may come for minutes only (this project's: 15 minutes of
device time in all, its start included, at most 10 a command, and at most 8
files back from a command's output folder). The work is split into parts,
run in the order of what issue 13 needs first; each runs in a session of
its own, bounded by its own limit and by what is left of ``--seconds``
(every process it started is stopped then), and none is started with less
than a minute left:

    install   the stack from wheelhouse/ (install_deps.py --offline), unless
              it already imports
    check     gpu_check.py --only ops backbones attention
    t128      gpu_figures.sh t128: NomMer-T vs Swin-T at 224, batch 128, MFU
    cascade   gpu_figures.sh cascade: the Cascade NomMer-B iteration
    late      gpu_check.py --only dist compile
    profile compile dense fast s128 b128 t256 s256 b256: gpu_figures.sh's
              other steps

What the parts write stays in ``work_dirs/gpu_lease/`` with each part's
outcome (``state.json``): the same command run again (on a machine still
warm) goes on with the parts not yet run and those the budget cut short.
``--parts`` runs the named ones, also if they ran before. DIR gets at most
five files: ``lease.md`` (each part's outcome, seconds and last lines),
``figures.md`` (benchmark_table.py --targets over every figure so far),
``gpu_check.json`` and ``gpu_check-late.json``, and ``lease.tar.gz`` (every
log and JSON). SIGTERM ends the running part with its processes and still
writes DIR (exit status 143). Without a GPU it says so and exits 0. Exit
status 1 if a part failed, timed out or was cut short (a missed target of
gpu_figures.sh counts as failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from gpu_check import run_bounded, write_json  # noqa: E402

STATE = ROOT / 'work_dirs' / 'gpu_lease'
MIN_START = 60  # seconds: no part is started with less than this left
RESERVE = 30  # seconds kept for a cut part's grace and the files at the end
LOG_TAIL = 6  # lines of each part's log in the summary
PACKED = ('.json', '.log', '.md')


class Part(NamedTuple):
    name: str
    limit: float  # seconds
    argv: list[str]
    env: dict[str, str] | None = None  # added to the environment
    skip_if: list[str] | None = None  # argv whose success means: nothing to do


def lease_parts(state: Path, python: str) -> list[Part]:
    """The parts in the order they run by default."""
    check = [python, 'tools/gpu_check.py']

    def figures(step: str, limit: float, shares: int = 1) -> Part:
        # gpu_figures.sh bounds each benchmark by STEP_LIMIT, compile's by
        # twice that: cascade's two benchmarks share the part's limit, so a
        # hung first one leaves the second its time
        return Part(
            step,
            limit,
            ['bash', 'tools/gpu_figures.sh', str(state / 'figures'), step],
            {'PYTHON': python, 'STEP_LIMIT': str(int(limit // shares))},
        )

    stack = 'import mmcv.ops, mmdet, mmseg, mmpretrain, nommer_mm'
    return [
        Part(
            'install',
            240,
            [
                python,
                'tools/install_deps.py',
                '--wheelhouse',
                'wheelhouse',
                '--offline',
            ],
            skip_if=[python, '-c', stack],
        ),
        Part(
            'check',
            300,
            check
            + ['--out', str(state / 'check'), '--only', 'ops', 'backbones']
            + ['attention'],
        ),
        figures('t128', 240),
        figures('cascade', 300, shares=2),
        Part(
            'late',
            420,
            check
            + ['--out', str(state / 'late'), '--only', 'dist', 'compile']
            + ['--dist-timeout', '120'],
        ),
        figures('profile', 120),
        figures('compile', 360, shares=2),
        figures('dense', 120),
        figures('fast', 180),
        figures('s128', 240),
        figures('b128', 240),
        figures('t256', 300),
        figures('s256', 300),
        figures('b256', 300),
    ]


class Stopped(Exception):
    """SIGTERM: the lease's own time limit from outside."""


def _stopped(signum: int, frame) -> None:
    raise Stopped


def load_state(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
        if isinstance(state, dict):
            return state
        raise ValueError('not an object')
    except ValueError as e:
        print(f'gpu_lease: {path} is broken ({e}); every part runs again')
        return {}


def to_run(parts: list[Part], state: dict, named: list[str] | None) -> list[Part]:
    """The named parts in that order, else those not yet run or cut short."""
    if named:
        by_name = {p.name: p for p in parts}
        return [by_name[n] for n in named]
    return [
        p for p in parts if p.name not in state or state[p.name]['outcome'] == 'cut'
    ]


def run_parts(
    parts: list[Part], state_dir: Path, deadline: float, named: list[str] | None = None
) -> dict:
    """Run what is due within ``deadline`` (time.time()), recording each
    outcome: ok, present (nothing to do), exit N, timeout (its own limit),
    cut (the budget's or SIGTERM's; runs again next time)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file = state_dir / 'state.json'
    state = load_state(state_file)
    not_started = []
    for part in to_run(parts, state, named):
        left = deadline - RESERVE - time.time()
        if left < min(MIN_START, part.limit):
            not_started.append(part.name)
            continue
        bound = min(part.limit, left)
        log = state_dir / f'{part.name}.log'
        print(f'gpu_lease: {part.name} (up to {bound:.0f} s) ...', flush=True)
        start = time.time()
        outcome = None
        env = {**os.environ, **(part.env or {})}
        try:
            if part.skip_if is not None:
                rc, _ = run_bounded(part.skip_if, 60, cwd='/', env=env)
                outcome = 'present' if rc == 0 else None
            if outcome is None:
                with open(log, 'w') as f:
                    rc, _ = run_bounded(part.argv, bound, stdout=f, cwd=ROOT, env=env)
                if rc is None:
                    outcome = 'timeout' if bound >= part.limit else 'cut'
                else:
                    outcome = 'ok' if rc == 0 else f'exit {rc}'
        except OSError as e:  # the command could not start, say
            outcome = f'error: {e}'
        finally:  # also on SIGTERM (Stopped): then the part counts as cut
            state[part.name] = dict(
                outcome=outcome or 'cut',
                seconds=round(time.time() - start, 1),
                limit=round(bound),
                command=shlex.join(part.argv),
            )
            write_json(state_file, state)
            print(
                f'gpu_lease: {part.name}: {state[part.name]["outcome"]} after '
                f'{state[part.name]["seconds"]} s',
                flush=True,
            )
            if outcome != 'present':
                for line in _tail(log, LOG_TAIL):
                    print(f'    {line}')
    if not_started:
        print(f'gpu_lease: not started (too little time left): {" ".join(not_started)}')
    return state


def _tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(errors='replace').splitlines()[-lines:]


def device_name() -> str:
    """nvidia-smi's name of GPU 0 (no CUDA context in this process)."""
    try:
        out = subprocess.run(
            [
                'nvidia-smi',
                '--query-gpu=name,driver_version,memory.total',
                '--format=csv,noheader',
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ''
    return out.splitlines()[0] if out else 'unknown GPU (nvidia-smi gave nothing)'


def pack(
    state_dir: Path,
    state: dict,
    parts: list[Part],
    out: Path,
    python: str,
    heading: str,
) -> None:
    """DIR's files: lease.md, figures.md, the two gpu_check reports and a
    tarball of every log and JSON (at most five files)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f'# {heading}', '', '| part | outcome | seconds | limit | command |']
    lines.append('| --- | --- | --- | --- | --- |')
    for part in parts:
        s = state.get(part.name)
        if s is None:
            lines.append(f'| {part.name} | not run | - | {part.limit:g} | - |')
        else:
            lines.append(
                f'| {part.name} | {s["outcome"]} | {s["seconds"]} | {s["limit"]} '
                f'| `{s["command"]}` |'
            )
    for name, s in state.items():
        tail = _tail(state_dir / f'{name}.log', LOG_TAIL)
        if tail:
            lines += ['', f'## {name}: last lines of its log', '', '```', *tail, '```']
    (out / 'lease.md').write_text('\n'.join(lines) + '\n')
    figures = state_dir / 'figures'
    if list(figures.glob('*.json')):
        table = subprocess.run(
            [
                python,
                str(ROOT / 'tools/analysis_tools/benchmark_table.py'),
                str(figures),
                '--targets',
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        (out / 'figures.md').write_text(table.stdout + table.stderr)
    for sub, name in (('check', 'gpu_check.json'), ('late', 'gpu_check-late.json')):
        report = state_dir / sub / 'gpu_check.json'
        if report.exists():
            (out / name).write_bytes(report.read_bytes())
    with tarfile.open(out / 'lease.tar.gz', 'w:gz') as tar:
        for f in sorted(state_dir.rglob('*')):
            if f.is_file() and f.suffix in PACKED:
                tar.add(f, arcname=str(f.relative_to(state_dir)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2],
    )
    parser.add_argument('--out', type=Path, default=Path('work_dirs/gpu_lease_out'))
    parser.add_argument(
        '--seconds',
        type=float,
        default=420,
        help='budget for this call: no part starts or runs past it (default 420)',
    )
    parts = lease_parts(STATE, sys.executable)
    names = [p.name for p in parts]
    parser.add_argument(
        '--parts',
        nargs='+',
        choices=names,
        metavar='NAME',
        help=f'run these, in this order: {" ".join(names)}',
    )
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='print each part, its limit and its command',
    )
    args = parser.parse_args(argv)
    if args.seconds < MIN_START + RESERVE:
        parser.error(
            f'--seconds {args.seconds:g}: at least {MIN_START + RESERVE} '
            'are needed to run any part'
        )
    if args.dry_run:
        for part in to_run(parts, {}, args.parts):
            env = [f'{k}={shlex.quote(v)}' for k, v in (part.env or {}).items()]
            print(' '.join([part.name, f'{part.limit:g}', *env, shlex.join(part.argv)]))
        return 0
    import torch

    if not torch.cuda.is_available():
        print(
            'gpu_lease: skipped, no CUDA device here '
            '(torch.cuda.is_available() is False)'
        )
        return 0
    heading = (
        f'GPU lease: {device_name()}, torch {torch.__version__}, '
        f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}'
    )
    return lease(parts, STATE, args.out, args.seconds, args.parts, heading)


def lease(
    parts: list[Part],
    state_dir: Path,
    out: Path,
    seconds: float,
    named: list[str] | None,
    heading: str,
) -> int:
    """Run what is due within ``seconds``, then write ``out``: 0 if every
    part that ran succeeded, 1 if one failed or was cut, 143 on SIGTERM."""
    print(f'gpu_lease: {heading}; {seconds:g} s', flush=True)
    deadline = time.time() + seconds
    previous = signal.signal(signal.SIGTERM, _stopped)
    stopped = False
    try:
        run_parts(parts, state_dir, deadline, named)
    except Stopped:
        stopped = True
        print('gpu_lease: stopped by SIGTERM', flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    state = load_state(state_dir / 'state.json')
    pack(state_dir, state, parts, out, sys.executable, heading)
    if (out / 'figures.md').exists():
        print((out / 'figures.md').read_text())
    print((out / 'lease.md').read_text().split('\n## ')[0])
    bad = [n for n, s in state.items() if s['outcome'] not in ('ok', 'present')]
    return 143 if stopped else (1 if bad else 0)


if __name__ == '__main__':
    sys.exit(main())
