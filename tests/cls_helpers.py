"""Small classification runs through the real tools."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / 'configs/cls/nommer-tiny_2xb16_textures-demo.py'
CASCADE_T = ROOT / 'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
UPERNET_T = ROOT / 'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py'


def load_tool(relative: str):
    """A script under ``tools/`` (no package there) as a module, e.g.
    ``load_tool('tools/analysis_tools/get_flops.py')``."""
    import importlib.util

    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie has exited; its reaper may not
    be the caller)."""
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != 'Z'


def write_config(
    path: Path,
    data_root: Path,
    iters: int,
    extra: str = '',
    ckpt_interval: int | None = None,
    batch: int = 4,
) -> Path:
    """A config inheriting the demo config, shrunk to 32x32 images."""
    path.write_text(f"""
_base_ = {str(DEMO)!r}
data_root = {str(data_root)!r}
model = dict(backbone=dict(img_size=32, drop_path_rate=0.2))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.6, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size={batch}, dataset=dict(
    data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size={batch}, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=2),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False, begin=2,
         end={iters}),
]
train_cfg = dict(max_iters={iters}, val_interval={iters})
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={ckpt_interval or iters}))
{extra}
""")
    return path


def readme_converter_outputs() -> set:
    """The ``checkpoints/*.pth`` files the documented converter and
    publish commands write (README.md and docs/checkpoints.md)."""
    import re

    docs = ROOT / 'README.md', ROOT / 'docs' / 'checkpoints.md'
    return set(
        re.findall(
            r'python tools/model_converters/(?:nommer2mm|peer2mm|publish_model)\.py'
            r' .*? (checkpoints/\S+\.pth)',
            '\n'.join(p.read_text() for p in docs),
        )
    )


def check_curves(work: Path, keys: list[str], out: Path) -> str:
    """tools/analysis_tools/analyze_logs.py on a run's work dir: a PNG and a
    line per key; returns its output."""
    proc = run_tool(
        [
            ROOT / 'tools/analysis_tools/analyze_logs.py',
            work,
            '--keys',
            *keys,
            '--out',
            out,
        ],
        cwd=out.parent,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    from PIL import Image

    width, height = Image.open(out).size
    assert width > 200 and height > 100 * len(keys)
    for key in keys:
        assert f'{key}: ' in proc.stdout, proc.stdout
    return proc.stdout


def failure_report(proc: subprocess.CompletedProcess) -> str:
    """The lines that explain a failed run (tracebacks, aborts), then the
    tail of the log."""
    log = proc.stdout + proc.stderr
    keys = (
        'Error',
        'error',
        'Traceback',
        'terminate',
        'abort',
        'Abort',
        'exitcode',
        'Signal',
    )
    hits = [ln for ln in log.splitlines() if any(k in ln for k in keys)]
    return '\n'.join(hits[:40]) + '\n----- tail -----\n' + log[-3000:]


def free_port() -> int:
    """A TCP port that is free now (the kernel picks it), so that two runs
    of the suite on one machine do not meet on a fixed rendezvous port."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_tool(
    args,
    cwd: Path,
    port: int | None = None,
    timeout: int = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run a tool (``.py`` with this Python, else a bash script) with the
    repository and tests/ importable; torchrun launchers get ``port`` as
    PORT, a free one when not given. A run past ``timeout`` seconds raises
    subprocess.TimeoutExpired, which fails the calling test alone."""
    env = dict(os.environ, **(env or {}))
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT / 'tests'), str(ROOT), env.get('PYTHONPATH', '')]
    )
    env['PORT'] = str(port or free_port())
    if str(args[0]).endswith('.py'):
        args = [sys.executable] + list(args)
    else:
        args = ['bash'] + list(args)
    return run_group([str(a) for a in args], cwd=cwd, env=env, timeout=timeout)


def run_group(
    args: list, cwd: Path, env: dict, timeout: int
) -> subprocess.CompletedProcess:
    """subprocess.run(args, capture_output=True, text=True), bounded: past
    ``timeout`` seconds every process it started is stopped (torchrun's
    workers too) and subprocess.TimeoutExpired raised."""
    from bounded_run import run_bounded  # tools/

    rc, out, err = run_bounded(args, timeout, grace=5, cwd=cwd, env=env)
    if rc is None:
        raise subprocess.TimeoutExpired(args, timeout, out, err)
    return subprocess.CompletedProcess(args, rc, out, err)


def tiered(values, slow, ids=None) -> list:
    """``values`` as pytest parameters, those for which ``slow(value)``
    holds in the slow tier; ``ids(value)`` names each when given."""
    return [
        pytest.param(
            v, id=ids(v) if ids else None, marks=[pytest.mark.slow] if slow(v) else []
        )
        for v in values
    ]


def world_size(log: str) -> int:
    """The number of processes a runner saw (mmengine's runtime
    environment, 'GPU number', is its world size also on CPU)."""
    import re

    found = re.findall(r'GPU number: (\d+)', log)
    assert found, 'no runtime environment in the log:\n' + log[-3000:]
    return int(found[-1])


def save_random_weights(config, scope: str, path, meta: dict | None = None):
    """Seeded random weights of ``config``'s model (its Pretrained init
    left out), saved as a training run keeps them: ``state_dict`` and
    ``meta``. Returns ``path``."""
    import importlib

    import torch

    from nommer_mm.launch import load_config

    importlib.import_module(f'{scope}.utils').register_all_modules(
        init_default_scope=True
    )
    models = importlib.import_module(f'{scope}.registry').MODELS
    cfg = load_config(str(config))
    cfg.model.get('backbone', {}).pop('init_cfg', None)
    torch.manual_seed(0)
    model = models.build(cfg.model)
    torch.save({'state_dict': model.state_dict(), 'meta': meta or {}}, path)
    return path


@functools.lru_cache(maxsize=None)
def _config(path: str):
    from nommer_mm.launch import load_config

    return load_config(path)


def cached_config(path):
    """``load_config(path)``, read once per test process; a copy, so that a
    test may change it."""
    import copy

    return copy.deepcopy(_config(str(path)))
