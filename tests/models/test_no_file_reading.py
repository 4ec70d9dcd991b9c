"""The models package builds modules and reads no files: whether a
checkpoint fits a backbone is decided in ``nommer_mm.checkpoint_fit``,
beside the checkpoint reader, and reaches the backbones through
``StagedBackbone.before_pretrained_load``."""

from __future__ import annotations

import ast
from pathlib import Path

MODELS = Path(__file__).parents[2] / 'nommer_mm' / 'models'
# modules whose import means reading checkpoint files
FILE_MODULES = (
    'checkpoint_safety',
    'checkpoint_fit',
    'mmengine.runner.checkpoint',
    'mmengine.fileio',
    'torch.serialization',
    'pickle',
    'safetensors',
)
# names that read checkpoint files, however they are reached
FILE_NAMES = frozenset(
    {
        'checkpoint_safety',
        'checkpoint_fit',
        'load_checkpoint',
        '_load_checkpoint',
        'load_checkpoint_file',
        'CheckpointLoader',
    }
)


def _is_file_module(name: str) -> bool:
    return any(
        name == m or name.startswith(m + '.') or name.endswith('.' + m)
        for m in FILE_MODULES
    )


def file_reading(tree: ast.AST) -> list[str]:
    """What in ``tree`` imports or calls a checkpoint reader."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_file_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ''
            names = [a.name for a in node.names]
            if _is_file_module(module) or FILE_NAMES.intersection(names):
                found.append(f'from {"." * node.level}{module} import {names}')
            elif module == 'torch' and {'load', 'serialization'} & set(names):
                found.append(f'from torch import {names}')
        elif isinstance(node, ast.Attribute):
            if node.attr in FILE_NAMES or (
                node.attr in ('load', 'serialization')
                and isinstance(node.value, ast.Name)
                and node.value.id == 'torch'
            ):
                found.append(ast.unparse(node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module('nommer_mm.checkpoint_fit') and the like
            if _is_file_module(node.value) and ' ' not in node.value:
                found.append(repr(node.value))
    return found


def test_the_models_import_nothing_about_files():
    files = sorted(MODELS.rglob('*.py'))
    assert len(files) > 10, files
    offending = {}
    for path in files:
        found = file_reading(ast.parse(path.read_text(), str(path)))
        if found:
            offending[str(path.relative_to(MODELS.parent))] = found
    assert not offending, offending


def test_the_check_sees_each_way_of_reading_a_file():
    for source in (
        'from ...checkpoint_safety import load_checkpoint_file',
        'from ... import checkpoint_fit',
        'import nommer_mm.checkpoint_fit',
        'from mmengine.runner.checkpoint import _load_checkpoint',
        'from mmengine.runner import load_checkpoint',
        'import torch\ntorch.load(path)',
        'from torch import load',
        "importlib.import_module('nommer_mm.checkpoint_safety')",
    ):
        assert file_reading(ast.parse(source)), source
    assert not file_reading(ast.parse('import torch.utils.checkpoint as cp'))


def test_importing_nommer_mm_installs_the_fit_check():
    from nommer_mm.checkpoint_fit import check_pretrained_fits
    from nommer_mm.models.backbones.common import StagedBackbone

    assert StagedBackbone.before_pretrained_load == (check_pretrained_fits,)
