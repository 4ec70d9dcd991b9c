"""model-index.yml and configs/{cls,det,seg}/metafile.yml: every config is
listed once, and every Parameters / FLOPs figure equals what
tools/analysis_tools/get_flops.py measures for it now."""

import importlib.util
import warnings
from pathlib import Path

import pytest
import yaml

from cls_helpers import ROOT, readme_converter_outputs


def _get_flops():
    spec = importlib.util.spec_from_file_location(
        'get_flops', ROOT / 'tools/analysis_tools/get_flops.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.parametrize('config', sorted(MODELS))
def test_figures_equal_get_flops(config):
    """Exact counts: the trainable parameters get_flops.py prints, and for
    classifiers its traced FLOPs (convention (a)) at the Input Size."""
    get_flops = _get_flops()
    model = MODELS[config]
    meta = model['Metadata']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if 'FLOPs' in meta:
            size = meta['Input Size']
            measured = get_flops.measure(str(ROOT / config), (size, size))
            assert meta['FLOPs'] == measured['flops_traced']
            assert meta['Parameters'] == measured['params']
        else:
            from mmengine.registry import MODELS as REGISTRY

            from nommer_mm.analysis import count_params

            cfg = get_flops.load_config(str(ROOT / config))
            get_flops.setup_codebase(cfg)
            cfg.model.get('backbone', {}).pop('init_cfg', None)
            built = REGISTRY.build(cfg.model)
            assert meta['Parameters'] == count_params(built)
