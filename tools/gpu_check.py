#!/usr/bin/env python3
"""Check a GPU stack for nommer-mm in one command (a few minutes):

    python tools/gpu_check.py [--out DIR] [--only ops backbones attention dist compile]

ops: mmcv's nms, batched_nms and RoIAlign (forward, backward) equal the CPU's.
backbones: NomMer-T/S/B, GC ViT-T, Visformer-S and CoTNet-50 classifiers,
  forward and backward in fp32 (TF32 off), bf16 and fp16 autocast against the
  CPU in fp32, same weights and input. The share of NomMer's nominations equal
  to the CPU's is reported; logits and gradients are compared with the CPU's
  replayed. Tolerances (logits: largest error over largest |logit|; gradients:
  relative L2): fp32 1e-4 / 1e-3 (or 10x the CPU fp32's own distance from
  fp64, reported), fp16 2e-2 / 5e-2, bf16 6e-2 / 1.5e-1.
attention: the SDPA backend each attention layer of NomMer-T, GC ViT-T and
  Visformer-S gets under bf16 autocast; on CUDA the MATH backend fails.
dist: one-process NCCL training (--amp) and test of small classification,
  Cascade Mask R-CNN and UperNet configs (SyncBN, generated data) through
  tools/dist_train.sh and dist_test.sh; a run past --dist-timeout is stopped
  with all its processes and fails, its output kept in DIR/dist-*-failure.log.
compile: torch.compile(fullgraph=True) of NomMer-T, bf16 logits vs eager.

DIR/gpu_check.json is rewritten after each row ("complete": false until the
end). A section or model that raises gets a failed row; the check goes on.
Exit status 1 if a check fails. Without a GPU it exits 0; --allow-cpu runs
it on the CPU (its own test; dist without AMP, which needs a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from subprocess import STDOUT

import torch
from bounded_run import run_bounded  # tools/

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIERS = {
    'NomMer-T': 'configs/cls/nommer-tiny_8xb128_in1k.py',
    'NomMer-S': 'configs/cls/nommer-small_8xb128_in1k.py',
    'NomMer-B': 'configs/cls/nommer-base_8xb128_in1k.py',
    'GC ViT-T': 'configs/cls/gcvit-tiny_8xb128_in1k.py',
    'Visformer-S': 'configs/cls/visformer-small_8xb128_in1k.py',
    'CoTNet-50': 'configs/cls/cotnet-50_8xb128_in1k.py',
}
SECTIONS = ['ops', 'backbones', 'attention', 'dist', 'compile']
# (logits, gradients) tolerances per precision, see the docstring.
TOLERANCES = {'fp32': (1e-4, 1e-3), 'fp16': (2e-2, 5e-2), 'bf16': (6e-2, 1.5e-1)}
ROUNDING = 10
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
ATTENTION_MODELS = ('NomMer-T', 'GC ViT-T', 'Visformer-S')
DIST_ITERS = 4


class Report:
    """The rows, printed as they come and kept in ``path``, rewritten after
    every row: a run stopped from outside leaves what it measured."""

    def __init__(self, path: Path, environment: dict) -> None:
        self.path, self.environment = path, environment
        self.rows: list[dict] = []
        self.start = time.time()

    def add(self, section: str, name: str, ok: bool, **figures) -> None:
        self.rows.append(dict(section=section, name=name, ok=bool(ok), **figures))
        shown = ', '.join(
            f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
            for k, v in figures.items()
        )
        print(f'[{"ok" if ok else "FAIL"}] {section}: {name}  {shown}', flush=True)
        self.write(complete=False)

    def write(self, complete: bool) -> dict:
        result = dict(environment=self.environment, complete=complete, rows=self.rows)
        failed = sum(not r['ok'] for r in self.rows)
        result.update(seconds=round(time.time() - self.start, 1), failed=failed)
        # written beside, then renamed: never a half-written file
        partial = self.path.with_name(self.path.name + '.partial')
        partial.write_text(json.dumps(result, indent=1))
        partial.replace(self.path)
        return result


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over the largest |b| (b: the reference)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@contextlib.contextmanager
def guarded(report: Report, section: str, name: str, device: str):
    """A model or section that raises gets a failed row; the check goes on."""
    try:
        yield
    except Exception as err:
        traceback.print_exc()
        report.add(section, f'{name} raised', False, error=repr(err)[:300])
    finally:
        if device == 'cuda':
            torch.cuda.empty_cache()


def check_ops(device: str, report: Report) -> None:
    from mmcv.ops import RoIAlign, batched_nms, nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 4 + torch.rand(300, 2, generator=g) * 60], 1)
    scores = torch.randperm(300, generator=g).float() / 300  # no ties
    idxs = torch.randint(0, 5, (300,), generator=g)
    cfg = dict(type='nms', iou_threshold=0.6)
    for name, op in [
        ('nms', lambda b, s, i: nms(b, s, 0.5)),
        ('batched_nms', lambda b, s, i: batched_nms(b, s, i, cfg)),
    ]:
        inputs = [[t.to(d) for t in (boxes, scores, idxs)] for d in ('cpu', device)]
        cpu, dev = (op(*on)[1].tolist() for on in inputs)
        report.add('ops', name, cpu == dev, kept=len(cpu))

    feat = torch.randn(2, 16, 64, 64, generator=g)
    rois = torch.cat([torch.randint(0, 2, (64, 1), generator=g).float(), boxes[:64]], 1)
    grad_out = torch.randn(64, 16, 7, 7, generator=g)
    op = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=True)
    results = []
    for dev in ('cpu', device):
        f = feat.to(dev).requires_grad_()
        out = op(f, rois.to(dev))
        out.backward(grad_out.to(dev))
        results.append((out, f.grad))
    fwd, bwd = (rel_max(d, c) for d, c in zip(results[1], results[0]))
    ok = fwd < 1e-5 and bwd < 1e-5
    report.add('ops', 'RoIAlign', ok, forward_rel=fwd, backward_rel=bwd)


def build_classifier(config: str) -> torch.nn.Module:
    import nommer_mm  # noqa: F401  (registers the backbones)
    from nommer_mm.launch import load_config
    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS, init_default_scope

    cfg = load_config(str(ROOT / config))
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('train_cfg', None)  # no Mixup/CutMix batch augments
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')  # init_weights logs a line per parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Running statistics from ``x``: randomly initialised BatchNorm in eval
    mode does not normalise, and deep nets' gradients then explode."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        model(x, mode='tensor')
    model.eval()


def nominators(model: torch.nn.Module) -> dict:
    modules = model.named_modules()
    return {n: m for n, m in modules if type(m).__name__ == 'ContextNominator'}


@contextlib.contextmanager
def replayed(model: torch.nn.Module, maps: dict):
    """The nominators select the candidates in ``maps``, not their argmax."""
    patched = []
    for name, nominator in nominators(model).items():

        def forward(feats, nominator=nominator, index=maps.get(name)):
            nominator.nomination = index.to(feats[0].device)
            chosen, out = nominator.nomination.unsqueeze(-1), feats[-1]
            for i in range(len(feats) - 2, -1, -1):
                out = torch.where(chosen == i, feats[i], out)
            return out

        nominator.forward = forward
        patched.append(nominator)
    try:
        yield
    finally:
        for nominator in patched:
            del nominator.forward  # the class's forward again


def run_once(model, x, dtype_name: str, weight: torch.Tensor | None):
    """Logits, gradients (given ``weight``) and nominations of one step."""
    model.zero_grad(set_to_none=True)
    on = dtype_name != 'fp32'
    autocast = torch.autocast(x.device.type, dtype=DTYPES[dtype_name], enabled=on)
    with torch.set_grad_enabled(weight is not None), autocast:
        logits = model(x, mode='tensor')
    grads = None
    if weight is not None:
        (logits.float() * weight.to(x.device)).sum().backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        grads = torch.cat(grads).float().cpu()
    maps = {n: m.nomination.cpu() for n, m in nominators(model).items()}
    return logits.detach().float().cpu(), grads, maps


def device_copy(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """The model the device runs: a copy of the CPU reference's."""
    return copy.deepcopy(model).to(device)


def check_backbones(
    device: str, report: Report, size: int, batch: int, names: list[str] | None
) -> None:
    """Each classifier in fp32, bf16 and fp16 on ``device`` vs CPU fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for name in names or CLASSIFIERS:
        with guarded(report, 'backbones', name, device):
            torch.manual_seed(0)
            model = build_classifier(CLASSIFIERS[name])
            g = torch.Generator().manual_seed(1)
            x = torch.randn(batch, 3, size, size, generator=g)
            calibrate_batchnorm(model, x)
            weight = torch.randn(batch, model.head.num_classes, generator=g)
            ref = run_once(model, x, 'fp32', weight)
            dev_model = device_copy(model, device)
            for dtype in ('fp32', 'bf16', 'fp16'):
                figures = compare(dev_model, x.to(device), dtype, weight, ref)
                rels = figures['logits_rel'], figures['grads_rel']
                ok = all(r <= t for r, t in zip(rels, TOLERANCES[dtype]))
                if not ok and dtype == 'fp32':  # the CPU fp32's own rounding
                    exact = copy.deepcopy(model).double()
                    own = compare(exact, x.double(), 'fp32', weight.double(), ref)
                    own = own['logits_rel'], own['grads_rel']
                    figures['cpu_fp32_vs_fp64_logits'] = own[0]
                    figures['cpu_fp32_vs_fp64_grads'] = own[1]
                    ok = within_fp32_rounding(*rels, own)
                report.add('backbones', f'{name} {dtype}', ok, **figures)


def compare(model, x, dtype: str, weight: torch.Tensor, ref: tuple) -> dict:
    """``model`` on ``x`` under ``dtype`` against ``ref`` (the CPU fp32's
    logits, gradients, nominations): the share of its own nominations equal
    to the CPU's; its logits' and gradients' errors with the CPU's replayed."""
    start, figures = time.time(), {}
    if ref[2] and x.dtype != torch.float64:
        maps = run_once(model, x, dtype, None)[2]
        same = torch.cat([(maps[k] == v).flatten() for k, v in ref[2].items()])
        figures['nominations_agree'] = float(same.float().mean())
    with replayed(model, ref[2]):
        logits, grads, _ = run_once(model, x, dtype, weight)
    figures.update(logits_rel=rel_max(logits, ref[0]), grads_rel=rel_l2(grads, ref[1]))
    figures['s'] = round(time.time() - start, 2)
    return figures


def within_fp32_rounding(
    logits_rel: float, grads_rel: float, own: tuple[float, float]
) -> bool:
    """Each figure within its fp32 tolerance or ROUNDING times the CPU fp32's
    own distance from fp64 (``own``): two devices round each their own way,
    and long sums (a stem convolution's weight gradient) amplify it."""
    bounds = [max(t, ROUNDING * o) for t, o in zip(TOLERANCES['fp32'], own)]
    return logits_rel <= bounds[0] and grads_rel <= bounds[1]


@contextlib.contextmanager
def sdpa_backends(record: list):
    """Record each ``F.scaled_dot_product_attention`` call in the block as
    (the calling module's class, the backend torch's dispatcher picks for
    its inputs, the last-dim strides of its tensors: fused kernels need 1)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend

    original = F.scaled_dot_product_attention

    def cast(t):  # as autocast casts the inputs
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            return t
        on = torch.is_autocast_enabled(t.device.type)
        return t.to(torch.get_autocast_dtype(t.device.type)) if on else t

    def recording(*args, **kwargs):
        frame = sys._getframe(1)
        while frame and not isinstance(frame.f_locals.get('self'), torch.nn.Module):
            frame = frame.f_back
        caller = type(frame.f_locals['self']).__name__ if frame else '?'
        choice = torch._fused_sdp_choice(
            *map(cast, args), **{k: cast(v) for k, v in kwargs.items()}
        )
        tensors = [*args, *kwargs.values()]
        strides = [t.stride(-1) for t in tensors if isinstance(t, torch.Tensor)]
        record.append((caller, SDPBackend(choice).name, strides))
        return original(*args, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def check_attention(device: str, report: Report, size: int, batch: int) -> None:
    """SDPA backends by calling layer; on CUDA a MATH backend call fails."""
    for name in ATTENTION_MODELS:
        with guarded(report, 'attention', name, device):
            model = build_classifier(CLASSIFIERS[name]).to(device)
            x = torch.randn(batch, 3, size, size, device=device)
            bf16 = torch.autocast(device, dtype=torch.bfloat16)
            for training in (True, False):
                record: list = []
                grad = torch.set_grad_enabled(training)
                with sdpa_backends(record), grad, bf16:
                    model.train(training)(x, mode='tensor')
                backends: dict = {}
                for caller, backend, _ in record:
                    counts = backends.setdefault(caller, {})
                    counts[backend] = counts.get(backend, 0) + 1
                math = sum(c.get('MATH', 0) for c in backends.values())
                mode = 'training' if training else 'inference'
                figures = dict(calls=len(record), math_calls=math, backends=backends)
                ok = device != 'cuda' or math == 0
                report.add('attention', f'{name} bf16 {mode}', ok, **figures)


def dist_configs(work: Path) -> list[tuple[str, Path, str]]:
    """(name, config, metric) of the three runs, data generated in ``work``."""
    from demo_configs import small_det_config, small_seg_config
    from demo_data import make_ade_layout, make_coco_layout, make_imagenet_layout

    textures = make_imagenet_layout(work / 'textures', {'train': 8, 'val': 4})
    cls = work / 'cls.py'
    cls.write_text(f"""
_base_ = {str(ROOT / 'configs/cls/nommer-tiny_2xb16_textures-demo.py')!r}
data_root = {str(textures)!r}
sync_bn = 'torch'
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
train_cfg = dict(max_iters={DIST_ITERS}, val_interval={DIST_ITERS})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={DIST_ITERS}))
""")
    coco = make_coco_layout(work / 'coco', {'train': 4, 'val': 4})
    det_base = ROOT / 'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py'
    ade = make_ade_layout(work / 'ade', {'training': 4, 'validation': 2})
    seg_base = ROOT / 'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py'
    det = small_det_config(coco, work / 'det.py', det_base, iters=DIST_ITERS)
    seg = small_seg_config(ade, work / 'seg.py', seg_base, iters=DIST_ITERS)
    return [
        ('classification (NomMer-T)', cls, 'accuracy/top1'),
        ('Cascade Mask R-CNN (NomMer-T)', det, 'coco/bbox_mAP'),
        ('UperNet (NomMer-T)', seg, 'mIoU'),
    ]


def check_dist(
    device: str, report: Report, work: Path, logs: Path, timeout: float
) -> None:
    """Train and test each small config in ``work`` (``work/<config>/``
    holds its checkpoint and metrics); a failed run's output is kept in
    ``logs``. Each run is stopped after ``timeout`` seconds and fails."""
    amp = ['--amp'] if device == 'cuda' else []  # AmpOptimWrapper needs a GPU

    def launch(script: str, args: list) -> tuple[int | None, str]:
        with socket.socket() as s:  # a free port
            s.bind(('127.0.0.1', 0))
            port = str(s.getsockname()[1])
        # the launchers run $PYTHON: this one, whose stack is being checked
        env = dict(os.environ, PORT=port, PYTHON=sys.executable)
        cmd = ['bash', str(ROOT / 'tools' / script), *map(str, args)]
        rc, out, _ = run_bounded(cmd, timeout, cwd=work, env=env, stderr=STDOUT)
        return rc, out

    for name, config, metric in dist_configs(work):
        run_dir, start, stage = work / config.stem, time.time(), 'train'
        out, ckpt = run_dir / 'metrics.json', run_dir / f'iter_{DIST_ITERS}.pth'
        train = [config, 1, '--work-dir', run_dir, *amp]
        rc, log = launch('dist_train.sh', train)
        figures = dict(train_s=round(time.time() - start, 1))
        figures['backend'] = 'nccl' if device == 'cuda' else 'gloo'
        if rc == 0:
            figures['amp'] = 'AmpOptimWrapper' in log if amp else False
            test = [config, ckpt, 1, '--work-dir', run_dir, '--out', out]
            stage, (rc, log) = 'test', launch('dist_test.sh', test)
        metrics = json.loads(out.read_text()) if rc == 0 and out.exists() else {}
        figures.update(metric=f'{metric}={metrics.get(metric)}', metrics=metrics)
        if rc != 0:
            log_file = logs / f'dist-{config.stem}-failure.log'
            log_file.write_text(log)
            # the rank's own exception, not torchrun's ChildFailedError
            lines = log.strip().splitlines()
            errors = [ln for ln in lines if 'Error' in ln and 'ChildFailed' not in ln]
            if rc is None:
                errors.append(f'{stage} stopped after {timeout:g} s (--dist-timeout)')
            figures.update(error=(errors or lines or ['?'])[-1], log=str(log_file))
        ok = metric in metrics and figures.get('amp', False) == bool(amp)
        report.add('dist', name, ok, **figures)


def check_compile(device: str, report: Report, batch: int, size: int) -> None:
    """NomMer-T compiled as one graph (a break raises); logits vs eager."""
    import torch._dynamo

    torch.manual_seed(0)
    model = build_classifier(CLASSIFIERS['NomMer-T'])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    calibrate_batchnorm(model, x)  # as in backbones: a sane net to compare
    model, x = model.eval().to(device), x.to(device)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return model(x, mode='tensor')

    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        start = time.time()
        compiled = torch.compile(logits, fullgraph=True)(x)
        if device == 'cuda':
            torch.cuda.synchronize()
        compile_s = time.time() - start
        eager = logits(x)
    diff = rel_max(compiled.float(), eager.float())
    ok = diff < TOLERANCES['bf16'][0]
    figures = dict(compile_s=round(compile_s, 1), logits_rel=diff)
    report.add('compile', f'NomMer-T bf16 batch {batch}', ok, **figures)


def _terminated(signum: int, frame) -> None:
    print('gpu_check: stopped by SIGTERM', flush=True)
    sys.exit(128 + signum)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2],
    )
    add = parser.add_argument
    add('--out', type=Path, default=Path('work_dirs/gpu_check'))
    add('--only', nargs='+', choices=SECTIONS, default=SECTIONS)
    add('--models', nargs='+', choices=list(CLASSIFIERS), help='backbones: only these')
    add('--size', type=int, default=224, help='input size of the classifiers')
    add('--batch', type=int, default=4, help='batch (compile on CUDA: 64)')
    timeout = 'dist: seconds a train or test run may take (a hung NCCL rendezvous)'
    add('--dist-timeout', type=float, default=300, metavar='S', help=timeout)
    add('--allow-cpu', action='store_true', help='without a GPU, run on the CPU')
    return parser


def main() -> int:
    args = make_parser().parse_args()
    for flag, value in [('--size', args.size), ('--batch', args.batch)]:
        if value < 1:
            raise SystemExit(f'gpu_check: {flag} {value}: give a positive number')
    # SIGTERM becomes SystemExit, which unwinds through run_bounded: it then
    # ends every process of a dist run (in a session of its own)
    signal.signal(signal.SIGTERM, _terminated)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print('gpu_check: skipped, no CUDA device (torch.cuda.is_available() False)')
        return 0
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    args.out.mkdir(parents=True, exist_ok=True)
    import mmcv
    from mmcv.ops import get_compiling_cuda_version

    facts = dict(device=device, torch=torch.__version__, cuda=torch.version.cuda)
    facts.update(mmcv=mmcv.__version__, mmcv_cuda=get_compiling_cuda_version())
    if device == 'cuda':
        facts.update(name=torch.cuda.get_device_name())
    print('gpu_check:', ', '.join(f'{k}={v}' for k, v in facts.items()), flush=True)
    report = Report(args.out / 'gpu_check.json', facts)
    report.write(complete=False)
    for section in args.only:
        with guarded(report, section, 'section', device):
            if section == 'ops':
                check_ops(device, report)
            elif section == 'backbones':
                check_backbones(device, report, args.size, args.batch, args.models)
            elif section == 'attention':
                if not hasattr(torch, 'get_autocast_dtype'):
                    print(
                        f'gpu_check: attention skipped: torch {torch.__version__} '
                        'lacks the device-type autocast queries it needs (2.4)'
                    )
                    continue
                check_attention(device, report, args.size, args.batch)
            elif section == 'dist':
                with tempfile.TemporaryDirectory(dir=args.out) as work:
                    check_dist(device, report, Path(work), args.out, args.dist_timeout)
            elif section == 'compile':
                batch = 64 if device == 'cuda' else args.batch
                check_compile(device, report, batch, args.size)
    result = report.write(complete=True)
    passed = len(report.rows) - result['failed']
    print(f'gpu_check: {passed}/{len(report.rows)} passed; {report.path}')
    return 1 if result['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
