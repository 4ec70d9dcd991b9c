#!/usr/bin/env python3
"""Export a classifier of this repository (NomMer, GC ViT, Visformer,
CoTNet), or the backbone of any config, to ONNX; check it with onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG [CKPT] --out FILE
        [--shape H W] [--dynamic-shape] [--backbone-only] [--verify]
        [--opset 17]

Outputs: ``logits`` (classifier) or ``feat0``, ``feat1``, ... (the
backbone's feature maps). ``--dynamic-shape`` makes batch, height and width
dynamic (the layers trace their padding path, right at every size). The
graph is the model as PyTorch runs it. ``--verify`` runs onnxruntime and
PyTorch on random input and prints the largest difference (with batch 2 and
at a second input size too when the shape is dynamic); for NomMer it also
exports the nomination maps alongside, to a temporary file, and checks that
they are equal. A nomination whose two largest logits lie within float
rounding (a near tie) may fall the other way in onnxruntime, and the outputs
after it then differ legitimately; such an input is reported and another one
drawn (three at most per shape). An fp32 output passes when it differs by
at most ``--atol`` (1e-4) times max(1, its largest magnitude). Some weights
amplify rounding: Visformer's initial weights give logits in the hundreds,
and at some inputs PyTorch's fp32 result is itself up to 8e-4 of that from the
same model in fp64. An output beyond the first bound still passes within
ROUNDING (10) times PyTorch fp32's own distance from fp64 near that input
(``fp32_rounding``), a distance an export mistake does not hide in (a wrong
padding or window count moves the outputs by orders more). Without a
checkpoint the initial weights are drawn with seed 0. It exits 1 when an
output fails both bounds, a nomination that is not a near tie differs,
every input drawn had near ties that flipped, or the graph does not run at
a checked shape.
Detectors and segmentors as a whole are not exported (see README).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from nommer_mm.analysis import nomination_margins
from nommer_mm.checkpoint_safety import mmengine_loads_through_plugin
from nommer_mm.launch import load_config, setup_codebase, stop_on_bad_input


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', default=None)
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=None,
        help="input H W (or one side); default 224, or the backbone's img_size",
    )
    parser.add_argument('--dynamic-shape', action='store_true')
    parser.add_argument('--backbone-only', action='store_true')
    parser.add_argument('--verify', action='store_true')
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--opset', type=int, default=17)
    return parser.parse_args(argv)


class Exported(nn.Module):
    """What goes into the graph: logits, or the backbone's maps; with
    ``nominations`` also NomMer's nomination maps after them."""

    def __init__(
        self, model: nn.Module, backbone_only: bool, nominations: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.backbone_only = backbone_only
        self.nominations = nominations
        # torch.onnx.export restores the wrapper's mode afterwards, and a
        # new module is in training mode, which would reach the model
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple:
        if self.backbone_only:
            outs = list(self.model.backbone(x))
        else:
            outs = [self.model(x, mode='tensor')]
        if self.nominations:
            outs += list(self.model.backbone.nomination_maps().values())
        return tuple(outs)


def build(args):
    cfg = load_config(args.config)
    scope = setup_codebase(cfg)
    if scope != 'mmpretrain' and not args.backbone_only:
        raise SystemExit(
            f'{args.config} is a {scope} config: whole detectors and '
            'segmentors are not exported by this tool (see README, "Export '
            'to ONNX"); use --backbone-only for the feature maps'
        )
    from mmengine.registry import MODELS

    backbone = cfg.model.get('backbone', {})
    backbone.pop('init_cfg', None)
    torch.manual_seed(0)  # the initial weights, when no checkpoint replaces them
    model = MODELS.build(cfg.model)
    if args.checkpoint:
        from mmengine.runner import load_checkpoint

        with mmengine_loads_through_plugin():
            load_checkpoint(
                model,
                args.checkpoint,
                map_location='cpu',
                strict=not args.backbone_only,
            )
    else:
        print(
            'no checkpoint: exporting the initial (random, seed 0) weights',
            file=sys.stderr,
        )
    return model.eval(), backbone


def export(
    module: nn.Module,
    x: torch.Tensor,
    path: str,
    names: list,
    dynamic: bool,
    opset: int,
) -> None:
    axes = None
    if dynamic:
        axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        axes.update({n: {0: 'batch'} for n in names})
    torch.onnx.export(
        module,
        (x,),
        path,
        input_names=['input'],
        output_names=names,
        dynamic_axes=axes,
        opset_version=opset,
        # the TorchScript exporter, which takes dynamic_axes: newer torch
        # defaults to the dynamo one, older torch has no other
        **({'dynamo': False} if 'dynamo' in _EXPORT_OPTIONS else {}),
    )


_EXPORT_OPTIONS = inspect.signature(torch.onnx.export).parameters


def output_names(module: nn.Module, x: torch.Tensor, prefix: list) -> list:
    with torch.no_grad():
        outs = module(x)
    names = list(prefix)
    names += [f'feat{i}' for i in range(len(outs) - len(names))]
    return names


# A nomination whose two largest nominator logits are closer than this is a
# near tie: another kernel order's rounding may break it the other way.
NEAR_TIE = 1e-4


def compare(module: nn.Module, path: str, x: torch.Tensor, names: list) -> dict:
    """Largest |ONNX - PyTorch| per float output; for NomMer's nomination
    maps, the positions that differ and how many of them are near ties."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {'input': x.numpy()})
    with torch.no_grad(), nomination_margins(module.model.backbone) as margins:
        ref = [t.numpy() for t in module(x)]
    found = {}
    for name, a, b in zip(names, got, ref):
        if a.shape != b.shape:
            found[name] = f'shape {a.shape} vs {b.shape}'
        elif name.startswith('nomination:'):
            differ = torch.from_numpy(a != b)
            gap = margins[name.split(':', 1)[1]]
            found[name] = Flips(
                int(differ.sum()), int((differ & (gap < NEAR_TIE)).sum())
            )
        else:  # absolute, and the output's own scale
            found[name] = (float(abs(a - b).max()), float(abs(b).max()))
    return found


class Flips(NamedTuple):
    """Nomination positions that differ, and how many of them are near
    ties."""

    differ: int
    near_ties: int


DRAWS = 3  # inputs tried per shape when near ties flip

# How far onnxruntime may be from PyTorch, in units of PyTorch fp32's own
# distance from fp64 at the same input: two fp32 implementations of one
# ill-conditioned function each round their own way.
ROUNDING = 10


def fp32_rounding(module: nn.Module, x: torch.Tensor, names: list) -> dict | None:
    """Per float output, how far PyTorch fp32 lands from the same weights in
    fp64 at ``x``: the largest distance over three fp32 runs,
    at ``x`` and at ``x`` moved by one fp32 rounding (relative 2**-24 noise)
    twice. One run's rounding may happen to fall small where the output is
    steepest; the moved inputs sample how far that steepness carries an
    error of rounding size. None when a run nominates otherwise than fp64,
    where the outputs after the flip differ for that reason."""
    exact = copy.deepcopy(module).double()
    noise = torch.Generator().manual_seed(0)
    runs = [x] + [
        x * (1 + 2.0**-24 * torch.randn(x.shape, generator=noise)) for _ in range(2)
    ]
    with torch.no_grad():
        ref = exact(x.double())
        found = dict.fromkeys(
            (n for n in names if not n.startswith('nomination:')), 0.0
        )
        for run in runs:
            for name, a, b in zip(names, module(run), ref):
                if name not in found:
                    if not torch.equal(a, b):
                        return None
                else:
                    found[name] = max(found[name], float((a.double() - b).abs().max()))
    return found


def verify_at(
    module: nn.Module, path: str, x: torch.Tensor, names: list, atol: float
) -> bool:
    """Compare onnxruntime with PyTorch at ``x``'s shape and print each
    output's result; another input of that shape is drawn when the only
    differences start at flipped near ties."""
    size = tuple(x.shape)
    for draw in range(DRAWS):
        try:
            found = compare(module, path, x, names)
        except Exception as err:  # onnxruntime refuses the input
            print(
                f'verify {size}: the exported graph does not run at this '
                f'shape: {str(err).splitlines()[0]}  FAIL'
            )
            return False
        flips = {k: v for k, v in found.items() if isinstance(v, Flips)}
        ties = sum(v.near_ties for v in flips.values())
        if ties and all(v.differ == v.near_ties for v in flips.values()):
            print(
                f'verify {size}: {ties} nomination(s) at near ties (top-2 '
                f'logit gap < {NEAR_TIE:g}) fell the other way in onnxruntime; '
                'the outputs after them differ legitimately'
                + ('; drawing another input' if draw + 1 < DRAWS else '')
            )
            x = torch.randn(size)
            continue
        ok = True
        rounding = ...  # measured when an output needs it
        for name, value in found.items():
            if isinstance(value, str):
                good, text = False, value
            elif isinstance(value, Flips):
                good = value.differ == 0
                text = f'{value.differ} positions differ'
                if value.differ:
                    text += f' ({value.near_ties} at near ties)'
            else:  # fp32 rounding grows with the output's size
                diff, scale = value
                good = diff <= atol * max(1.0, scale)
                text = f'max |onnx - torch| = {diff:.3g} (largest |output| {scale:.3g})'
                if not good:
                    if rounding is ...:
                        rounding = fp32_rounding(module, x, names)
                    good, note = within_rounding(diff, name, rounding, atol)
                    text += note
            ok &= good
            print(f'verify {size} {name}: {text}{"" if good else "  FAIL"}')
        return ok
    print(f'verify {size}: near ties flipped in each of {DRAWS} inputs  FAIL')
    return False


def within_rounding(
    diff: float, name: str, rounding: dict | None, atol: float
) -> tuple[bool, str]:
    """The second bound for an output beyond ``atol`` times its scale:
    whether ``diff`` is within ROUNDING times PyTorch fp32's own distance
    from fp64 (``fp32_rounding``), and the words that say so."""
    if rounding is None:
        return False, '; fp64 nominates otherwise here, no rounding bound'
    own = rounding[name]
    good = diff <= ROUNDING * own
    return good, (
        f'; beyond {atol:g} x scale, PyTorch fp32 is itself {own:.3g} from '
        f'fp64 here: {"within" if good else "beyond"} {ROUNDING} x that'
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    with stop_on_bad_input():
        model, backbone_cfg = build(args)
    if args.shape:
        shape = tuple(args.shape) * (2 if len(args.shape) == 1 else 1)
    else:
        size = backbone_cfg.get('img_size', 224)
        shape = (size, size) if isinstance(size, int) else tuple(size)
    torch.manual_seed(0)
    x = torch.randn(1, 3, *shape)
    module = Exported(model, args.backbone_only)
    names = output_names(module, x, [] if args.backbone_only else ['logits'])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    export(module, x, args.out, names, args.dynamic_shape, args.opset)
    print(
        f'wrote {args.out} (input {tuple(x.shape)}, outputs {names}'
        + (', dynamic batch/height/width' if args.dynamic_shape else '')
        + ')'
    )
    if not args.verify:
        return
    checks = [x]
    if args.dynamic_shape:  # another batch; then another size too
        checks += [
            torch.randn(2, 3, *shape),
            torch.randn(2, 3, shape[0] + 32, shape[1] - 32),
        ]
    nominate = type(model.backbone).__name__ == 'NomMer' and bool(
        model.backbone.nomination_maps()
    )
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path, verify_names = args.out, names
        if nominate:  # a copy with the nomination maps as outputs
            module = Exported(model, args.backbone_only, nominations=True)
            verify_names = names + [
                f'nomination:{k}' for k in model.backbone.nomination_maps()
            ]
            path = os.path.join(tmp, 'with_nominations.onnx')
            export(module, x, path, verify_names, args.dynamic_shape, args.opset)
        for inputs in checks:
            ok &= verify_at(module, path, inputs, verify_names, args.atol)
    print('verify: OK' if ok else 'verify: FAILED')
    if not ok:
        sys.exit(1)


if __name__ == '__main__':
    main()
