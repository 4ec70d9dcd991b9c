"""tools/analysis_tools/get_flops.py on the detection and segmentation
configs: parameters, traced FLOPs (a) and module-hook FLOPs (b) pinned at a
small input (256x320), the figures of the current code's plain path; the
README's full-size figures come from the same function."""

import warnings

import pytest

from cls_helpers import ROOT, load_tool

# config: (trainable params, (a) traced, (b) module hooks) at 256x320
PINNED = {
    'det/cascade-mask-rcnn_nommer-t_fpn_ms-3x_coco.py': (
        79_797_254,
        562_499_934_720,
        609_286_639_316,
    ),
    'det/cascade-mask-rcnn_gcvit-t_fpn_ms-3x_coco.py': (
        86_129_136,
        571_702_711_296,
        611_557_941_380,
    ),
    'det/cascade-mask-rcnn_visformer-s_fpn_ms-3x_coco.py': (
        97_733_458,
        561_584_552_960,
        609_446_328_020,
    ),
    'det/cascade-mask-rcnn_cotnet-50_fpn_ms-3x_coco.py': (
        78_896_922,
        558_879_493_824,
        606_526_660_052,
    ),
    'seg/upernet_nommer-t_8xb2-160k_ade20k-512x512.py': (
        54_109_312,
        75_473_036_800,
        74_577_816_576,
    ),
    'seg/upernet_gcvit-t_8xb2-160k_ade20k-512x512.py': (
        58_017_498,
        77_303_520_256,
        75_560_245_680,
    ),
    'seg/upernet_visformer-s_8xb2-160k_ade20k-512x512.py': (
        72_070_092,
        74_683_484_160,
        74_863_334_400,
    ),
    'seg/upernet_cotnet-50_8xb2-160k_ade20k-512x512.py': (
        63_162_260,
        72_698_419_904,
        72_663_661_312,
    ),
}


@pytest.mark.slow  # full-size detectors and segmentors
@pytest.mark.parametrize('config', sorted(PINNED))
def test_dense_counts_are_pinned(config):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        measured = load_tool('tools/analysis_tools/get_flops.py').measure(
            str(ROOT / 'configs' / config), (256, 320)
        )
    assert (
        measured['params'],
        measured['flops_traced'],
        measured['flops_module_hooks'],
    ) == PINNED[config]
