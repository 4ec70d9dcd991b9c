"""The stack's pins and what this environment has of it: torch, the
OpenMMLab packages with their undeclared dependencies, this repository, and
the check that the whole stack imports.

The stack's package names and versions are defined in the first section of
this file, from requirements.txt; every other module reads them from here.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import sysconfig
import tempfile
from pathlib import Path

from .common import REPO_ROOT, log, packaging, pip, probe


# ------------------------------------------------------------- the stack
def read_pins(path: Path = REPO_ROOT / 'requirements.txt') -> dict[str, str]:
    """``name==version`` lines of requirements.txt (the pins' one home)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            name, sep, version = line.partition('==')
            if not sep:
                sys.exit(f'{path}: {line!r} is not of the form name==version')
            pins[name.strip()] = version.strip()
    return pins


PINS = read_pins()
TORCH_PIN = ('torch', PINS['torch'])
TORCHVISION_PIN = ('torchvision', PINS['torchvision'])
MMCV_VERSION = PINS['mmcv']
# Frozen by the users' stack: mmdet 3.3 / mmseg 1.2.2 refuse mmcv >= 2.2.
OPENMMLAB_PINS = {
    name: PINS[name] for name in ('mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain')
}
# mmcv's own runtime requirements: its wheels are installed with --no-deps
# (so pip cannot pull another mmcv or torch), hence these come first.
MMCV_RUNTIME_REQUIREMENTS = [
    'addict',
    'numpy',
    'packaging',
    'Pillow',
    'pyyaml',
    'yapf',
    'opencv-python',
    f'mmengine=={OPENMMLAB_PINS["mmengine"]}',
]
# Needed at import or run time but not declared (mmseg: ftfy, regex;
# mmengine resolves `mmdet::` config bases through pkg_resources, which
# setuptools >= 81 no longer ships; mmdet's COCO metric: pycocotools).
RUNTIME_EXTRAS = [
    'setuptools<81',
    'ftfy',
    'regex',
    'pycocotools',
    'scipy',
    'shapely',
    'terminaltables',
    'matplotlib',
]
# Used by our tests and tools (timm: the independent GC ViT / Visformer the
# converter tests compare against; pinned, and installed with torch held,
# so it cannot swap torch), not needed to train or evaluate.
DEV_EXTRAS = ['pytest', 'timm==1.0.22', 'onnx', 'onnxruntime', 'ruff==0.17.6']
EXTRA_REQUIREMENTS = RUNTIME_EXTRAS + DEV_EXTRAS


# ---------------------------------------------------- what is installed
def version_of(dist: str) -> str | None:
    """The installed version of distribution ``dist``, None if absent."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def requirement_met(requirement: str) -> bool:
    """Whether an installed distribution satisfies ``requirement``."""
    Requirement = packaging('requirements').Requirement
    req = Requirement(requirement)
    installed = version_of(req.name)
    return installed is not None and req.specifier.contains(installed, prereleases=True)


def missing_requirements() -> list[str]:
    """The OpenMMLab pins and extras not satisfied here, as requirements."""
    missing = [f'{d}=={v}' for d, v in OPENMMLAB_PINS.items() if version_of(d) != v]
    missing += [r for r in EXTRA_REQUIREMENTS if not requirement_met(r)]
    return missing


def hold_constraints() -> Path:
    """A pip constraints file pinning torch, torchvision and mmcv to what is
    installed (and mmcv to its pin when absent), so no resolver swaps them."""
    lines = [f'{d}=={version_of(d)}' for d in ('torch', 'torchvision')]
    lines.append(f'mmcv=={version_of("mmcv") or MMCV_VERSION}')
    path = Path(tempfile.mkdtemp(prefix='nommer-deps-')) / 'constraints.txt'
    path.write_text('\n'.join(lines) + '\n')
    return path


def externally_managed() -> bool:
    """Whether this is a system Python marked EXTERNALLY-MANAGED (PEP 668)."""
    marker = Path(sysconfig.get_path('stdlib')) / 'EXTERNALLY-MANAGED'
    return marker.exists() and sys.prefix == sys.base_prefix


# ------------------------------------------------------ installing them
def torch_pair_ok() -> tuple[bool, str]:
    """Whether torch and torchvision import, and their versions."""
    return probe(
        'import torch, torchvision; print(torch.__version__, torchvision.__version__)'
    )


def ensure_torch() -> None:
    """Keep an importable torch + torchvision pair, else install the pins."""
    ok, out = torch_pair_ok()
    if ok:
        log(f'torch/torchvision present: {out}')
        return
    log(
        f'no importable torch + torchvision pair ({out.splitlines()[-1:]}); '
        'installing the pinned PyPI pair'
    )
    pip(
        'install',
        f'{TORCH_PIN[0]}=={TORCH_PIN[1]}',
        f'{TORCHVISION_PIN[0]}=={TORCHVISION_PIN[1]}',
    )
    ok, out = torch_pair_ok()
    if not ok:
        sys.exit(f'torch/torchvision still do not import:\n{out}')


def install_self(*pip_options: str) -> None:
    """This repository, editable, unless it is installed from here already."""
    ok, out = probe(
        'import nommer_mm, os; print(os.path.dirname('
        'os.path.dirname(nommer_mm.__file__)))'
    )
    if ok and Path(out.splitlines()[-1]).resolve() == REPO_ROOT:
        log('nommer_mm installed from this checkout')
    else:
        pip(
            'install',
            *pip_options,
            '--no-deps',
            '--no-build-isolation',
            '-e',
            str(REPO_ROOT),
        )


def ensure_rest(with_self: bool) -> None:
    """The OpenMMLab packages and extras, with torch, torchvision and mmcv
    held; then this repository unless ``with_self`` is False."""
    missing = missing_requirements()
    if missing:
        log(f'installing {missing} with torch, torchvision, mmcv held')
        pip('install', '-c', str(hold_constraints()), *missing)
    else:
        log('OpenMMLab packages and extras present')
    if with_self:
        install_self()


def final_check() -> None:
    """Stop unless the whole stack imports and mmdet's config bases resolve."""
    ok, out = probe(
        'import mmdet, mmseg, mmpretrain, mmengine, mmcv\n'
        'from mmcv.ops import RoIAlign, nms\n'
        'from mmengine.config import Config\n'
        'import tempfile, os\n'
        'f = os.path.join(tempfile.mkdtemp(), "c.py")\n'
        'open(f, "w").write("_base_ = [\'mmdet::_base_/'
        'default_runtime.py\']")\n'
        'assert Config.fromfile(f).default_scope == "mmdet"\n'
        'print("stack:", mmengine.__version__, mmcv.__version__, '
        'mmdet.__version__, mmseg.__version__, mmpretrain.__version__)'
    )
    if not ok:
        sys.exit(f'the stack does not import:\n{out}')
    log(next(ln for ln in out.splitlines() if ln.startswith('stack:')))
