"""Record the state-dict layout (key, shape, dtype) of the peer backbones'
reference model code, for tests/models/test_peers.py. Not run by the tests:
it needs the reference repositories, which this repository does not ship.

    python tests/data/record_reference_layouts.py GCVIT VISFORMER COTNET OUT

GCVIT: a checkout of NVlabs/GCVit (models/gc_vit.py, needs timm);
VISFORMER: danczs/Visformer (models.py, weight_init.py, needs einops);
COTNET: JDAI-CV/CoTNet (models/, config/, needs yacs). CoTNet's CUDA
aggregation kernels (CuPy) hold no parameters and are replaced by empty
modules so that the model code builds without CuPy.
OUT: a .json.gz file, {"<source>/<function>": [[key, shape, dtype], ...]}.

reference_layouts.json.gz was recorded from NVlabs/GCVit 8e1941f,
danczs/Visformer 134d980 and JDAI-CV/CoTNet 895e024 (their newest commits on
2026-11-29) with timm 1.0.22 and torch 2.15.0.
"""

import gzip
import importlib
import json
import sys
import types

import torch.nn as nn


def layout(model: nn.Module) -> list:
    return [
        [k, list(v.shape), str(v.dtype).replace('torch.', '')]
        for k, v in model.state_dict().items()
    ]


def record(path: str, module: str, names: list, prefix: str) -> dict:
    sys.path.insert(0, path)
    try:
        mod = importlib.import_module(module)
        return {f'{prefix}/{n}': layout(getattr(mod, n)()) for n in names}
    finally:
        sys.path.remove(path)


class _NoParameters(nn.Module):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__()


def _stand_in(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__getattr__ = lambda attr: _NoParameters
    return module


def main() -> None:
    gcvit, visformer, cotnet, out = sys.argv[1:5]
    found = {}
    found.update(
        record(
            f'{gcvit}/models',
            'gc_vit',
            [f'gc_vit_{a}' for a in ('xxtiny', 'xtiny', 'tiny', 'small', 'base')],
            'NVlabs/GCVit:models/gc_vit.py',
        )
    )
    found.update(
        record(
            visformer,
            'models',
            ['visformer_tiny', 'visformer_small'],
            'danczs/Visformer:models.py',
        )
    )
    sys.modules.pop('models', None)
    for sub in (
        '',
        '.aggregation_zeropad',
        '.aggregation_zeropad_mix',
        '.aggregation_zeropad_mix_merge',
        '.aggregation_zeropad_dilate',
        '.aggregation_refpad',
        '.utils',
    ):
        sys.modules['cupy_layers' + sub] = _stand_in('cupy_layers' + sub)
    found.update(
        record(
            cotnet,
            'models.cotnet',
            ['cotnet50', 'cotnext50_2x48d'],
            'JDAI-CV/CoTNet:models/cotnet.py',
        )
    )
    found.update(
        record(
            cotnet,
            'models.cotnet_hybrid',
            ['se_cotnetd_50'],
            'JDAI-CV/CoTNet:models/cotnet_hybrid.py',
        )
    )
    with gzip.open(out, 'wt') as f:
        json.dump(found, f, separators=(',', ':'))
    for name, keys in found.items():
        print(f'{name}: {len(keys)} tensors')


if __name__ == '__main__':
    main()
