#!/usr/bin/env python3
"""Export a classifier of this repository (NomMer, GC ViT, Visformer,
CoTNet), or the backbone of any config, to ONNX; check it with onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG [CKPT] --out FILE
        [--shape H W] [--dynamic-shape] [--backbone-only] [--verify]
        [--opset 17]

Outputs: ``logits`` (classifier) or ``feat0``, ``feat1``, ... (the
backbone's feature maps). ``--dynamic-shape`` makes batch, height and width
dynamic. ``--verify`` runs onnxruntime and PyTorch on random input and
prints the largest difference (with batch 2 and at a second input size too
when the shape is dynamic); for NomMer it also exports the nomination maps
alongside, to a temporary file, and checks that they are equal. It exits 1
when an fp32 output differs by more than ``--atol`` (1e-4) times
max(1, its largest magnitude), a nomination differs, or the graph does not
run at a checked shape.
Detectors and segmentors as a whole are not exported (see README).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from nommer_mm.checkpoint_safety import mmengine_loads_through_plugin
from nommer_mm.launch import load_config, setup_codebase


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
        print('no checkpoint: exporting the initial (random) weights', file=sys.stderr)
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
    # Traced with autograd on: the models then take their plain paths
    # (inference-only in-place writes do not trace into ONNX correctly).
    with torch.enable_grad():
        torch.onnx.export(
            module,
            (x,),
            path,
            input_names=['input'],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def output_names(module: nn.Module, x: torch.Tensor, prefix: list) -> list:
    with torch.no_grad():
        outs = module(x)
    names = list(prefix)
    names += [f'feat{i}' for i in range(len(outs) - len(names))]
    return names


def compare(module: nn.Module, path: str, x: torch.Tensor, names: list) -> dict:
    """Largest |ONNX - PyTorch| per float output; equality of int ones."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {'input': x.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in module(x)]
    found = {}
    for name, a, b in zip(names, got, ref):
        if a.shape != b.shape:
            found[name] = f'shape {a.shape} vs {b.shape}'
        elif b.dtype.kind in 'iub':
            found[name] = int((a != b).sum())  # positions that differ
        else:  # absolute, and the output's own scale
            found[name] = (float(abs(a - b).max()), float(abs(b).max()))
    return found


def main(argv=None) -> None:
    args = parse_args(argv)
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
            try:
                found = compare(module, path, inputs, verify_names)
            except Exception as err:  # onnxruntime refuses the input
                ok = False
                print(
                    f'verify {tuple(inputs.shape)}: the exported graph does '
                    f'not run at this shape: {str(err).splitlines()[0]}'
                    '  FAIL'
                )
                continue
            for name, value in found.items():
                if isinstance(value, str):
                    good = False
                    text = value
                elif name.startswith('nomination:'):
                    good = value == 0
                    text = f'{value} positions differ'
                else:  # fp32 rounding grows with the output's size
                    diff, scale = value
                    good = diff <= args.atol * max(1.0, scale)
                    text = (
                        f'max |onnx - torch| = {diff:.3g} (largest '
                        f'|output| {scale:.3g})'
                    )
                ok &= good
                print(
                    f'verify {tuple(inputs.shape)} {name}: {text}'
                    f'{"" if good else "  FAIL"}'
                )
    print('verify: OK' if ok else 'verify: FAILED')
    if not ok:
        sys.exit(1)


if __name__ == '__main__':
    main()
