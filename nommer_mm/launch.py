"""What tools/train.py and tools/test.py share: pick the codebase of a
config, and make distributed runs work on CPU as well as GPU."""
from __future__ import annotations

import os.path as osp

import torch
from mmengine.config import Config

CODEBASES = {
    'mmpretrain': 'mmpretrain.utils',
    'mmdet': 'mmdet.utils',
    'mmseg': 'mmseg.utils',
}


def add_launch_args(parser) -> None:
    """The arguments train.py and test.py share."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
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
        raise ValueError(f'config default_scope is {scope!r}; expected one of '
                         f'{sorted(CODEBASES)} (set it in the config or '
                         'inherit a base of that codebase)')
    importlib.import_module(CODEBASES[scope]).register_all_modules(
        init_default_scope=True)
    return scope


def set_work_dir(cfg: Config, config_path: str, work_dir: str | None) -> None:
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def prepare_launcher(cfg: Config, launcher: str) -> None:
    """Make ``launcher='pytorch'`` work without CUDA.

    mmengine's own init calls ``torch.cuda.set_device`` and wraps the model
    in DDP with ``device_ids=[LOCAL_RANK]``; both are GPU-only. On a machine
    without CUDA we start a gloo process group ourselves (mmengine then
    skips its init), give DDP ``device_ids=None``, and turn SyncBN (CUDA
    only) into plain BN.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    if launcher != 'pytorch':
        raise RuntimeError(f'launcher {launcher!r} needs GPUs; on CPU use '
                           'tools/dist_train.sh (torchrun, gloo)')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    cfg.env_cfg = cfg.get('env_cfg', {})
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    for key in list(cfg.keys()):
        _replace_syncbn(cfg[key])


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


def build_runner(cfg: Config):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
