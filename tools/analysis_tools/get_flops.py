#!/usr/bin/env python3
"""Parameters and FLOPs of any config of this repository, in two counting
conventions (one FLOP = one multiply-add in both):

(a) traced, fvcore-style: every matrix product and convolution in the graph,
    attention matrix products (Q K^T, A V) and the DCT included;
(b) module hooks, as mmcv 1.x counted: conv / linear / norm / activation /
    pooling modules only; attention products and other functional calls are
    invisible to it.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W] [--json F]

Detectors with RoI heads are measured as mmdet 2.x's ``forward_dummy``
did, the protocol behind the published detection FLOPs (Swin, and the
paper's Table 2): backbone, neck and RPN head on the image, every box head
stage on 1000 proposals, every mask head stage on the first 100. Other
detectors run their tensor forward; segmentors run backbone + decode head
(as mmseg's tool does).
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn
from mmengine.config import DictAction

from nommer_mm.analysis import (
    count_flops,
    count_flops_module_hooks,  # noqa
    count_params,
)
from nommer_mm.launch import load_config, setup_codebase


class TensorForward(nn.Module):
    """Wrap a codebase model so ``forward(inputs)`` runs its tensor mode."""

    def __init__(self, model: nn.Module, scope: str, shape) -> None:
        super().__init__()
        self.model = model
        self.scope = scope
        self.shape = tuple(shape)

    def forward(self, inputs: torch.Tensor):
        if self.scope == 'mmdet' and hasattr(self.model, 'roi_head'):
            return self._roi_detector_dummy(inputs)
        if self.scope == 'mmdet':
            from mmdet.structures import DetDataSample

            H, W = self.shape
            sample = DetDataSample(
                metainfo=dict(
                    img_shape=(H, W),
                    ori_shape=(H, W),
                    pad_shape=(H, W),
                    batch_input_shape=(H, W),
                    scale_factor=(1.0, 1.0),
                )
            )
            return self.model(inputs, [sample], mode='tensor')
        return self.model(inputs, None, mode='tensor')

    def _roi_detector_dummy(self, inputs: torch.Tensor):
        from mmdet.structures.bbox import bbox2roi

        model = self.model
        x = model.extract_feat(inputs)
        outs = [model.rpn_head(x)]
        H, W = self.shape
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(1000, 2, generator=g) * torch.tensor([W, H]) * 0.8
        wh = torch.rand(1000, 2, generator=g) * torch.tensor([W, H]) * 0.2 + 1
        rois = bbox2roi([torch.cat([xy, xy + wh], 1).to(inputs)])
        head = model.roi_head
        cascade = hasattr(head, 'num_stages')
        stages = range(head.num_stages) if cascade else [None]
        for stage in stages:
            args = (stage, x, rois) if cascade else (x, rois)
            outs.append(head._bbox_forward(*args)['cls_score'])
        if getattr(head, 'with_mask', False):
            for stage in stages:
                args = (stage, x, rois[:100]) if cascade else (x, rois[:100])
                outs.append(head._mask_forward(*args)['mask_preds'])
        return outs


def measure(config: str, shape, cfg_options=None, module_hooks: bool = True) -> dict:
    """Parameters and FLOPs of ``config`` at ``shape`` (H, W): traced
    (convention (a)) and, with ``module_hooks``, convention (b)."""
    cfg = load_config(config, cfg_options)
    scope = setup_codebase(cfg)
    from mmengine.registry import MODELS

    model = MODELS.build(cfg.model)
    model.eval()
    wrapped = TensorForward(model, scope, shape)
    inputs = torch.randn(1, 3, *shape)
    return dict(
        config=config,
        scope=scope,
        shape=list(shape),
        params=count_params(model),
        backbone_params=count_params(model.backbone)
        if hasattr(model, 'backbone')
        else None,
        flops_traced=count_flops(wrapped, inputs),
        flops_module_hooks=count_flops_module_hooks(wrapped, inputs)
        if module_hooks
        else None,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=None,
        help='input H W (or one side); default 224x224 for '
        'classification, 1280x800 (W x H) for detection, '
        '2048x512 for segmentation',
    )
    parser.add_argument('--json', help='also write the figures here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    if args.shape is None:
        scope = load_config(args.config).get('default_scope')
        shape = {'mmdet': (800, 1280), 'mmseg': (512, 2048)}.get(scope, (224, 224))
    else:
        shape = tuple(args.shape) * (2 if len(args.shape) == 1 else 1)
    r = measure(args.config, shape, args.cfg_options)
    print(f'config: {r["config"]}  ({r["scope"]})')
    print(f'input shape: (1, 3, {shape[0]}, {shape[1]})')
    print(f'params (trainable): {r["params"] / 1e6:.2f} M')
    if r['backbone_params'] is not None:
        print(f'  of which backbone: {r["backbone_params"] / 1e6:.2f} M')
    print(
        f'FLOPs (a) traced, all multiply-adds incl. attention matmuls: '
        f'{r["flops_traced"] / 1e9:.2f} G'
    )
    print(
        f'FLOPs (b) module hooks, conv/linear/norm/act/pool only: '
        f'{r["flops_module_hooks"] / 1e9:.2f} G'
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == '__main__':
    main()
