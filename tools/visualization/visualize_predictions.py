#!/usr/bin/env python3
"""Draw a detector's or segmentor's predictions on one image.

python tools/visualization/visualize_predictions.py CONFIG CHECKPOINT IMAGE --out PNG
    [--score-thr 0.3]
"""

import argparse
from pathlib import Path

from nommer_mm.checkpoint_safety import mmengine_loads_through_plugin
from nommer_mm.launch import load_config, setup_codebase, stop_on_bad_input


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('image')
    parser.add_argument('--out', required=True)
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detections below this score are not drawn',
    )
    args = parser.parse_args()
    cfg = load_config(args.config)
    scope = setup_codebase(cfg)
    cfg.model.backbone.init_cfg = None
    import mmcv

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if scope == 'mmdet':
        from mmdet.apis import inference_detector, init_detector
        from mmdet.visualization import DetLocalVisualizer

        with stop_on_bad_input(), mmengine_loads_through_plugin():
            model = init_detector(cfg, args.checkpoint, device='cpu')
        result = inference_detector(model, args.image)
        vis = DetLocalVisualizer()
        vis.dataset_meta = model.dataset_meta
        vis.add_datasample(
            'prediction',
            mmcv.imread(args.image, channel_order='rgb'),
            result,
            draw_gt=False,
            show=False,
            pred_score_thr=args.score_thr,
            out_file=args.out,
        )
        kept = (result.pred_instances.scores >= args.score_thr).sum().item()
        print(f'wrote {args.out} ({kept} detections >= {args.score_thr})')
    elif scope == 'mmseg':
        from mmseg.apis import inference_model, init_model, show_result_pyplot

        with stop_on_bad_input(), mmengine_loads_through_plugin():
            model = init_model(cfg, args.checkpoint, device='cpu')
        result = inference_model(model, args.image)
        show_result_pyplot(
            model, args.image, result, show=False, out_file=args.out, opacity=0.6
        )
        print(f'wrote {args.out}')
    else:
        raise SystemExit(
            f'{args.config}: default_scope {scope!r} is neither '
            'mmdet nor mmseg; for classifiers use '
            'tools/visualization/visualize_nomination.py'
        )


if __name__ == '__main__':
    main()
