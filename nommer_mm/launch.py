"""What tools/train.py and tools/test.py share: pick the codebase of a
config, and make distributed runs work on CPU as well as GPU."""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import os.path as osp
import re
import sys
import threading
import time
from typing import Iterator

import torch
from mmengine.config import Config

from .checkpoint_safety import (
    CheckpointFileError,
    UnsafeCheckpointError,
    WeightsDoNotFitError,
    describe_mismatches,
    load_checkpoint_file,
    weight_mismatches,
)

# Used when a config sets no env_cfg.dist_cfg.timeout: long enough for a
# slow evaluation or checkpoint write, short enough that a hung peer does
# not hold the others for gloo's / NCCL's default 30 minutes.
DEFAULT_DIST_TIMEOUT_S = 600

CODEBASES = {
    'mmpretrain': 'mmpretrain.utils',
    'mmdet': 'mmdet.utils',
    'mmseg': 'mmseg.utils',
}


def add_launch_args(parser) -> None:
    """The arguments train.py and test.py share."""
    from mmengine.config import DictAction

    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value',
    )
    parser.add_argument(
        '--launcher', default='none', choices=['none', 'pytorch', 'slurm', 'mpi']
    )
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def prepare(args) -> Config:
    """Config of ``args.config`` with ``--cfg-options`` merged, its codebase
    registered, work dir set and the launcher prepared."""
    cfg = load_config(args.config, args.cfg_options)
    setup_codebase(cfg)
    set_work_dir(cfg, args.config, args.work_dir)
    prepare_launcher(cfg, args.launcher)
    return cfg


def load_config(path: str, cfg_options: dict | None = None) -> Config:
    from .config_scope import config_bases_resolve

    with config_bases_resolve():  # mmseg:: bases on the OneDL stack too
        cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def setup_codebase(cfg: Config) -> str:
    """Register the modules of the config's codebase (chosen by its
    ``default_scope``) and of this plugin; return the scope."""
    import importlib

    import nommer_mm  # noqa: F401  (NomMer, hooks, checkpoint allow-list)

    scope = cfg.get('default_scope')
    if scope not in CODEBASES:
        raise ValueError(
            f'config default_scope is {scope!r}; expected one of '
            f'{sorted(CODEBASES)} (set it in the config or '
            'inherit a base of that codebase)'
        )
    importlib.import_module(CODEBASES[scope]).register_all_modules(
        init_default_scope=True
    )
    return scope


def set_work_dir(cfg: Config, config_path: str, work_dir: str | None) -> None:
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join(
            './work_dirs', osp.splitext(osp.basename(config_path))[0]
        )


def prepare_launcher(cfg: Config, launcher: str) -> None:
    """Make ``launcher='pytorch'`` work without CUDA.

    mmengine's own init calls ``torch.cuda.set_device`` and wraps the model
    in DDP with ``device_ids=[LOCAL_RANK]``; both are GPU-only. On a machine
    without CUDA we start a gloo process group ourselves (mmengine then
    skips its init), give DDP ``device_ids=None``, and turn SyncBN (CUDA
    only) into plain BN: ``SyncBN`` norm layers and mmengine's
    ``sync_bn`` option alike.
    """
    cfg.launcher = launcher
    if launcher == 'none':
        return
    cfg.env_cfg = cfg.get('env_cfg', {})
    cfg.env_cfg.setdefault('dist_cfg', {})['timeout'] = dist_timeout(cfg)
    if torch.cuda.is_available():
        return  # mmengine's init_dist passes dist_cfg.timeout on
    import torch.distributed as dist

    if launcher != 'pytorch':
        raise RuntimeError(
            f'launcher {launcher!r} needs GPUs; on CPU use '
            'tools/dist_train.sh (torchrun, gloo)'
        )
    if not dist.is_initialized():
        dist.init_process_group(
            backend='gloo', timeout=datetime.timedelta(seconds=dist_timeout(cfg))
        )
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False),
    )
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    cfg.env_cfg = cfg.get('env_cfg', {})
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    for key in list(cfg.keys()):
        _replace_syncbn(cfg[key])
    if cfg.get('sync_bn'):
        # mmengine would convert every BN layer, which DDP refuses on CPU
        print(
            f'[nommer_mm] sync_bn={cfg.sync_bn!r} needs CUDA: without it the '
            'BatchNorm layers stay per-process BatchNorm (gloo, CPU)',
            file=sys.stderr,
        )
        cfg.sync_bn = None


def dist_timeout(cfg: Config) -> int:
    """Seconds a collective may wait for a peer: ``env_cfg.dist_cfg.timeout``
    of the config, else :data:`DEFAULT_DIST_TIMEOUT_S`."""
    value = (
        (cfg.get('env_cfg') or {})
        .get('dist_cfg', {})
        .get('timeout', DEFAULT_DIST_TIMEOUT_S)
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(
            f'env_cfg.dist_cfg.timeout is {value!r}; expected '
            'a positive number of seconds, e.g. 600'
        )
    return int(value)


HEARTBEAT_S = 2.0


@contextlib.contextmanager
def watch_peers(timeout_s: int | None = None) -> Iterator[None]:
    """In a distributed run: every rank stamps the time into the process
    group's store every :data:`HEARTBEAT_S` seconds from a thread; when the
    run inside fails (a collective timed out waiting for a peer), the error
    names the ranks whose stamps stopped, and how long ago."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        yield
        return
    from torch.distributed.distributed_c10d import _get_default_store

    store, rank, world = (_get_default_store(), dist.get_rank(), dist.get_world_size())
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                store.set(f'nommer_mm/heartbeat/{rank}', repr(time.time()))
            except Exception:  # the store is gone: the run is ending
                return
            stop.wait(HEARTBEAT_S)

    thread = threading.Thread(target=beat, name='nommer-heartbeat', daemon=True)
    thread.start()
    try:
        yield
    except Exception as err:
        silent = _silent_peers(store, rank, world)
        if not silent:
            raise
        names = ', '.join(f'rank {r} (last heard {age:.0f} s ago)' for r, age in silent)
        raise SystemExit(
            f'rank {rank}: a collective operation failed ({type(err).__name__}'
            f'); {names} stopped answering. The wait was bounded by '
            f'env_cfg.dist_cfg.timeout = {timeout_s} s.'
        ) from err
    finally:
        stop.set()


def _silent_peers(store, rank: int, world: int) -> list[tuple[int, float]]:
    now, silent = time.time(), []
    for peer in range(world):
        if peer == rank:
            continue
        try:
            store.wait([f'nommer_mm/heartbeat/{peer}'], datetime.timedelta(seconds=1))
            age = now - float(store.get(f'nommer_mm/heartbeat/{peer}'))
        except Exception:
            age = float('inf')  # never beat, or the store cannot say
        if age > 3 * HEARTBEAT_S:
            silent.append((peer, age))
    return silent


def _replace_syncbn(node) -> None:
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
        for value in node.values():
            _replace_syncbn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_syncbn(value)


def shutdown_distributed() -> None:
    """Leave the process group cleanly. Left to interpreter exit, gloo's
    background threads can abort the process (SIGABRT) after a run that
    itself succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _say(msg: str) -> None:
    if os.environ.get('RANK', '0') == '0':
        print(f'[nommer_mm] {msg}', file=sys.stderr, flush=True)


def _resume_problem(path: str) -> str | None:
    """Why ``path`` cannot resume a run, or None. Reads the file memory-
    mapped (zip checkpoints), so tensors are not copied."""
    try:
        ckpt = load_checkpoint_file(path, map_location='cpu', mmap=True)
    except (CheckpointFileError, UnsafeCheckpointError) as err:
        text = str(err)
        for lead in (f'{path}: ', f'{path} '):  # the path is said already
            if text.startswith(lead):
                text = text[len(lead) :]
                break
        return text if text.startswith('refused') else f'it {text}'
    except Exception as err:  # anything else torch could not read
        return f'it does not load ({type(err).__name__}: {err})'
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if not (
        isinstance(meta, dict)
        and 'epoch' in meta
        and 'iter' in meta
        and 'message_hub' in ckpt
    ):
        return (
            'it holds weights only (no training state: meta.epoch, '
            'meta.iter, message_hub), as a converted checkpoint does; '
            f'to start a run from these weights use '
            f'--cfg-options load_from={path} instead of --resume'
        )
    return None


def _checkpoints_newest_first(work_dir: str) -> list[str]:
    """``epoch_N.pth`` / ``iter_N.pth`` in ``work_dir``, highest N first
    (``best_*`` checkpoints hold no optimizer state)."""
    found = []
    for path in glob.glob(osp.join(work_dir, '*.pth')):
        match = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', osp.basename(path))
        if match:
            found.append((int(match.group(2)), path))
    return [path for _, path in sorted(found, reverse=True)]


def _read_marker(marker: str, work_dir: str) -> str | None:
    """The path ``last_checkpoint`` names ('' when it is empty; None when
    there is no such file); says what is wrong with an empty or dangling
    one and the fallback taken."""
    if not osp.exists(marker):
        return None
    with open(marker) as f:
        named = f.read().strip()
    fallback = f'falling back to the newest checkpoint in {work_dir} that loads'
    if not named:
        _say(
            f'{marker} is empty (a run killed while writing it?), so it '
            f'names no checkpoint; {fallback}'
        )
    elif not osp.isfile(named):
        _say(
            f'{marker} names {named}, which does not exist (moved or '
            f'deleted?); {fallback}'
        )
    return named


def resolve_resume(cfg: Config, resume: str | None) -> None:
    """Set ``cfg.resume`` / ``cfg.load_from`` for ``--resume [CKPT]``.

    With a path: that checkpoint, which must hold a training state. Without:
    the checkpoint ``work_dir/last_checkpoint`` names, or, when that one is
    torn, missing or the file is empty, the newest ``epoch_N`` / ``iter_N``
    checkpoint in the work dir that loads; each one skipped is named.
    """
    if resume is None:
        return
    cfg.resume = True
    if resume != 'auto':
        problem = _resume_problem(resume)
        if problem:
            raise SystemExit(f'--resume {resume}: cannot resume from it: {problem}')
        cfg.load_from = resume
        return
    marker = osp.join(cfg.work_dir, 'last_checkpoint')
    candidates = _checkpoints_newest_first(cfg.work_dir)
    named = _read_marker(marker, cfg.work_dir)
    if named and osp.isfile(named):
        candidates = [named] + [
            c for c in candidates if osp.abspath(c) != osp.abspath(named)
        ]
    elif named is None and not candidates:
        cfg.load_from = None  # nothing to resume: mmengine starts afresh
        return
    for path in candidates:
        problem = _resume_problem(path)
        if problem is None:
            if named and osp.abspath(path) == osp.abspath(named):
                _say(f'resuming from {path} (named by {marker})')
            else:
                why = (
                    f'in place of {named}, which {marker} names'
                    if named
                    else f'since {marker} names none'
                    if named == ''
                    else f'since there is no {marker}'
                )
                _say(
                    f'resuming from {path}: the newest checkpoint in '
                    f'{cfg.work_dir} that loads, {why}'
                )
            cfg.load_from = path
            return
        _say(f'skipped {path}: {problem}')
    raise SystemExit(
        f'--resume: no checkpoint in {cfg.work_dir} can resume this run '
        f'(tried {len(candidates)}). Pass one with --resume CKPT, or remove '
        f'{marker} and the broken checkpoints to start afresh.'
    )


def check_weights_fit(model, path: str) -> None:
    """Stop before evaluating a model that ``path`` does not fill: missing
    keys or size mismatches would leave random weights in it."""
    found = weight_mismatches(
        model, load_checkpoint_file(path, map_location='cpu', mmap=True)
    )
    if found['missing'] or found['size mismatch']:
        raise SystemExit(
            f'{path} does not fit the model of this config; evaluating it '
            'would use random weights for:\n'
            + describe_mismatches(found)
            + '\nIs it the checkpoint of this config? (A backbone-only '
            'checkpoint belongs in model.backbone.init_cfg, not here.)'
        )


def input_error_message(err: BaseException) -> str:
    """The one-line (or listing) message of a broken or mismatched input,
    without the "Caught ... in DataLoader worker" traceback that a
    DataLoader worker's re-raise puts in front of it."""
    text = str(err)
    lead = f'{type(err).__name__}: '
    if text.startswith('Caught ') and lead in text:
        text = text[text.rindex(lead) + len(lead) :].strip()
    return text


@contextlib.contextmanager
def stop_on_bad_input() -> Iterator[None]:
    """Within: a checkpoint or image that is missing, empty, cut short, not
    what it should be, refused as unsafe or not fitting the model ends the
    program with its message (exit status 1), not a traceback."""
    from .datasets import BrokenImageError

    try:
        yield
    except (
        CheckpointFileError,
        UnsafeCheckpointError,
        WeightsDoNotFitError,
        BrokenImageError,
    ) as err:
        raise SystemExit(f'error: {input_error_message(err)}') from None


def use_tta(cfg: Config, config_path: str) -> None:
    """``--tta``: wrap the model in the config's ``tta_model`` and test
    through its ``tta_pipeline``; a config without them stops, saying so."""
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise SystemExit(
            f'--tta: {config_path} defines no test-time augmentation '
            '(tta_model and tta_pipeline); the detection and segmentation '
            'configs of this repository define multi-scale + flip testing'
        )
    tta = dict(cfg.tta_model)
    cfg.model = dict(type=tta.pop('type'), module=cfg.model, **tta)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def enable_auto_scale_lr(cfg: Config, config_path: str) -> None:
    """``--auto-scale-lr``: mmengine multiplies the lr by total batch /
    ``auto_scale_lr.base_batch_size``; a config without that base stops."""
    if not (cfg.get('auto_scale_lr') or {}).get('base_batch_size'):
        raise SystemExit(
            f'--auto-scale-lr: {config_path} sets no auto_scale_lr.base_batch_size '
            '(the total batch its lr is meant for), so there is nothing to scale '
            'from; give one: --cfg-options auto_scale_lr.base_batch_size=N'
        )
    cfg.auto_scale_lr.enable = True


def auto_scale_lr_note(cfg: Config, world_size: int) -> str:
    """What ``--auto-scale-lr`` does to this run's lr."""
    per_process = cfg.train_dataloader.batch_size
    total, base = world_size * per_process, cfg.auto_scale_lr.base_batch_size
    return (
        f'--auto-scale-lr: total batch {total} ({world_size} processes x '
        f'{per_process}) for a recipe of {base}: lr x {total / base:g}'
    )


def add_finite_loss_check(cfg: Config) -> None:
    """Training stops at the first non-finite loss (``FiniteLossHook``)."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == 'FiniteLossHook' for h in hooks):
        hooks.append(dict(type='FiniteLossHook'))
    cfg.custom_hooks = hooks


def build_runner(cfg: Config):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
