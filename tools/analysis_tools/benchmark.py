#!/usr/bin/env python3
"""Throughput and peak memory of backbones or whole models, side by side.

Models are timed in one process, alternately (A, B, A, B ...), so that a
noisy machine slows both alike; the report gives the median and spread
(min-max) of every model and the ratio of the first model's images/s to
each other's. Peak memory is measured per model in a fresh process:
CUDA's max allocated, or on CPU the kernel's peak resident set (reset after
the model is built) over the resident set at that point. By default
(``--memory live``) glibc is told to map every allocation of 64 KiB or more
on its own, so freed tensors leave the resident set at once and the CPU
figure counts live memory as the CUDA one does; ``--memory rss`` keeps the
default allocator, whose retained free memory moves the figure by tens of
MiB between identical runs.

    B=tools/analysis_tools/benchmark.py
    python $B                                     # NomMer-T vs Swin-T, 224
    python $B --batch 32 --mode train
    python $B --mode train --saved                # + MiB kept for backward
    python $B --mode infer --profile 8            # + top ops per model
    python $B --fast-vs-plain                     # what the fast paths buy
    python $B --onednn-linear-all                 # Swin-T's linears via oneDNN
    python $B --backbone-only --shape 800 1333 --batch 2
    python $B --models configs/cls/nommer-small_8xb128_in1k.py \\
        "dict(type='NomMer', arch='tiny', contexts=('window',))" \\
        --device cuda --dtype bf16
    python $B --device cuda --dtype bf16 --batch 128 --mfu   # + FLOP utilisation
    python $B --models configs/det/cascade-mask-rcnn_nommer-b_fpn_ms-3x_coco.py \\
        --shape 800 1333 --batch 2 --mode train   # a whole training iteration

A model is a config path (its ``model``), a ``dict(...)`` backbone, or
``mmpretrain::path.py`` for an upstream config. A detector or segmentor
config runs its whole step on synthetic annotated images of ``--shape``
(:class:`DenseStep`): the data preprocessor pads them as in training (to 32
for the detectors, to the 512x512 crop for UperNet's training), then
``mode='loss'`` (training) or ``mode='predict'`` (inference). SyncBN layers
become BatchNorm (one process).
"""

from __future__ import annotations

import argparse
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

from nommer_mm.models.fast import fast_paths

ROOT = Path(__file__).resolve().parents[2]
# appended, not put first: tools/ holds test.py and train.py
sys.path.append(str(ROOT / 'tools'))
from gpu_check import write_json  # noqa: E402

DEFAULT_MODELS = [
    'configs/cls/nommer-tiny_8xb128_in1k.py',
    'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
]
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class Backbone(nn.Module):
    """Forward the backbone alone; the loss is the mean of its outputs."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x)


class Classifier(nn.Module):
    """A model's tensor forward, so heads are included."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='tensor')


class DenseStep(nn.Module):
    """A detector's or segmentor's whole step on a fixed synthetic batch of
    annotated images: in training the summed losses of ``mode='loss'`` (RPN,
    every RoI stage with box sampling and mask targets, or the decode and
    auxiliary heads), in eval ``mode='predict'`` (NMS, mask pasting ...).
    The input is the batch of raw images (0-255); the model's data
    preprocessor normalises and pads it, as in a training iteration."""

    def __init__(self, model: nn.Module, scope: str, boxes: int = 8) -> None:
        super().__init__()
        self.model = model
        self.scope = scope
        self.boxes = boxes
        heads = [
            m.num_classes
            for m in model.modules()
            if isinstance(getattr(m, 'num_classes', None), int) and m.num_classes > 1
        ]
        self.num_classes = min(heads) if heads else 1
        self.samples: list = []
        self.log_vars: dict = {}  # the last training step's losses, by name

    def to(self, *args, **kwargs) -> 'DenseStep':
        # mmengine's BaseModel.to also tells the data preprocessor the device
        self.model.to(*args, **kwargs)
        return self

    def example_input(self, batch: int, shape, device) -> torch.Tensor:
        """Random images and, fixed with them, their annotations."""
        g = torch.Generator().manual_seed(0)
        H, W = shape
        self.samples = [self._sample(H, W, g) for _ in range(batch)]
        return (torch.rand(batch, 3, H, W, generator=g) * 255).to(device)

    def _sample(self, H: int, W: int, g: torch.Generator):
        meta = dict(img_shape=(H, W), ori_shape=(H, W), scale_factor=(1.0, 1.0))
        labels = torch.randint(0, self.num_classes, (self.boxes,), generator=g)
        if self.scope == 'mmseg':
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample

            # a few class regions, as the boxes below, on an ignored background
            seg = torch.full((1, H, W), 255, dtype=torch.long)
            for (x1, y1, x2, y2), c in zip(self._boxes(H, W, g).long(), labels):
                seg[:, y1:y2, x1:x2] = c
            return SegDataSample(metainfo=meta, gt_sem_seg=PixelData(data=seg))
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData

        boxes = self._boxes(H, W, g)
        inst = InstanceData(bboxes=boxes, labels=labels)
        if getattr(getattr(self.model, 'roi_head', None), 'with_mask', False):
            masks = torch.zeros(self.boxes, H, W, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.long()):
                masks[i, y1:y2, x1:x2] = 1
            inst.masks = BitmapMasks(masks.numpy(), H, W)
        return DetDataSample(metainfo=meta, gt_instances=inst)

    def _boxes(self, H: int, W: int, g: torch.Generator) -> torch.Tensor:
        size = torch.tensor([W, H, W, H], dtype=torch.float32)
        xy = torch.rand(self.boxes, 2, generator=g) * 0.7
        wh = torch.rand(self.boxes, 2, generator=g) * 0.25 + 0.05
        return torch.cat([xy, xy + wh], 1) * size

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
    """A config path of this repository, or ``pkg::path`` inside an
    upstream package's ``.mim/configs``."""
    if '::' not in spec:
        return str(ROOT / spec)
    from mmengine.utils import get_installed_path

    package, rel = spec.split('::')
    return str(Path(get_installed_path(package)) / '.mim/configs' / rel)


def build(spec: str, backbone_only: bool) -> tuple[nn.Module, str]:
    import nommer_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    if spec.startswith('dict('):
        init_default_scope('mmpretrain')
        # a dict(...) expression of literals, evaluated with nothing else
        cfg = eval(spec, {'__builtins__': {}, 'dict': dict})
        return Backbone(MODELS.build(cfg)), spec
    cfg = Config.fromfile(config_path(spec))
    scope = cfg.get('default_scope', 'mmpretrain')
    if scope in ('mmdet', 'mmseg'):
        from nommer_mm.launch import setup_codebase

        setup_codebase(cfg)
    else:
        init_default_scope(scope)
    if cfg.model.get('backbone', {}).get('init_cfg'):
        cfg.model.backbone.init_cfg = None
    name = Path(spec.split('::')[-1]).stem
    # one process: SyncBN layers (the dense recipes') become BatchNorm
    if backbone_only:
        backbone = revert_sync_batchnorm(MODELS.build(cfg.model.backbone))
        return Backbone(backbone), name + ' (backbone)'
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if scope in ('mmdet', 'mmseg'):
        return DenseStep(model, scope), name
    return Classifier(model), name


def check_dense_dtype(module: nn.Module, dtype: str, device: str) -> None:
    """Stop before a run that cannot work: mmcv 2.1.0's RoIAlign and nms
    take float32 only on the CPU (where autocast also leaves the detector's
    boxes in low precision), and its CUDA RoIAlign has no bfloat16 kernel
    (float, double and half only)."""
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
    """One model prepared for timed steps."""

    def __init__(self, spec: str, args, fast: bool = True) -> None:
        self.spec, self.fast = spec, fast
        self.module, self.name = build(spec, args.backbone_only)
        check_dense_dtype(self.module, args.dtype, args.device)
        if not fast:
            self.name += ' [fast paths off]'
        self.device = torch.device(args.device)
        self.module.to(self.device)
        self.dtype = DTYPES[args.dtype]
        self.mode = args.mode
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        if isinstance(self.module, DenseStep):
            x = self.module.example_input(args.batch, args.shape, self.device)
        else:
            x = torch.randn(args.batch, 3, *args.shape, device=self.device)
        self.x = x.to(memory_format=fmt)
        if args.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.onednn_changed = 0
        if args.onednn_linear_all:
            from nommer_mm.models.fast import use_onednn_linear

            self.onednn_changed = use_onednn_linear(self.module)
        self.fn = torch.compile(self.module) if args.compile else self.module
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-4)

    def step(self) -> None:
        with fast_paths(self.fast):
            self._step()

    def _step(self) -> None:
        ctx = torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype is not None
        )
        if self.mode == 'infer':
            self.module.eval()
            with torch.no_grad(), ctx:
                self.fn(self.x)
        else:
            self.module.train()
            with ctx:
                loss = _loss(self.fn(self.x))
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if self.device.type == 'cuda':
            torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype_name: str) -> tuple[float, str]:
    """The device's measured matrix-product rate in the benchmark's dtype
    (FLOP/s, one multiply-add = 2 FLOPs): the best of a few large square
    products, the reference that model FLOP utilisation is taken against."""
    cuda = device.type == 'cuda'
    dtype = DTYPES[dtype_name] or torch.float32
    n = 8192 if cuda else cpu_matmul_size(dtype)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def once() -> float:
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10 if cuda else 1):
            torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / (10 if cuda else 1)

    once()  # warm-up: kernel selection, caches
    best = min(once() for _ in range(5))
    return 2 * n**3 / best, f'{n}x{n} {dtype_name}'


def cpu_matmul_size(dtype: torch.dtype, budget_s: float = 0.5) -> int:
    """The largest of 512, 1024, 2048 whose product should take at most
    ``budget_s`` on this CPU, from the time of one 512x512 product: a CPU
    without bf16/fp16 units runs those products some 100x slower than fp32,
    where 2048x2048 would take minutes for the peak alone."""
    a = torch.randn(512, 512).to(dtype)
    torch.mm(a, a)  # warm-up
    t = time.perf_counter()
    torch.mm(a, a)
    t512 = time.perf_counter() - t
    sizes = [n for n in (1024, 2048) if t512 * (n / 512) ** 3 <= budget_s]
    return max(sizes, default=512)


def flops_per_image(runner: Runner) -> int | None:
    """Multiply-adds of one image's forward (``count_flops``, the traced
    convention (a): every matrix product and convolution, attention
    included, the plain path, all of NomMer's candidate contexts); None for
    a whole detector or segmentor step, which does not trace."""
    from nommer_mm.analysis import count_flops

    if isinstance(runner.module, DenseStep):
        return None
    return count_flops(runner.module, runner.x[:1])


def mfu(flops: int | None, mode: str, batch: int, seconds: float, peak: float):
    """Model FLOP utilisation: 2 FLOPs per multiply-add, a training step
    counted as three forwards (the backward's two products per forward
    one), over the measured matrix-product peak."""
    if flops is None:
        return None
    return 2 * flops * batch * (3 if mode == 'train' else 1) / seconds / peak


def profile_step(runner: Runner, rows: int) -> str:
    """torch.profiler table of one step: the ``rows`` ops with the most
    self time, with their share of the step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if runner.device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        runner.step()
    key = (
        'self_cuda_time_total'
        if runner.device.type == 'cuda'
        else 'self_cpu_time_total'
    )
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def time_alternately(runners, warmup: int, reps: int) -> list[list[float]]:
    for r in runners:
        for _ in range(warmup):
            r.step()
    times = [[] for _ in runners]
    for _ in range(reps):
        for i, r in enumerate(runners):
            t = time.perf_counter()
            r.step()
            times[i].append(time.perf_counter() - t)
    return times


# --memory live: glibc maps every allocation of at least this many bytes on
# its own and unmaps it at free, so the resident set follows the live tensors
LIVE_MMAP_THRESHOLD = 64 * 1024


def live_memory(args) -> bool:
    """Whether CPU peak memory is measured as live memory (see --memory)."""
    return (
        args.device == 'cpu'
        and args.memory == 'live'
        and platform.libc_ver()[0] == 'glibc'
    )


def memory_note(args) -> str:
    if args.device != 'cpu':
        return 'peak MiB: torch.cuda.max_memory_allocated over the step'
    if live_memory(args):
        return (
            'peak MiB: live memory (peak resident set with glibc '
            f'mapping every allocation >= {LIVE_MMAP_THRESHOLD // 1024} '
            "KiB, so that freed tensors leave it at once; like CUDA's "
            'max allocated)'
        )
    return (
        'peak MiB: peak resident set with the default allocator '
        '(includes memory freed but kept by the allocator)'
    )


def peak_memory(spec: str, args, fast: bool = True) -> float:
    """MiB of peak memory of one step, measured in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        '--_memory-of',
        spec,
        '--mode',
        args.mode,
        '--batch',
        str(args.batch),
        '--shape',
        *map(str, args.shape),
        '--dtype',
        args.dtype,
        '--device',
        args.device,
    ]
    if args.backbone_only:
        cmd.append('--backbone-only')
    if args.channels_last:
        cmd.append('--channels-last')
    if args.onednn_linear_all:
        cmd.append('--onednn-linear-all')
    if not fast:
        cmd.append('--no-fast')
    env = dict(os.environ)
    if live_memory(args):
        env['MALLOC_MMAP_THRESHOLD_'] = str(LIVE_MMAP_THRESHOLD)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith('PEAK ')]
    if not lines:
        raise RuntimeError(f'memory probe failed:\n{out.stderr[-2000:]}')
    return float(lines[-1].split()[1])


def _rss_now() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM; Linux >= 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('no VmHWM in /proc/self/status')


def _memory_probe(args) -> None:
    """Peak memory of the first step over the built model: activations,
    gradients and (training) the optimizer state."""
    runner = Runner(args._memory_of, args, fast=not args.no_fast)
    if runner.device.type == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner.step()
        peak = torch.cuda.max_memory_allocated() - base
    elif _reset_peak_rss():
        # exact: the kernel's high-water mark of this process, reset here
        base = _rss_now()
        runner.step()
        peak = _peak_rss() - base
    else:  # no clear_refs: sample the resident set (may miss brief peaks)
        import threading

        base = _rss_now()
        samples = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                samples.append(_rss_now())
                time.sleep(0.0005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        runner.step()
        done.set()
        thread.join()
        samples.append(_rss_now())
        peak = max(samples) - base
    print(f'PEAK {peak / 2**20:.1f}')


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS)
    parser.add_argument('--mode', choices=['infer', 'train', 'both'], default='both')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224])
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp32')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument(
        '--onednn-linear-all',
        action='store_true',
        help="turn the plain nn.Linear layers of every model (e.g. Swin-T's) "
        "into nommer_mm's oneDNN Linear (nommer_mm.models.layers.onednn."
        "use_onednn_linear), which NomMer's own layers use already: shows "
        'how much of a CPU ratio comes from that kernel',
    )
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu'
    )
    parser.add_argument('--backbone-only', action='store_true')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument(
        '--memory',
        choices=['live', 'rss'],
        default='live',
        help='CPU peak memory: "live" (default) counts memory in use, as '
        "CUDA's max allocated does, by making glibc return every freed "
        'allocation >= 64 KiB at once; "rss" is the resident set under the '
        'default allocator, which adds memory the allocator keeps and varies '
        'by tens of MiB between identical runs',
    )
    parser.add_argument(
        '--saved',
        action='store_true',
        help='training: also print the MiB of tensors kept '
        'for backward by one forward (nommer_mm.analysis.'
        'saved_for_backward_bytes)',
    )
    parser.add_argument(
        '--profile',
        type=int,
        default=0,
        metavar='N',
        help='after timing, profile one step of each model '
        'and print its N ops with the most self time',
    )
    parser.add_argument(
        '--no-fast',
        action='store_true',
        help='run every model with nommer_mm.fast_paths off',
    )
    parser.add_argument(
        '--fast-vs-plain',
        action='store_true',
        help='run every model twice, fast paths on and off, side by side',
    )
    parser.add_argument(
        '--mfu',
        action='store_true',
        help='also print model FLOP utilisation: model FLOPs per second '
        '(traced count, x3 for a training step) over the measured peak of a '
        'large matrix product in --dtype on --device',
    )
    parser.add_argument('--json', help='write the results here too')
    parser.add_argument('--_memory-of', dest='_memory_of', help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = make_parser().parse_args()
    if args._memory_of:
        return _memory_probe(args)

    modes = ['infer', 'train'] if args.mode == 'both' else [args.mode]
    device_name = (
        torch.cuda.get_device_name()
        if args.device == 'cuda'
        else f'CPU, {torch.get_num_threads()} threads'
    )
    options = ''.join(
        text
        for on, text in [
            (args.channels_last, ', channels_last'),
            (args.compile, ', torch.compile'),
            (args.onednn_linear_all, ', every nn.Linear through oneDNN'),
        ]
        if on
    )
    print(
        f'device: {device_name}; batch {args.batch}, input '
        f'{args.shape[0]}x{args.shape[1]}, {args.dtype}{options}; '
        f'{args.reps} alternating repetitions after {args.warmup} warm-up'
    )
    # what was run, first; the file is rewritten (beside, then renamed) after
    # every mode, so a run stopped by a time limit, even mid-write, keeps the
    # modes it finished
    results = [
        dict(
            mode='run',
            device=device_name,
            torch=torch.__version__,
            batch=args.batch,
            shape=list(args.shape),
            dtype=args.dtype,
            options=options.lstrip(', '),
            backbone_only=args.backbone_only,
            warmup=args.warmup,
            reps=args.reps,
            memory=None if args.no_memory else memory_note(args),
        )
    ]

    def save() -> None:
        if args.json:
            write_json(Path(args.json), results)

    peak = flops = None
    if args.mfu:
        peak, what = matmul_peak(torch.device(args.device), args.dtype)
        print(f'matrix-product peak: {peak / 1e12:.2f} TFLOP/s ({what}, measured)')
        results.append(dict(mode='peak', matmul=what, flop_per_s=peak))
    save()
    for mode in modes:
        args.mode = mode
        variants = [True, False] if args.fast_vs_plain else [not args.no_fast]
        runners = [
            Runner(spec, args, fast) for spec in args.models for fast in variants
        ]
        if args.onednn_linear_all:
            print(
                '  nn.Linear layers turned into oneDNN Linear: '
                + ', '.join(f'{r.name} {r.onednn_changed}' for r in runners)
            )
        if args.mfu and flops is None:
            flops = [flops_per_image(r) for r in runners]
        times = time_alternately(runners, args.warmup, args.reps)
        ips = [args.batch / statistics.median(t) for t in times]
        mems = [
            None if args.no_memory else peak_memory(r.spec, args, r.fast)
            for r in runners
        ]
        label = 'inference' if mode == 'infer' else 'training step (fwd + bwd + AdamW)'
        print(f'\n{label}')
        if not args.no_memory:
            print(f'  ({memory_note(args)})')
        if args.mfu:
            print(
                '  (MFU: 2 FLOPs per multiply-add of the traced count, a '
                'training step as 3 forwards, over the matrix-product peak)'
            )
        print(
            f'  {"model":55s} {"img/s":>8s} {"median ms":>10s} '
            f'{"min-max ms":>15s} {"vs 1st":>7s} {"peak MiB":>9s}'
            + (f' {"MFU":>6s}' if args.mfu else '')
        )
        for i, (r, t, v, mem) in enumerate(zip(runners, times, ips, mems)):
            med = statistics.median(t)
            results.append(
                dict(
                    mode=mode,
                    model=r.name,
                    images_per_s=v,
                    median_ms=med * 1e3,
                    min_ms=min(t) * 1e3,
                    max_ms=max(t) * 1e3,
                    throughput_vs_first=v / ips[0],
                    peak_mib=mem,
                )
            )
            cells = f'{"" if mem is None else f"{mem:.0f}":>9s}'
            if args.mfu:
                util = mfu(flops[i], mode, args.batch, med, peak)
                results[-1].update(flops_per_image=flops[i], mfu=util)
                cells += f' {"-" if util is None else f"{util:.1%}":>6s}'
            print(
                f'  {r.name[-55:]:55s} {v:8.1f} {med * 1e3:10.1f} '
                f'{min(t) * 1e3:7.1f}-{max(t) * 1e3:<7.1f} '
                f'{v / ips[0]:7.2f} {cells}'
            )
        if args.profile:
            for r in runners:
                print(f'\n  profile of one step: {r.name}')
                print(profile_step(r, args.profile))
        if mode == 'train' and args.saved:
            from nommer_mm.analysis import saved_for_backward_bytes

            saved = []
            for r in runners:
                with fast_paths(r.fast):
                    saved.append(
                        saved_for_backward_bytes(r.module.train(), r.x) / 2**20
                    )
            for r, mib in zip(runners, saved):
                ratio = '' if r is runners[0] else f'  ({mib / saved[0]:.2f}x of 1st)'
                print(f'  saved for backward: {r.name[-40:]:40s} {mib:9.1f} MiB{ratio}')
                results.append(dict(mode='saved', model=r.name, saved_mib=mib))
        for r, v, mem in zip(runners[1:], ips[1:], mems[1:]):
            line = (
                f'  => {runners[0].name}: {ips[0] / v:.2f}x the throughput of {r.name}'
            )
            if mem is not None and mems[0] is not None:
                line += f', {mems[0] / mem:.2f}x its peak memory'
            print(line)
        del runners
        save()


if __name__ == '__main__':
    main()
