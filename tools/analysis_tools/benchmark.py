#!/usr/bin/env python3
"""Speed, memory and FLOPs of models side by side, on the CPU or a GPU.

    B=tools/analysis_tools/benchmark.py
    python $B                                  # NomMer-T vs Swin-T, 224, batch 8
    python $B --models NomMer-S Swin-S GCViT-S --mode train --saved
    python $B --batch 1 8 32 --flops --json bench.json
    python $B --device cuda --dtype bf16 --batch 128 --compile
    python $B --models NomMer-T --backbone-only --shape 800 1333 --batch 2
    python $B --models configs/det/cascade-mask-rcnn_nommer-b_fpn_ms-3x_coco.py \\
        --shape 800 1333 --batch 2 --mode train --dtype fp16 --device cuda

A model is a name (NomMer-T/S/B, Swin-T/S/B from mmpretrain, GCViT-XXT/XT/
T/S/B, Visformer-T/S, CoTNet-50, CoTNeXt-50, SE-CoTNetD-50), a config path
(its ``model``), ``mmpretrain::path.py`` for an upstream config, or a
``dict(...)`` backbone. A detector or segmentor config runs its whole step
on synthetic annotated images of ``--shape``: ``mode='loss'`` in training,
``mode='predict'`` in inference; SyncBN becomes BatchNorm (one process).

Every (model, batch) pair is timed in one process, alternately (A, B, A, B
...), so that a noisy machine slows all alike: the median step time and its
spread (min-max), images/s and the ratio to the first pair's. A training
step is forward, backward and an AdamW step. Peak memory is measured per
pair in a fresh process: on CUDA the max allocated over the step; on the
CPU the kernel's peak resident set over the step, with glibc told to map
every allocation of 64 KiB or more on its own so that freed tensors leave
the resident set at once (live memory, as CUDA counts it). ``--saved`` adds
the bytes autograd keeps for backward in one training forward
(``torch.autograd.graph.saved_tensors_hooks``), ``--flops`` one image's
traced multiply-adds (``nommer_mm.analysis.count_flops``). ``--json`` is
rewritten (beside, then renamed) after every mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
SWIN = 'mmpretrain::swin_transformer/swin-{}_16xb64_in1k.py'
NAMES = {
    'NomMer-T': 'configs/cls/nommer-tiny_8xb128_in1k.py',
    'NomMer-S': 'configs/cls/nommer-small_8xb128_in1k.py',
    'NomMer-B': 'configs/cls/nommer-base_8xb128_in1k.py',
    'Swin-T': SWIN.format('tiny'),
    'Swin-S': SWIN.format('small'),
    'Swin-B': SWIN.format('base'),
    'GCViT-XXT': 'configs/cls/gcvit-xxtiny_8xb128_in1k.py',
    'GCViT-XT': 'configs/cls/gcvit-xtiny_8xb128_in1k.py',
    'GCViT-T': 'configs/cls/gcvit-tiny_8xb128_in1k.py',
    'GCViT-S': 'configs/cls/gcvit-small_8xb128_in1k.py',
    'GCViT-B': 'configs/cls/gcvit-base_8xb128_in1k.py',
    'Visformer-T': 'configs/cls/visformer-tiny_8xb128_in1k.py',
    'Visformer-S': 'configs/cls/visformer-small_8xb128_in1k.py',
    'CoTNet-50': 'configs/cls/cotnet-50_8xb128_in1k.py',
    'CoTNeXt-50': 'configs/cls/cotnext-50_8xb128_in1k.py',
    'SE-CoTNetD-50': 'configs/cls/se-cotnetd-50_8xb128_in1k.py',
}
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# glibc maps every allocation of at least this many bytes on its own and
# unmaps it at free, so the resident set follows the live tensors
LIVE_MMAP_THRESHOLD = 64 * 1024


class Forward(nn.Module):
    """A backbone's forward, or a classifier's tensor forward (head
    included); the training loss is the mean of the outputs."""

    def __init__(self, model: nn.Module, classifier: bool) -> None:
        super().__init__()
        self.model, self.kwargs = model, dict(mode='tensor') if classifier else {}

    def forward(self, x: torch.Tensor):
        return self.model(x, **self.kwargs)


class DenseStep(nn.Module):
    """A detector's or segmentor's whole step on a fixed synthetic batch of
    raw images (0-255) with ``boxes`` annotated boxes each (segmentation:
    those boxes as class regions on an ignored background). The model's data
    preprocessor normalises and pads them as in training; training returns
    the summed losses of ``mode='loss'`` (kept by name in ``log_vars``),
    eval the results of ``mode='predict'``."""

    def __init__(self, model: nn.Module, scope: str, boxes: int = 8) -> None:
        super().__init__()
        self.model, self.scope, self.boxes = model, scope, boxes
        heads = [
            m.num_classes
            for m in model.modules()
            if isinstance(getattr(m, 'num_classes', None), int) and m.num_classes > 1
        ]
        self.num_classes = min(heads) if heads else 1
        self.samples: list = []
        self.log_vars: dict = {}

    def to(self, *args, **kwargs) -> DenseStep:
        self.model.to(*args, **kwargs)  # BaseModel.to also moves the preprocessor
        return self

    def example_input(self, batch: int, shape, device) -> torch.Tensor:
        """Random images and, fixed with them, their annotations."""
        g = torch.Generator().manual_seed(0)
        self.samples = [self._sample(*shape, g) for _ in range(batch)]
        return (torch.rand(batch, 3, *shape, generator=g) * 255).to(device)

    def _sample(self, H: int, W: int, g: torch.Generator):
        meta = dict(img_shape=(H, W), ori_shape=(H, W), scale_factor=(1.0, 1.0))
        labels = torch.randint(0, self.num_classes, (self.boxes,), generator=g)
        xy = torch.rand(self.boxes, 2, generator=g) * 0.7
        wh = torch.rand(self.boxes, 2, generator=g) * 0.25 + 0.05
        boxes = torch.cat([xy, xy + wh], 1) * torch.tensor([W, H, W, H])
        regions = torch.zeros(self.boxes, H, W, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.long()):
            regions[i, y1:y2, x1:x2] = 1
        if self.scope == 'mmseg':
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample

            seg = torch.full((1, H, W), 255, dtype=torch.long)
            for region, c in zip(regions.bool(), labels):
                seg[0][region] = c
            return SegDataSample(metainfo=meta, gt_sem_seg=PixelData(data=seg))
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData

        inst = InstanceData(bboxes=boxes, labels=labels)
        if getattr(getattr(self.model, 'roi_head', None), 'with_mask', False):
            inst.masks = BitmapMasks(regions.numpy(), H, W)
        return DetDataSample(metainfo=meta, gt_instances=inst)

    def forward(self, x: torch.Tensor):
        if len(self.samples) != len(x):
            raise RuntimeError('call example_input() for this batch first')
        data = dict(inputs=list(x), data_samples=self.samples)
        data = self.model.data_preprocessor(data, self.training)
        if not self.training:
            return self.model(**data, mode='predict')
        loss, self.log_vars = self.model.parse_losses(self.model(**data, mode='loss'))
        return loss


def config_path(spec: str) -> str:
    """A config of this repository (a name or a path), or ``pkg::path``
    inside an installed package's ``.mim/configs``."""
    spec = NAMES.get(spec, spec)
    if '::' in spec:
        from mmengine.utils import get_installed_path

        package, rel = spec.split('::')
        path = Path(get_installed_path(package)) / '.mim/configs' / rel
    else:
        path = ROOT / spec
    if not path.is_file():
        raise SystemExit(
            f'benchmark.py: --models {spec!r}: no such config ({path}); give a '
            f'name ({", ".join(NAMES)}), a config path, pkg::path or dict(...)'
        )
    return str(path)


def build(spec: str, backbone_only: bool) -> tuple[nn.Module, str]:
    """The module to time and its name in the report."""
    import nommer_mm  # noqa: F401  (registers the backbones)
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    from nommer_mm.launch import load_config

    if spec.startswith('dict('):
        init_default_scope('mmpretrain')
        # a dict(...) expression of literals, evaluated with nothing else
        cfg = eval(spec, {'__builtins__': {}, 'dict': dict})
        return Forward(MODELS.build(cfg), False), spec
    cfg = load_config(config_path(spec))  # mmseg:: bases on either stack
    scope = cfg.get('default_scope', 'mmpretrain')
    if scope in ('mmdet', 'mmseg'):
        from nommer_mm.launch import setup_codebase

        setup_codebase(cfg)
    else:
        init_default_scope(scope)
    if cfg.model.get('backbone', {}).get('init_cfg'):
        cfg.model.backbone.init_cfg = None
    name = spec if spec in NAMES else Path(spec.split('::')[-1]).stem
    if backbone_only:
        backbone = revert_sync_batchnorm(MODELS.build(cfg.model.backbone))
        return Forward(backbone, False), name + ' (backbone)'
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if scope in ('mmdet', 'mmseg'):
        return DenseStep(model, scope), name
    return Forward(model, True), name


def check_dense_dtype(module: nn.Module, dtype: str, device: str) -> None:
    """Stop before a run that cannot work: mmcv 2.1.0's RoIAlign and nms
    take float32 only on the CPU, and its CUDA RoIAlign has no bfloat16
    kernel."""
    if dtype == 'fp32' or not isinstance(module, DenseStep):
        return
    if not any(type(m).__name__ == 'RoIAlign' for m in module.modules()):
        return
    if device == 'cpu':
        raise SystemExit(
            f'benchmark.py: --dtype {dtype} with a detector on the CPU: '
            "mmcv's CPU nms and RoIAlign take float32 only; use --dtype fp32"
        )
    if dtype == 'bf16':
        raise SystemExit(
            'benchmark.py: --dtype bf16 with a detector: mmcv 2.1.0 has no '
            'bfloat16 CUDA kernel for RoIAlign; use --dtype fp16, the '
            'autocast dtype of tools/train.py --amp'
        )


def _loss(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    return sum(_loss(o) for o in out)


class Runner:
    """One model at one batch size, prepared for timed steps."""

    def __init__(self, spec: str, batch: int, args: argparse.Namespace) -> None:
        self.spec, self.batch, self.mode = spec, batch, args.mode
        self.module, self.name = build(spec, args.backbone_only)
        check_dense_dtype(self.module, args.dtype, args.device)
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.module.to(self.device)
        if isinstance(self.module, DenseStep):
            self.x = self.module.example_input(batch, args.shape, self.device)
        else:
            self.x = torch.randn(batch, 3, *args.shape, device=self.device)
        if args.channels_last:
            self.module.to(memory_format=torch.channels_last)
            self.x = self.x.to(memory_format=torch.channels_last)
        self.fn = torch.compile(self.module) if args.compile else self.module
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-4)

    def autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype is not None
        )

    def step(self) -> None:
        if self.mode == 'infer':
            self.module.eval()
            with torch.no_grad(), self.autocast():
                self.fn(self.x)
        else:
            self.module.train()
            with self.autocast():
                loss = _loss(self.fn(self.x))
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def saved_mib(self) -> float:
        """MiB autograd keeps for backward in one training forward."""
        from nommer_mm.analysis import saved_for_backward_bytes

        with self.autocast():
            return saved_for_backward_bytes(self.module.train(), self.x) / 2**20

    def flops_per_image(self) -> int | None:
        """One image's traced multiply-adds; None for a detector's or
        segmentor's whole step, which does not trace."""
        from nommer_mm.analysis import count_flops

        if isinstance(self.module, DenseStep):
            return None
        return count_flops(self.module, self.x[:1])


def time_alternately(runners: list[Runner], warmup: int, reps: int) -> list:
    """Seconds of each runner's ``reps`` steps, taken in turns."""
    for r in runners:
        for _ in range(warmup):
            r.step()
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(reps):
        for i, r in enumerate(runners):
            start = time.perf_counter()
            r.step()
            times[i].append(time.perf_counter() - start)
    return times


def live_memory(args: argparse.Namespace) -> bool:
    return args.device == 'cpu' and platform.libc_ver()[0] == 'glibc'


def memory_note(args: argparse.Namespace) -> str:
    if args.device != 'cpu':
        return 'peak MiB: torch.cuda.max_memory_allocated over the step'
    if live_memory(args):
        return 'peak MiB: live memory (peak resident set, glibc unmapping at free)'
    return 'peak MiB: peak resident set over the step (allocator caches included)'


def peak_memory(runner: Runner, args: argparse.Namespace) -> float:
    """MiB of peak memory of one step of ``runner``, in a fresh process."""
    cmd = [sys.executable, __file__, '--_memory-of', runner.spec]
    cmd += ['--mode', runner.mode, '--batch', str(runner.batch)]
    cmd += ['--shape', *map(str, args.shape), '--dtype', args.dtype]
    cmd += ['--device', args.device]
    cmd += ['--backbone-only'] * args.backbone_only
    cmd += ['--channels-last'] * args.channels_last
    env = dict(os.environ)
    if live_memory(args):
        env['MALLOC_MMAP_THRESHOLD_'] = str(LIVE_MMAP_THRESHOLD)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith('PEAK ')]
    if not lines:
        raise RuntimeError(f'memory probe failed:\n{out.stderr[-2000:]}')
    return float(lines[-1].split()[1])


def _memory_probe(args: argparse.Namespace) -> None:
    """Print the peak memory of the first step over the built model:
    activations, gradients and (training) the optimizer state."""
    runner = Runner(args._memory_of, args.batch[0], args)
    if runner.device.type == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner.step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with open('/proc/self/statm') as f:
            base = int(f.read().split()[1]) * resource.getpagesize()
        try:  # reset the kernel's peak-RSS mark (VmHWM; Linux >= 4.0)
            Path('/proc/self/clear_refs').write_text('5')
        except OSError as err:
            raise SystemExit(f'benchmark.py: no CPU peak memory here ({err})')
        runner.step()
        status = Path('/proc/self/status').read_text().splitlines()
        (hwm,) = [ln for ln in status if ln.startswith('VmHWM:')]
        peak = int(hwm.split()[1]) * 1024 - base
    print(f'PEAK {peak / 2**20:.1f}')


def write_json(path: Path, data) -> None:
    """``data`` as JSON in ``path``, never half-written (a run stopped while
    writing leaves the previous file: written beside it, then renamed)."""
    partial = path.with_name(path.name + '.partial')
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2],
    )
    parser.add_argument(
        '--models',
        nargs='+',
        default=['NomMer-T', 'Swin-T'],
        metavar='MODEL',
        help='names, config paths, pkg::path or dict(...) backbones',
    )
    parser.add_argument('--mode', choices=['infer', 'train', 'both'], default='both')
    parser.add_argument(
        '--batch', type=int, nargs='+', default=[8], help='one or more batch sizes'
    )
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224])
    parser.add_argument(
        '--dtype', choices=list(DTYPES), default='fp32', help='autocast dtype'
    )
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='cpu or cuda (default: cuda where there is one)',
    )
    parser.add_argument('--compile', action='store_true', help='torch.compile')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--backbone-only', action='store_true')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument('--no-memory', action='store_true', help='skip peak memory')
    parser.add_argument(
        '--saved', action='store_true', help='training: MiB kept for backward'
    )
    parser.add_argument(
        '--flops', action='store_true', help="one image's traced multiply-adds"
    )
    parser.add_argument('--json', type=Path, help='write the results here too')
    parser.add_argument('--_memory-of', dest='_memory_of', help=argparse.SUPPRESS)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Stop on settings that cannot run, naming the argument and the fix."""
    if args.device not in ('cpu', 'cuda'):
        raise SystemExit(f'benchmark.py: --device {args.device!r}: use cpu or cuda')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('benchmark.py: --device cuda, but no CUDA device; use cpu')
    for name, values in [('--batch', args.batch), ('--shape', args.shape)]:
        if min(values) < 1:
            raise SystemExit(f'benchmark.py: {name} {values}: give positive sizes')
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit('benchmark.py: --reps must be >= 1 and --warmup >= 0')


COLUMNS = [  # heading, row key, width, decimals, scale
    ('batch', 'batch', 5, 0, 1),
    ('img/s', 'images_per_s', 8, 1, 1),
    ('median ms', 'median_ms', 10, 1, 1),
    ('min ms', 'min_ms', 8, 1, 1),
    ('max ms', 'max_ms', 8, 1, 1),
    ('vs 1st', 'throughput_vs_first', 7, 2, 1),
    ('peak MiB', 'peak_mib', 9, 0, 1),
    ('saved MiB', 'saved_mib', 9, 1, 1),
    ('GFLOPs', 'flops_per_image', 7, 2, 1e9),
]


def report_mode(runners: list[Runner], args: argparse.Namespace) -> list[dict]:
    """Time one mode of every runner and print its table: one row each."""
    times = time_alternately(runners, args.warmup, args.reps)
    ips = [r.batch / statistics.median(t) for r, t in zip(runners, times)]
    rows = []
    for r, t, v in zip(runners, times, ips):
        row = dict(
            mode=r.mode,
            model=r.name,
            batch=r.batch,
            images_per_s=v,
            median_ms=statistics.median(t) * 1e3,
            min_ms=min(t) * 1e3,
            max_ms=max(t) * 1e3,
            throughput_vs_first=v / ips[0],
            peak_mib=None if args.no_memory else peak_memory(r, args),
        )
        if args.saved and r.mode == 'train':
            row['saved_mib'] = r.saved_mib()
        if args.flops:
            row['flops_per_image'] = r.flops_per_image()
        rows.append(row)
    label = 'inference' if runners[0].mode == 'infer' else 'training step'
    print(f'\n{label}\n  {"model":44s}', *(f'{c[0]:>{c[2]}}' for c in COLUMNS))
    for row in rows:
        cells = (
            f'{"-" if row.get(k) is None else f"{row[k] / scale:.{d}f}":>{w}}'
            for _, k, w, d, scale in COLUMNS
        )
        print(f'  {row["model"][:44]:44s}', *cells)
    return rows


def main() -> None:
    args = make_parser().parse_args()
    check_args(args)
    if args._memory_of:
        return _memory_probe(args)
    cpu = f'CPU, {torch.get_num_threads()} threads'
    device = torch.cuda.get_device_name() if args.device == 'cuda' else cpu
    flags = [('compile', 'torch.compile'), ('channels_last', 'channels_last')]
    flags.append(('backbone_only', 'backbone only'))
    options = ', '.join(text for flag, text in flags if getattr(args, flag))
    memory = None if args.no_memory else memory_note(args)
    print(
        f'device: {device}; input {args.shape[0]}x{args.shape[1]}, {args.dtype}'
        f'{", " + options if options else ""}; {args.reps} alternating '
        f'repetitions after {args.warmup} warm-up' + (f'\n({memory})' * bool(memory))
    )
    run = dict(mode='run', device=device, torch=torch.__version__, options=options)
    run.update(shape=args.shape, dtype=args.dtype, warmup=args.warmup)
    results = [dict(run, reps=args.reps, memory=memory)]
    if args.json:
        write_json(args.json, results)
    for mode in ['infer', 'train'] if args.mode == 'both' else [args.mode]:
        args.mode = mode
        runners = [Runner(s, b, args) for s in args.models for b in args.batch]
        results += report_mode(runners, args)
        del runners
        if args.json:
            write_json(args.json, results)


if __name__ == '__main__':
    main()
