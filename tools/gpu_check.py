#!/usr/bin/env python3
"""Prove the stack on a GPU in one command (a few minutes):

    python tools/gpu_check.py [--out DIR] [--only ops backbones attention dist compile]

1. ``ops``: mmcv's CUDA kernels (nms, batched_nms, RoIAlign forward and
   backward, sigmoid focal loss) equal their CPU results.
2. ``backbones``: NomMer-T/S/B, GC ViT-T, Visformer-S and CoTNet-50
   classifiers, forward and backward on the GPU in fp32 (TF32 off) and under
   bf16 and fp16 autocast, against CPU fp32 on the same weights and input.
   BatchNorm statistics are first taken from the input (random weights
   otherwise make the deep nets chaotic). NomMer's argmax nominations can
   flip at near-ties: the rate at which the device's own nominations agree
   with the CPU's is reported, and logits and gradients are compared with
   the CPU's nominations replayed on the device. Tolerances (largest logit
   difference over the largest |logit|; relative L2 error of all
   gradients): fp32 1e-4 / 1e-3, fp16 2e-2 / 5e-2, bf16 6e-2 / 1.5e-1. An
   fp32 figure beyond its tolerance still passes within ROUNDING (10) times
   the CPU fp32's own distance from the same model in fp64, which the row
   then reports: at 224, batch 4, CoTNet-50's CPU fp32 gradients are 2.6e-3
   from fp64 (its stem's weight gradient sums over every pixel).
3. ``attention``: the attention kernel (SDPA backend) that each attention
   call of NomMer-T, GC ViT-T and Visformer-S gets under bf16 autocast, in
   training and in inference, per calling layer; on CUDA a call left to the
   MATH backend (separate matrix products and softmax) fails.
4. ``dist``: one-process NCCL runs of small classification, Cascade Mask
   R-CNN and UperNet configs (the real models, SyncBN, generated data)
   through ``tools/dist_train.sh --amp``, then ``tools/dist_test.sh``; a
   failed run's output is kept as ``DIR/dist-<config>-failure.log``. A run
   still going after ``--dist-timeout`` seconds (300) is stopped with its
   workers and fails.
5. ``compile``: ``torch.compile`` of NomMer-T: graph breaks (none wanted),
   its logits against eager's (bf16 tolerance, with the rate at which the
   two runs' nominations agree), and its speed-up over eager (bf16, batch
   64 on CUDA, ``--batch`` on the CPU).

Each check's row is printed as it comes, and ``DIR/gpu_check.json`` (device,
versions, every figure, each section's seconds) is rewritten after every row,
``"complete": false`` until the end: a run stopped from outside keeps what it
measured; SIGTERM (a job's time limit) also ends a dist run still going, with
its workers. A section or model that raises (out of memory, say) gets a failed
row with the error, and the check goes on with the next. Exit status 1 if any
check fails. Without a GPU it says so and exits 0; ``--allow-cpu`` runs it
on the CPU (this script's own test; the dist runs without AMP, which
mmengine's AmpOptimWrapper allows on GPUs only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIERS = [
    ('NomMer-T', 'configs/cls/nommer-tiny_8xb128_in1k.py'),
    ('NomMer-S', 'configs/cls/nommer-small_8xb128_in1k.py'),
    ('NomMer-B', 'configs/cls/nommer-base_8xb128_in1k.py'),
    ('GC ViT-T', 'configs/cls/gcvit-tiny_8xb128_in1k.py'),
    ('Visformer-S', 'configs/cls/visformer-small_8xb128_in1k.py'),
    ('CoTNet-50', 'configs/cls/cotnet-50_8xb128_in1k.py'),
]
# (logits, gradients) tolerances per precision, see the docstring.
TOLERANCES = {'fp32': (1e-4, 1e-3), 'fp16': (2e-2, 5e-2), 'bf16': (6e-2, 1.5e-1)}
# An fp32 figure beyond its tolerance still passes within this many times
# the CPU fp32's own distance from fp64: two fp32 devices each round their
# own way, and a long reduction (a stem convolution's weight gradient sums
# over every pixel of the batch) amplifies it.
ROUNDING = 10
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class Report:
    """The checks' rows, printed as they come and kept in ``path``, which is
    rewritten after every row: a run stopped from outside (a lease's time
    limit, a hung section) leaves what it measured, marked incomplete."""

    def __init__(self, path: Path, environment: dict) -> None:
        self.path = path
        self.environment = environment
        self.rows: list[dict] = []
        self.section_seconds: dict[str, float] = {}
        self.start = time.time()

    def add(self, section: str, name: str, ok: bool, **figures) -> None:
        row = dict(section=section, name=name, ok=bool(ok), **figures)
        self.rows.append(row)
        shown = ', '.join(f'{k}={_fmt(v)}' for k, v in figures.items())
        print(f'[{"ok" if ok else "FAIL"}] {section}: {name}  {shown}', flush=True)
        self.write(complete=False)

    def failed(self) -> list[dict]:
        return [r for r in self.rows if not r['ok']]

    def write(self, complete: bool) -> dict:
        result = dict(
            environment=self.environment,
            complete=complete,
            seconds=round(time.time() - self.start, 1),
            section_seconds=self.section_seconds,
            rows=self.rows,
            failed=len(self.failed()),
        )
        write_json(self.path, result)
        return result


def write_json(path: Path, data) -> None:
    """``data`` as JSON in ``path``, never half-written: a run stopped while
    writing leaves the previous file (written beside it, then renamed)."""
    partial = path.with_name(path.name + '.partial')
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f'{value:.3g}'
    return str(value)


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over the largest |b| (b: the reference)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@contextlib.contextmanager
def one_model(report: Report, section: str, name: str, device: str):
    """A model whose check raises (an out-of-memory error, a kernel the
    device lacks) gets a failed row with the error, and the section goes on
    with the next model instead of leaving them all unchecked."""
    try:
        yield
    except Exception as err:
        traceback.print_exc()
        report.add(section, f'{name} raised', False, error=repr(err)[:300])
    finally:
        if device == 'cuda':
            torch.cuda.empty_cache()


# ------------------------------------------------------------------- ops
def check_ops(device: str, report: Report) -> None:
    from mmcv.ops import RoIAlign, batched_nms, nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 4 + torch.rand(300, 2, generator=g) * 60], 1)
    scores = torch.randperm(300, generator=g).float() / 300  # no ties
    idxs = torch.randint(0, 5, (300,), generator=g)
    _, keep_cpu = nms(boxes, scores, 0.5)
    _, keep_dev = nms(boxes.to(device), scores.to(device), 0.5)
    report.add(
        'ops', 'nms', keep_cpu.tolist() == keep_dev.cpu().tolist(), kept=len(keep_cpu)
    )
    _, keep_cpu = batched_nms(boxes, scores, idxs, dict(type='nms', iou_threshold=0.6))
    _, keep_dev = batched_nms(
        boxes.to(device),
        scores.to(device),
        idxs.to(device),
        dict(type='nms', iou_threshold=0.6),
    )
    report.add(
        'ops',
        'batched_nms',
        keep_cpu.tolist() == keep_dev.cpu().tolist(),
        kept=len(keep_cpu),
    )

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
    fwd = rel_max(results[1][0], results[0][0])
    bwd = rel_max(results[1][1], results[0][1])
    report.add(
        'ops',
        'RoIAlign forward/backward',
        fwd < 1e-5 and bwd < 1e-5,
        forward_rel=fwd,
        backward_rel=bwd,
    )

    if device == 'cuda':  # mmcv has no CPU kernel: the formula is the reference
        from mmcv.ops import sigmoid_focal_loss

        logits = torch.randn(128, 8, generator=g)
        target = torch.randint(0, 8, (128,), generator=g)
        x = logits.cuda().requires_grad_()
        loss = sigmoid_focal_loss(x, target.cuda(), 2.0, 0.25, None, 'sum')
        loss.backward()
        y = logits.clone().double().requires_grad_()
        ref = focal_loss_reference(y, target)
        ref.backward()
        fwd = abs(float(loss) - float(ref)) / float(ref)
        bwd = rel_max(x.grad, y.grad)
        report.add(
            'ops',
            'sigmoid_focal_loss',
            fwd < 1e-5 and bwd < 1e-4,
            forward_rel=fwd,
            backward_rel=bwd,
        )


def focal_loss_reference(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25
) -> torch.Tensor:
    """Sigmoid focal loss, summed, written out: (N, C) logits, (N,) class
    indices; the reference for mmcv's CUDA kernel, which has no CPU twin."""
    t = torch.nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
    p = logits.sigmoid()
    pt = p * t + (1 - p) * (1 - t)
    weight = alpha * t + (1 - alpha) * (1 - t)
    return (-weight * (1 - pt) ** gamma * pt.clamp_min(1e-30).log()).sum()


# ------------------------------------------------------------- backbones
def build_classifier(config: str) -> torch.nn.Module:
    import nommer_mm  # noqa: F401  (registers the backbones)
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(str(ROOT / config))
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('train_cfg', None)  # no Mixup/CutMix batch augments
    model = MODELS.build(cfg.model)
    # init_weights logs a line per parameter (thousands, burying the report)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Running statistics from ``x`` (randomly initialised BatchNorm in eval
    mode does not normalise, and the deep nets' gradients then explode,
    which makes any comparison meaningless)."""
    norms = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        model(x, mode='tensor')
    model.eval()


def nominators(model: torch.nn.Module) -> dict:
    backbone = model.backbone
    if not hasattr(backbone, 'nomination_maps'):
        return {}
    return {
        name: backbone.get_submodule(name).mixer.nominator
        for name in backbone.nomination_maps()
    }


def nomination_maps(model: torch.nn.Module) -> dict:
    """Each nominator's choices of the last forward (the backbone's own
    ``nomination_maps``), on the CPU; empty for a backbone without them."""
    maps = getattr(model.backbone, 'nomination_maps', dict)()
    return {name: index.cpu() for name, index in maps.items()}


def agreement(maps: dict, ref_maps: dict) -> float:
    """The share of nominations in ``maps`` equal to those of ``ref_maps``."""
    same = torch.cat([(maps[k] == ref).flatten() for k, ref in ref_maps.items()])
    return float(same.float().mean())


@contextlib.contextmanager
def replayed(model: torch.nn.Module, maps: dict):
    """NomMer's nominators select the given candidate indices (the CPU's)
    instead of their own argmax, so that outputs and gradients are
    compared on the same computation."""
    from nommer_mm.models.layers.context import select_nominated

    patched = []
    for name, nominator in nominators(model).items():
        index = maps[name]

        def forward(feats, nominator=nominator, index=index):
            nominator.nomination = index.to(feats[0].device)
            return select_nominated(feats, nominator.nomination)

        nominator.forward = forward
        patched.append(nominator)
    try:
        yield
    finally:
        for nominator in patched:
            del nominator.forward  # the class's forward again


def run_once(model, x, dtype_name: str, weight: torch.Tensor | None):
    """Logits, every gradient (when ``weight`` is given) and the
    nominations of one forward (eval mode: no dropout, no Gumbel noise)."""
    model.zero_grad(set_to_none=True)
    with (
        torch.set_grad_enabled(weight is not None),
        torch.autocast(
            x.device.type, dtype=DTYPES[dtype_name], enabled=dtype_name != 'fp32'
        ),
    ):
        logits = model(x, mode='tensor')
    grads = None
    if weight is not None:
        (logits.float() * weight.to(x.device)).sum().backward()
        grads = torch.cat(
            [
                p.grad.detach().float().flatten().cpu()
                for p in model.parameters()
                if p.grad is not None
            ]
        )
    return logits.detach().float().cpu(), grads, nomination_maps(model)


def check_backbones(
    device: str, report: Report, size: int, batch: int, names: list[str] | None
) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for name, config in CLASSIFIERS:
        if names and name not in names:
            continue
        with one_model(report, 'backbones', name, device):
            _check_backbone(device, report, size, batch, name, config)


def _check_backbone(
    device: str, report: Report, size: int, batch: int, name: str, config: str
) -> None:
    torch.manual_seed(0)
    model = build_classifier(config)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    calibrate_batchnorm(model, x)
    weight = torch.randn(
        batch, model.head.num_classes, generator=torch.Generator().manual_seed(2)
    )
    ref_logits, ref_grads, ref_maps = run_once(model, x, 'fp32', weight)
    dev_model = copy.deepcopy(model).to(device)
    for dtype_name in ('fp32', 'bf16', 'fp16'):
        start = time.time()
        figures = {}
        if ref_maps:  # the device's own choices, then the CPU's replayed
            _, _, maps = run_once(dev_model, x.to(device), dtype_name, None)
            figures['nominations_agree'] = agreement(maps, ref_maps)
        with replayed(dev_model, ref_maps):
            logits, grads, _ = run_once(dev_model, x.to(device), dtype_name, weight)
        tol_logits, tol_grads = TOLERANCES[dtype_name]
        figures['logits_rel'] = rel_max(logits, ref_logits)
        figures['grads_rel'] = rel_l2(grads, ref_grads)
        ok = figures['logits_rel'] <= tol_logits and figures['grads_rel'] <= tol_grads
        if not ok and dtype_name == 'fp32':
            own = cpu_fp32_rounding(model, x, weight, ref_logits, ref_grads, ref_maps)
            figures['cpu_fp32_vs_fp64_logits'], figures['cpu_fp32_vs_fp64_grads'] = own
            ok = within_fp32_rounding(figures['logits_rel'], figures['grads_rel'], own)
        figures['s'] = round(time.time() - start, 2)
        report.add('backbones', f'{name} {dtype_name}', ok, **figures)


def cpu_fp32_rounding(
    model: torch.nn.Module,
    x: torch.Tensor,
    weight: torch.Tensor,
    ref_logits: torch.Tensor,
    ref_grads: torch.Tensor,
    ref_maps: dict,
) -> tuple[float, float]:
    """How far the CPU's fp32 logits and gradients are from the same model
    in fp64 (plain path, the CPU's nominations replayed), in the check's own
    measures: what these weights and this input make of fp32 rounding."""
    from nommer_mm import fast_paths

    exact = copy.deepcopy(model).double()
    with replayed(exact, ref_maps), fast_paths(False):
        logits, grads, _ = run_once(exact, x.double(), 'fp32', weight.double())
    return rel_max(ref_logits, logits), rel_l2(ref_grads, grads)


def within_fp32_rounding(
    logits_rel: float, grads_rel: float, own: tuple[float, float]
) -> bool:
    """The fp32 verdict for figures beyond TOLERANCES['fp32']: each within
    its tolerance or within ROUNDING times the CPU fp32's own distance from
    fp64 (``own``, from ``cpu_fp32_rounding``)."""
    bounds = [max(t, ROUNDING * o) for t, o in zip(TOLERANCES['fp32'], own)]
    return logits_rel <= bounds[0] and grads_rel <= bounds[1]


# ------------------------------------------------------------- attention
ATTENTION_MODELS = ('NomMer-T', 'GC ViT-T', 'Visformer-S')


@contextlib.contextmanager
def sdpa_backends(record: list):
    """Record every ``F.scaled_dot_product_attention`` call in the block as
    (the calling module's class, the backend that torch's dispatcher picks
    for those inputs on their device: ``torch._fused_sdp_choice`` on the
    inputs as autocast casts them, the last-dim strides of its tensor
    arguments: q, k, v and a mask, which the fused GPU kernels need 1)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend

    original = F.scaled_dot_product_attention

    def cast(t):
        if (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and torch.is_autocast_enabled(t.device.type)
        ):
            return t.to(torch.get_autocast_dtype(t.device.type))
        return t

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
    """Which attention kernel each SDPA call of the transformers gets under
    bf16 autocast, in training and inference: on CUDA a call left to the
    MATH backend (attention as separate matrix products and softmax) fails
    the check; on the CPU the backends are reported only."""
    for name, config in CLASSIFIERS:
        if name in ATTENTION_MODELS:
            with one_model(report, 'attention', name, device):
                _check_attention(device, report, size, batch, name, config)


def _check_attention(
    device: str, report: Report, size: int, batch: int, name: str, config: str
) -> None:
    from collections import Counter

    model = build_classifier(config).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    for training in (True, False):
        record: list = []
        model.train(training)
        with (
            sdpa_backends(record),
            torch.set_grad_enabled(training),
            torch.autocast(device, dtype=torch.bfloat16),
        ):
            model(x, mode='tensor')
        backends: dict = {}
        for caller, backend, _ in record:
            backends.setdefault(caller, Counter())[backend] += 1
        math = sum(c['MATH'] for c in backends.values())
        report.add(
            'attention',
            f'{name} bf16 {"training" if training else "inference"}',
            device != 'cuda' or math == 0,
            calls=len(record),
            math_calls=math,
            backends={k: dict(v) for k, v in backends.items()},
        )


# ------------------------------------------------------------------ dist
def small_cls_config(data_root: Path, out: Path, iters: int) -> Path:
    out.write_text(f"""
_base_ = {str(ROOT / 'configs/cls/nommer-tiny_2xb16_textures-demo.py')!r}
data_root = {str(data_root)!r}
sync_bn = 'torch'
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
train_cfg = dict(max_iters={iters}, val_interval={iters})
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={iters}))
""")
    return out


def check_dist(
    device: str, report: Report, work: Path, logs: Path, timeout: float
) -> None:
    """``work`` is a temporary folder; a failed run's output is kept in
    ``logs`` (the --out folder) and named in the report. Each train or test
    run is stopped after ``timeout`` seconds and then fails."""
    from demo_data import (
        make_ade_layout,
        make_coco_layout,
        make_imagenet_layout,
    )
    from demo_configs import small_det_config, small_seg_config

    iters = 4
    runs = [
        (
            'classification (NomMer-T)',
            small_cls_config(
                make_imagenet_layout(work / 'textures', {'train': 8, 'val': 4}),
                work / 'cls.py',
                iters,
            ),
            'accuracy/top1',
        ),
        (
            'Cascade Mask R-CNN (NomMer-T)',
            small_det_config(
                make_coco_layout(work / 'coco', {'train': 4, 'val': 4}),
                work / 'det.py',
                ROOT / 'configs/det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py',
                iters=iters,
            ),
            'coco/bbox_mAP',
        ),
        (
            'UperNet (NomMer-T)',
            small_seg_config(
                make_ade_layout(work / 'ade', {'training': 4, 'validation': 2}),
                work / 'seg.py',
                ROOT / 'configs/seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py',
                iters=iters,
            ),
            'mIoU',
        ),
    ]
    # mmengine's AmpOptimWrapper needs a GPU; on CPU the run is fp32.
    amp = ['--amp'] if device == 'cuda' else []
    for i, (name, config, metric) in enumerate(runs):
        run_dir = work / config.stem
        # the launchers run $PYTHON (python3 from PATH without it): this one,
        # whose stack is the one checked, also when its venv is not activated
        env = dict(os.environ, PORT=str(29700 + 10 * i), PYTHON=sys.executable)
        start = time.time()
        train_rc, train_log = run_bounded(
            [
                'bash',
                str(ROOT / 'tools/dist_train.sh'),
                str(config),
                '1',
                '--work-dir',
                str(run_dir),
                *amp,
            ],
            timeout,
            cwd=work,
            env=env,
        )
        train_s = time.time() - start
        out = run_dir / 'metrics.json'
        test_rc, test_log = None, ''
        if train_rc == 0:
            test_rc, test_log = run_bounded(
                [
                    'bash',
                    str(ROOT / 'tools/dist_test.sh'),
                    str(config),
                    str(run_dir / f'iter_{iters}.pth'),
                    '1',
                    '--work-dir',
                    str(run_dir),
                    '--out',
                    str(out),
                ],
                timeout,
                cwd=work,
                env=dict(env, PORT=str(29705 + 10 * i)),
            )
        ok = test_rc == 0 and out.exists()
        value = json.loads(out.read_text()).get(metric) if ok else None
        figures = dict(
            train_s=round(train_s, 1),
            metric=f'{metric}={value}',
            amp='AmpOptimWrapper' in train_log or not amp,
            backend='nccl' if device == 'cuda' else 'gloo',
        )
        if not ok:
            failed_rc, text = (
                (test_rc, test_log) if train_rc == 0 else (train_rc, train_log)
            )
            log_file = logs / f'dist-{config.stem}-failure.log'
            log_file.write_text(text)
            # the rank's own exception, not torchrun's ChildFailedError
            errors = [
                ln
                for ln in text.splitlines()
                if 'Error' in ln and 'ChildFailedError' not in ln
            ]
            if failed_rc is None:
                errors.append(
                    f'{"test" if train_rc == 0 else "train"} stopped after '
                    f'{timeout:g} s (--dist-timeout)'
                )
            figures['error'] = (errors or text.strip().splitlines() or ['?'])[-1]
            figures['log'] = str(log_file)
        report.add('dist', name, ok and value is not None, **figures)


def run_bounded(
    cmd: list[str], timeout: float, grace: float = 15, stdout=subprocess.PIPE, **kwargs
) -> tuple[int | None, str | None]:
    """Run ``cmd`` in a session of its own: (its exit status, its stdout and
    stderr together; None where ``stdout`` is a file). Past ``timeout``
    seconds every process it started gets SIGTERM (torchrun passes it on to
    its workers and waits for them), and SIGKILL ``grace`` seconds later; the
    status is then None. No process it started outlives the call, also when
    the caller is stopped by an exception (SIGTERM made SystemExit, say)."""
    proc = subprocess.Popen(
        cmd,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    family: set[int] = set()
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        family = _family(proc.pid)
        _signal_all(family, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            family |= _family(proc.pid)
            _signal_all(family, signal.SIGKILL)
            out, _ = proc.communicate()
        return None, out
    finally:
        left = family | _family(proc.pid)
        if proc.returncode is not None:
            left.discard(proc.pid)  # reaped: the number may be another's now
        _signal_all(left, signal.SIGKILL)


def _family(pid: int) -> set[int]:
    """``pid``, its descendants and its session's processes, from /proc.
    The group alone misses some: ``timeout`` moves its command into a group
    of its own, and torchrun starts each worker in a session of its own
    (found as its descendant while torchrun lives; the caller keeps the
    set, as the workers outlive a killed torchrun)."""
    children: dict[int, list[int]] = {}
    family = {pid}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:  # after the name in parentheses: state, ppid, pgrp, session
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        child = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(child)
        if int(fields[3]) == pid:
            family.add(child)
    todo = list(family)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in family:
                family.add(child)
                todo.append(child)
    return family


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # gone
            os.kill(pid, sig)


# --------------------------------------------------------------- compile
def check_compile(device: str, report: Report, batch: int, size: int = 224) -> None:
    import torch._dynamo

    torch.manual_seed(0)
    model = build_classifier(CLASSIFIERS[0][1])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    calibrate_batchnorm(model, x)  # as in backbones: a sane net to compare
    model, x = model.eval().to(device), x.to(device)

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, mode='tensor')

    net = Logits(model)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(net)(x)
        torch._dynamo.reset()
        compiled = torch.compile(net)
        start = time.time()
        out_compiled = compiled(x)
        synchronize(device)
        compile_s = time.time() - start
        maps_compiled = nomination_maps(model)
        out_eager = net(x)
        maps_eager = nomination_maps(model)

        def timed(fn) -> float:
            for _ in range(3):
                fn(x)
            synchronize(device)
            start = time.time()
            for _ in range(10):
                fn(x)
            synchronize(device)
            return (time.time() - start) / 10

        eager_s, compiled_s = timed(net), timed(compiled)
    breaks = explanation.graph_break_count
    diff = rel_max(out_compiled.float(), out_eager.float())
    report.add(
        'compile',
        f'NomMer-T bf16 batch {batch}',
        breaks == 0 and diff < 6e-2,
        graph_breaks=breaks,
        break_reasons=[str(r.reason) for r in explanation.break_reasons][:3],
        compile_s=round(compile_s, 1),
        logits_rel=diff,
        nominations_agree=agreement(maps_compiled, maps_eager),
        eager_img_s=round(batch / eager_s, 1),
        compiled_img_s=round(batch / compiled_s, 1),
        speedup=round(eager_s / compiled_s, 3),
    )


def synchronize(device: str) -> None:
    """Wait for the device's queued kernels (CPU ops run as they are called)."""
    if device == 'cuda':
        torch.cuda.synchronize()


# ------------------------------------------------------------------ main
def environment(device: str) -> dict:
    import mmcv
    from mmcv.ops import get_compiling_cuda_version

    facts = dict(
        device=device,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        mmcv=mmcv.__version__,
        mmcv_cuda=get_compiling_cuda_version(),
    )
    if device == 'cuda':
        props = torch.cuda.get_device_properties(0)
        facts.update(
            name=props.name,
            capability='%d.%d' % (props.major, props.minor),
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    return facts


def _terminated(signum: int, frame) -> None:
    print('gpu_check: stopped by SIGTERM', flush=True)
    sys.exit(128 + signum)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2],
    )
    parser.add_argument('--out', type=Path, default=Path('work_dirs/gpu_check'))
    parser.add_argument(
        '--only',
        nargs='+',
        choices=['ops', 'backbones', 'attention', 'dist', 'compile'],
    )
    parser.add_argument(
        '--models',
        nargs='+',
        metavar='NAME',
        help='backbones: only these (e.g. NomMer-T)',
    )
    parser.add_argument(
        '--size', type=int, default=224, help='all but ops and dist: input size'
    )
    parser.add_argument(
        '--batch',
        type=int,
        default=4,
        help='backbones, attention: batch size (compile: 64 on CUDA, this on the CPU)',
    )
    parser.add_argument(
        '--dist-timeout',
        type=float,
        default=300,
        metavar='S',
        help='dist: seconds for each train or test run before it is stopped '
        'and reported as failed (a hung NCCL rendezvous, say)',
    )
    parser.add_argument(
        '--allow-cpu',
        action='store_true',
        help='without a GPU, run on the CPU what can run there (tests this script)',
    )
    return parser


def main() -> int:
    args = make_parser().parse_args()
    # A job's time limit (a lease, SLURM) sends SIGTERM: as SystemExit it
    # unwinds through run_bounded, which then ends every process of a dist
    # run (in a session of its own, which a signal to this process misses).
    signal.signal(signal.SIGTERM, _terminated)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            'gpu_check: skipped, no CUDA device here '
            '(torch.cuda.is_available() is False)'
        )
        return 0
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    sections = args.only or ['ops', 'backbones', 'attention', 'dist', 'compile']
    args.out.mkdir(parents=True, exist_ok=True)
    facts = environment(device)
    print('gpu_check:', ', '.join(f'{k}={v}' for k, v in facts.items()), flush=True)
    report = Report(args.out / 'gpu_check.json', facts)
    report.write(complete=False)
    for section in sections:
        section_start = time.time()
        try:
            if section == 'ops':
                check_ops(device, report)
            elif section == 'backbones':
                check_backbones(device, report, args.size, args.batch, args.models)
            elif section == 'attention':
                check_attention(device, report, args.size, args.batch)
            elif section == 'dist':
                with tempfile.TemporaryDirectory(dir=args.out) as work:
                    check_dist(device, report, Path(work), args.out, args.dist_timeout)
            elif section == 'compile':
                compile_batch = 64 if device == 'cuda' else args.batch
                check_compile(device, report, compile_batch, args.size)
        except Exception as err:  # report it, go on with the next section
            traceback.print_exc()
            report.add(section, 'raised', False, error=repr(err)[:300])
        report.section_seconds[section] = round(time.time() - section_start, 1)
        print(
            f'gpu_check: {section} took {report.section_seconds[section]} s',
            flush=True,
        )
    result = report.write(complete=True)
    failed = result['failed']
    print(
        f'gpu_check: {len(report.rows) - failed}/{len(report.rows)} '
        f'checks passed in {result["seconds"]} s on '
        f'{facts.get("name", device)}; {report.path}'
    )
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
