"""model-index.yml and configs/{cls,det,seg}/metafile.yml: every config is
listed once, and every Parameters / FLOPs figure equals what
tools/analysis_tools/get_flops.py measures for it now."""

import warnings
from pathlib import Path

import pytest
import yaml

from cls_helpers import ROOT, load_tool, readme_converter_outputs, tiered


def _models() -> dict:
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    models = {}
    for path in index['Import']:
        meta = yaml.safe_load((ROOT / path).read_text())
        collections = {c['Name'] for c in meta['Collections']}
        for model in meta['Models']:
            assert model['In Collection'] in collections, model['Name']
            assert model['Config'] not in models, model['Config']
            models[model['Config']] = model
    return models


MODELS = _models()


def test_every_config_is_listed_once():
    configs = {
        str(p.relative_to(ROOT))
        for p in (ROOT / 'configs').rglob('*.py')
        if '_base_' not in p.parts
    }
    assert set(MODELS) == configs
    for config, model in MODELS.items():
        assert model['Name'] == Path(config).stem


def test_collections_cite_the_paper_and_weights_are_what_readme_writes():
    meta = yaml.safe_load((ROOT / 'configs/cls/metafile.yml').read_text())
    nommer = next(c for c in meta['Collections'] if c['Name'] == 'NomMer')
    assert 'NomMer' in nommer['Paper']['Title']
    written = readme_converter_outputs()
    weights = {m['Weights'] for m in MODELS.values() if 'Weights' in m}
    assert weights and weights <= written, weights - written
    tiny = MODELS['configs/cls/nommer-tiny_8xb128_in1k.py']
    assert tiny['Results'][0]['Metrics']['Top 1 Accuracy'] == 82.6


# Convention (b) (module hooks, conv/linear/norm/act/pool) of every
# classifier config at its Input Size, as get_flops.py prints it on the
# plain path: pinned, so that a layer the hooks stop seeing fails here.
PINNED_FLOPS_B = {
    'configs/cls/ablation/nommer-tiny-w_8xb128_in1k.py': 4_724_881_384,
    'configs/cls/ablation/nommer-tiny-wc-dct-sum_8xb128_in1k.py': 5_129_585_320,
    'configs/cls/ablation/nommer-tiny-wc-pooled-sum_8xb128_in1k.py': 5_122_359_976,
    'configs/cls/ablation/nommer-tiny-wc-sum_8xb128_in1k.py': 5_104_211_944,
    'configs/cls/cotnet-50_8xb128_in1k.py': 3_267_927_336,
    'configs/cls/cotnext-50_8xb128_in1k.py': 4_284_263_368,
    'configs/cls/gcvit-base_8xb128_in1k.py': 13_911_767_368,
    'configs/cls/gcvit-small_8xb128_in1k.py': 7_851_193_840,
    'configs/cls/gcvit-tiny_8xb128_in1k.py': 4_312_933_016,
    'configs/cls/gcvit-xtiny_8xb128_in1k.py': 2_710_662_808,
    'configs/cls/gcvit-xxtiny_8xb128_in1k.py': 1_958_624_920,
    'configs/cls/nommer-base_8xb128_in1k.py': 16_431_005_416,
    'configs/cls/nommer-base_8xb64_in1k-384px.py': 48_543_114_216,
    'configs/cls/nommer-small_8xb128_in1k.py': 9_261_010_984,
    'configs/cls/nommer-small_8xb64_in1k-384px.py': 27_360_025_576,
    'configs/cls/nommer-tiny_2xb16_textures-demo.py': 478_107_652,
    'configs/cls/nommer-tiny_8xb128_in1k.py': 5_129_585_320,
    'configs/cls/nommer-tiny_8xb64_in1k-384px.py': 15_117_119_464,
    'configs/cls/se-cotnetd-50_8xb128_in1k.py': 4_076_938_312,
    'configs/cls/visformer-small_8xb128_in1k.py': 4_752_636_904,
    'configs/cls/visformer-tiny_8xb128_in1k.py': 1_204_609_000,
}


# The det/seg configs whose metafile entries carry FLOPs: the paper's table
# configs and the peers (the README's dense FLOP tables).
DENSE_BACKBONES = (
    'nommer-t',
    'nommer-s',
    'nommer-b',
    'gcvit-t',
    'visformer-s',
    'cotnet-50',
)
DENSE_WITH_FLOPS = {
    f'configs/det/cascade-mask-rcnn_{b}_fpn_ms-3x_coco.py' for b in DENSE_BACKBONES
} | {f'configs/seg/upernet_{b}_8xb2-160k_ade20k-512x512.py' for b in DENSE_BACKBONES}


def test_which_entries_carry_flops():
    """Every classifier, and exactly the dense configs above, at the size
    get_flops.py uses by default."""
    for config, model in MODELS.items():
        meta = model['Metadata']
        if config.startswith('configs/cls/'):
            assert 'FLOPs' in meta and isinstance(meta['Input Size'], int)
        elif config in DENSE_WITH_FLOPS:
            det = config.startswith('configs/det/')
            assert meta['Input Size'] == ([800, 1280] if det else [512, 2048])
        else:
            assert 'FLOPs' not in meta and 'Input Size' not in meta, config


# One classifier's counts in the fast tier; the full-size counts of the
# others (dense ones at 1280x800 / 2048x512) in the slow tier.
FAST_FIGURES = {'configs/cls/nommer-tiny_8xb128_in1k.py'}


@pytest.mark.parametrize(
    'config', tiered(sorted(MODELS), lambda c: c not in FAST_FIGURES)
)
def test_figures_equal_get_flops(config):
    """Exact counts: the trainable parameters get_flops.py prints, and where
    an entry lists FLOPs its traced FLOPs (convention (a)) at the Input
    Size; for classifiers also convention (b) against its pin (dense
    configs: pinned at a smaller size in tests/tools/test_get_flops.py)."""
    get_flops = load_tool('tools/analysis_tools/get_flops.py')
    model = MODELS[config]
    meta = model['Metadata']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if 'FLOPs' in meta:
            size = meta['Input Size']
            classifier = isinstance(size, int)
            measured = get_flops.measure(
                str(ROOT / config),
                (size, size) if classifier else tuple(size),
                module_hooks=classifier,
            )
            assert meta['FLOPs'] == measured['flops_traced']
            assert meta['Parameters'] == measured['params']
            if classifier:
                assert measured['flops_module_hooks'] == PINNED_FLOPS_B[config]
        else:
            from mmengine.registry import MODELS as REGISTRY

            from nommer_mm.analysis import count_params

            cfg = get_flops.load_config(str(ROOT / config))
            get_flops.setup_codebase(cfg)
            cfg.model.get('backbone', {}).pop('init_cfg', None)
            built = REGISTRY.build(cfg.model)
            assert meta['Parameters'] == count_params(built)
