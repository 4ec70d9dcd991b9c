#!/usr/bin/env python3
"""Run a config of this repository on one picture with the codebase's own
inferencer (mmpretrain's, mmdet's or mmseg's, chosen by the config's
``default_scope``).

    python tools/image_demo.py IMAGE CONFIG [--weights CKPT]
        [--device cpu|cuda] [--out-dir DIR] [--score-thr 0.3]

Classification prints the top-5 classes; detection draws boxes and masks
and segmentation the class overlay into ``DIR/<image name>.png``. Without
``--weights`` the model has its initial (random) weights, and says so.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

from nommer_mm.checkpoint_safety import mmengine_loads_through_plugin
from nommer_mm.launch import load_config, setup_codebase, stop_on_bad_input


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image')
    parser.add_argument('config')
    parser.add_argument(
        '--weights', help="checkpoint (a training run's or a converted classifier)"
    )
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument(
        '--out-dir',
        default='outputs',
        help='where the picture goes (detection and segmentation)',
    )
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detections below this score are not drawn',
    )
    return parser.parse_args(argv)


def classify(cfg, args) -> None:
    from mmpretrain.apis import ImageClassificationInferencer

    inferencer = ImageClassificationInferencer(
        cfg, pretrained=args.weights or False, device=args.device
    )
    result = inferencer(args.image)[0]
    scores = result['pred_scores']
    classes = inferencer.classes or [str(i) for i in range(len(scores))]
    top = scores.argsort()[::-1][:5]
    print(f'{args.image}: top-{len(top)}')
    for rank, i in enumerate(top, 1):
        print(f'  {rank}. {classes[i]:<30} {scores[i]:.4f}')


def detect(cfg, args) -> str:
    from mmdet.apis import DetInferencer

    inferencer = DetInferencer(
        cfg, weights=args.weights, device=args.device, show_progress=False
    )
    result = inferencer(
        args.image, return_vis=True, no_save_vis=True, pred_score_thr=args.score_thr
    )
    scores = result['predictions'][0]['scores']
    kept = sum(s >= args.score_thr for s in scores)
    print(f'{kept} detections >= {args.score_thr}')
    return _save_png(result['visualization'][0], args)


def segment(cfg, args) -> str:
    from mmseg.apis import MMSegInferencer

    inferencer = MMSegInferencer(cfg, weights=args.weights, device=args.device)
    result = inferencer(args.image, return_vis=True)
    labels = result['predictions']
    print(f'classes present: {sorted(set(labels.flatten().tolist()))}')
    return _save_png(result['visualization'], args)


def _save_png(rgb, args) -> str:
    import mmcv

    out = osp.join(args.out_dir, osp.splitext(osp.basename(args.image))[0] + '.png')
    mmcv.imwrite(rgb[..., ::-1], out)  # imwrite takes BGR
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if not osp.isfile(args.image):
        raise SystemExit(f'image {args.image!r} does not exist')
    cfg = load_config(args.config)
    scope = setup_codebase(cfg)
    backbone = cfg.model.get('backbone', {})
    if args.weights:
        backbone.pop('init_cfg', None)  # the weights replace it
    else:
        print(
            'no --weights: the model has its initial (random) weights', file=sys.stderr
        )
    run = dict(mmpretrain=classify, mmdet=detect, mmseg=segment)[scope]
    with stop_on_bad_input(), mmengine_loads_through_plugin():
        picture = run(cfg, args)
    if picture:
        print(f'wrote {picture}')


if __name__ == '__main__':
    main()
