"""The stack's pins and what this environment has of it: torch, the
OpenMMLab packages with their undeclared dependencies, this repository, and
the check that the whole stack imports.

Two stacks share the import names mmcv, mmengine, mmdet, mmseg and
mmpretrain: the original OpenMMLab releases (``upstream``, pins in
requirements.txt) and their maintained fork OneDL (``onedl``, pins in
requirements-onedl.txt). :func:`use_stack` sets the package names and
versions of the first section of this file for one of them; every other
module reads them from here.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import sysconfig
import tempfile
from pathlib import Path

from .common import REPO_ROOT, log, packaging, pip, probe

# Each stack: its pins' file, and its distributions of mmcv, mmengine and
# the task packages (mmengine first).
STACKS = {
    'upstream': dict(
        requirements='requirements.txt',
        mmcv='mmcv',
        openmmlab=('mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain'),
    ),
    'onedl': dict(
        requirements='requirements-onedl.txt',
        mmcv='onedl-mmcv',
        openmmlab=(
            'onedl-mmengine',
            'onedl-mmdetection',
            'onedl-mmsegmentation',
            'onedl-mmpretrain',
        ),
    ),
}


# ------------------------------------------------------------- the stack
def read_pins(path: Path = REPO_ROOT / 'requirements.txt') -> dict[str, str]:
    """``name==version`` lines of a requirements file (the pins' one home)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            name, sep, version = line.partition('==')
            if not sep:
                sys.exit(f'{path}: {line!r} is not of the form name==version')
            pins[name.strip()] = version.strip()
    return pins


def use_stack(name: str) -> None:
    """Set this module's pins (``STACK``, ``PINS``, ``TORCH_PIN``,
    ``TORCHVISION_PIN``, ``MMCV_DIST``, ``MMCV_VERSION``, ``OPENMMLAB_PINS``,
    ``MMCV_RUNTIME_REQUIREMENTS``) to those of stack ``name``."""
    global STACK, PINS, TORCH_PIN, TORCHVISION_PIN, MMCV_DIST, MMCV_VERSION
    global OPENMMLAB_PINS, MMCV_RUNTIME_REQUIREMENTS
    if name not in STACKS:
        sys.exit(f'--stack {name!r}: expected one of {", ".join(STACKS)}')
    spec = STACKS[name]
    STACK = name
    PINS = read_pins(REPO_ROOT / spec['requirements'])
    TORCH_PIN = ('torch', PINS['torch'])
    TORCHVISION_PIN = ('torchvision', PINS['torchvision'])
    MMCV_DIST = spec['mmcv']
    MMCV_VERSION = PINS[MMCV_DIST]
    # Frozen by the upstream stack: mmdet 3.3 / mmseg 1.2.2 refuse mmcv >= 2.2.
    OPENMMLAB_PINS = {dist: PINS[dist] for dist in spec['openmmlab']}
    # mmcv's own runtime requirements: its wheels are installed with
    # --no-deps (so pip cannot pull another mmcv or torch), hence these first.
    mmengine = spec['openmmlab'][0]
    MMCV_RUNTIME_REQUIREMENTS = [
        'addict',
        'numpy',
        'packaging',
        'Pillow',
        'pyyaml',
        'yapf',
        'opencv-python',
        f'{mmengine}=={OPENMMLAB_PINS[mmengine]}',
    ]


use_stack('upstream')  # until the command line names one
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


def stack_module():
    """nommer_mm/stack.py (which names the distributions of each stack and
    tells a mix), read from its file: nommer_mm itself may not import yet."""
    import importlib.util

    name = '_nommer_mm_stack'
    if name not in sys.modules:
        path = REPO_ROOT / 'nommer_mm' / 'stack.py'
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def installed_stack() -> str | None:
    """The stack whose distributions are installed here, None on a bare
    environment; a mix of both is reported and left to :func:`choose_stack`."""
    found = stack_module().installed()
    stacks = {f.stack for f in found}
    return stacks.pop() if len(stacks) == 1 else None


def choose_stack(asked: str | None) -> str:
    """``--stack``, else the installed stack, else upstream; stops on a mix
    of both stacks when ``--stack`` does not say which one to keep."""
    module = stack_module()
    found = module.installed()
    if asked is None and len({f.stack for f in found}) > 1:
        sys.exit(module.mismatch_message(found))
    return asked or installed_stack() or 'upstream'


def other_stack_installed() -> list[str]:
    """Distributions of the stack not chosen (``name==version``)."""
    return [
        f'{f.distribution}=={f.version}'
        for f in stack_module().installed()
        if f.stack != STACK
    ]


def remove_other_stack(*pip_options: str) -> None:
    """Uninstall the other stack's packages: they share import names with
    this one's, so the two cannot be installed side by side."""
    other = other_stack_installed()
    if other:
        log(f"--stack {STACK}: removing the other stack's {', '.join(other)}")
        pip('uninstall', '-y', *pip_options, *(d.split('==')[0] for d in other))


def missing_requirements() -> list[str]:
    """The OpenMMLab pins and extras not satisfied here, as requirements."""
    missing = [f'{d}=={v}' for d, v in OPENMMLAB_PINS.items() if version_of(d) != v]
    missing += [r for r in EXTRA_REQUIREMENTS if not requirement_met(r)]
    return missing


def hold_constraints() -> Path:
    """A pip constraints file pinning torch, torchvision and mmcv to what is
    installed (and mmcv to its pin when absent), and numpy to the major
    version installed when that is 1, so no resolver swaps them."""
    lines = [f'{d}=={version_of(d)}' for d in ('torch', 'torchvision')]
    lines.append(f'{MMCV_DIST}=={version_of(MMCV_DIST) or MMCV_VERSION}')
    numpy = version_of('numpy')
    if numpy and int(numpy.split('.')[0]) < 2:
        # torch before 2.3 is built against numpy 1 and breaks on numpy 2
        lines.append('numpy<2')
    # the other stack's mmcv is never the answer to "mmcv"
    other = [s['mmcv'] for n, s in STACKS.items() if n != STACK]
    lines += [f'{dist}<0' for dist in other]
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
    module = stack_module()
    found = module.installed()
    if {f.stack for f in found} != {STACK}:
        sys.exit(
            f'--stack {STACK}: ' + module.mismatch_message(found)
            if len({f.stack for f in found}) > 1
            else f'--stack {STACK} wanted, but installed: ' + ', '.join(map(str, found))
        )
    log(f'{STACK} ' + next(ln for ln in out.splitlines() if ln.startswith('stack:')))
