#!/usr/bin/env python3
"""Bring this Python environment to a working NomMer + OpenMMLab 2.x stack.

Steps, each skipped when already satisfied (a second run installs nothing):

1. torch + torchvision: an importable pair is kept; otherwise the pinned
   PyPI pair is installed (mmpretrain needs torchvision, and PyPI has no
   CPU-only torchvision, so this is the CUDA build; it runs on CPU too).
2. mmcv 2.1.0 *with compiled ops* (mmdet needs RoIAlign, NMS ...), from the
   first source that yields a working build:
   a. a wheel folder named by ``NOMMER_MMCV_WHEELS`` (CI: ``../shared/wheels``),
   b. the local build cache (``$XDG_CACHE_HOME/nommer_mm/mmcv``),
   c. the PyPI source, built with C++20 flags, no build isolation,
      ``setuptools<81`` and ``MMCV_WITH_OPS=1`` (CUDA ops where a GPU and
      nvcc exist), then stored in the cache.
   A wheel counts as matching only if it installs for this Python and its
   ops import and run against the installed torch.
3. The frozen OpenMMLab packages and the undeclared dependencies of mmseg,
   installed under a constraints file that pins torch, torchvision and mmcv
   to what is installed, so no resolver can swap them.
4. This repository itself, editable (``pip install -e .``).

Usage: ``python tools/install_deps.py [--wheels DIR] [--no-self]``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


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
OPENMMLAB_PINS = {name: PINS[name] for name in
                  ('mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain')}
# Needed at import or run time but not declared (mmseg: ftfy, regex;
# mmengine resolves `mmdet::` config bases through pkg_resources, which
# setuptools >= 81 no longer ships) or used by our tests and tools (timm:
# the independent GC ViT / Visformer the converter tests compare against;
# pinned, and installed with torch held, so it cannot swap torch).
EXTRA_REQUIREMENTS = ['setuptools<81', 'ftfy', 'regex', 'pycocotools', 'scipy',
                      'shapely', 'terminaltables', 'matplotlib', 'pytest',
                      'timm==1.0.22', 'onnx', 'onnxruntime']


def log(msg: str) -> None:
    print(f'[install_deps] {msg}', flush=True)


def run(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> None:
    log('$ ' + ' '.join(cmd))
    subprocess.check_call(cmd, env=env, cwd=cwd)


def pip(*args: str, env: dict | None = None) -> None:
    run([sys.executable, '-m', 'pip', '--disable-pip-version-check', *args],
        env=env)


def probe(code: str) -> tuple[bool, str]:
    """Run ``code`` in a fresh interpreter: a broken import must not poison
    this process (and a freshly installed package must be seen)."""
    # Run outside the checkout, or `import nommer_mm` would succeed from the
    # working directory without the package being installed.
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def version_of(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


# ----------------------------------------------------------------- torch
def torch_pair_ok() -> tuple[bool, str]:
    return probe('import torch, torchvision; '
                 'print(torch.__version__, torchvision.__version__)')


def ensure_torch() -> None:
    ok, out = torch_pair_ok()
    if ok:
        log(f'torch/torchvision present: {out}')
        return
    log(f'no importable torch + torchvision pair ({out.splitlines()[-1:]}); '
        'installing the pinned PyPI pair')
    pip('install', f'{TORCH_PIN[0]}=={TORCH_PIN[1]}',
        f'{TORCHVISION_PIN[0]}=={TORCHVISION_PIN[1]}')
    ok, out = torch_pair_ok()
    if not ok:
        sys.exit(f'torch/torchvision still do not import:\n{out}')


def torch_situation() -> dict:
    """Python, torch and CUDA facts that decide which mmcv build fits."""
    ok, out = probe(
        'import sys, shutil, torch\n'
        'from torch.utils.cpp_extension import CUDA_HOME\n'
        'gpu = torch.cuda.is_available()\n'
        'nvcc = bool(CUDA_HOME) or bool(shutil.which("nvcc"))\n'
        'print("SITUATION", sys.version_info[0], sys.version_info[1], '
        'torch.__version__.split("+")[0], torch.version.cuda or "none", '
        'int(gpu), int(nvcc))')
    if not ok:
        sys.exit(f'cannot inspect torch:\n{out}')
    # torch may print warnings (e.g. about CUDA) around the line we want.
    line = next(ln for ln in out.splitlines() if ln.startswith('SITUATION '))
    major, minor, tv, cuda, gpu, nvcc = line.split()[1:]
    want_cuda = gpu == '1' and nvcc == '1'
    return dict(py=f'cp{major}{minor}', torch=tv, cuda=cuda,
                want_cuda_ops=want_cuda,
                key=f'cp{major}{minor}-torch{tv}-'
                    f'{"cu" + cuda.replace(".", "") if want_cuda else "cpu"}')


# ------------------------------------------------------------------ mmcv
# mmcv 2.1.0's own runtime requirements: wheels are installed with --no-deps
# (so pip cannot pull another mmcv or torch), hence these come first.
MMCV_RUNTIME_REQUIREMENTS = ['addict', 'numpy', 'packaging', 'Pillow',
                             'pyyaml', 'yapf', 'opencv-python',
                             f'mmengine=={OPENMMLAB_PINS["mmengine"]}']
MMCV_CHECK = '''
import torch, mmcv
from mmcv.ops import RoIAlign, nms
from mmcv.ops import get_compiling_cuda_version
assert mmcv.__version__ == "{ver}", mmcv.__version__
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
scores = torch.tensor([0.9, 0.8, 0.7])
_, keep = nms(boxes, scores, 0.5)
assert keep.tolist() == [0, 2], keep
feat = torch.arange(16.).view(1, 1, 4, 4)
out = RoIAlign((2, 2), 1.0, 0)(feat, torch.tensor([[0., 0., 0., 3., 3.]]))
assert out.shape == (1, 1, 2, 2)
if {need_cuda}:
    assert get_compiling_cuda_version() != "not available", "mmcv built without CUDA ops"
    _, keep = nms(boxes.cuda(), scores.cuda(), 0.5)
    assert keep.tolist() == [0, 2]
print("mmcv", mmcv.__version__, "ops OK, cuda:", get_compiling_cuda_version())
'''


def mmcv_ok(situation: dict) -> tuple[bool, str]:
    return probe(MMCV_CHECK.format(ver=MMCV_VERSION,
                                   need_cuda=situation['want_cuda_ops']))


def cache_dir(situation: dict) -> Path:
    base = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache'))
    return base / 'nommer_mm' / 'mmcv' / situation['key']


def candidate_wheels(folder: Path, situation: dict) -> list[Path]:
    """mmcv 2.1.0 wheels in ``folder`` whose tags fit this interpreter."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # a bare interpreter: pip vendors packaging
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    supported = set(sys_tags())
    found = []
    for whl in sorted(folder.glob('mmcv-*.whl')):
        try:
            name, ver, _, tags = parse_wheel_filename(whl.name)
        except Exception:  # not a well-formed wheel name: not ours to judge
            continue
        if str(ver) == MMCV_VERSION and tags & supported:
            found.append(whl)
    return found


def verify_sha256(whl: Path) -> None:
    sums = whl.parent / 'SHA256SUMS'
    if not sums.exists():
        return
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == whl.name:
            digest = hashlib.sha256(whl.read_bytes()).hexdigest()
            if digest != parts[0]:
                raise RuntimeError(f'{whl} does not match SHA256SUMS')


def try_wheel(whl: Path, situation: dict) -> bool:
    log(f'trying mmcv wheel {whl}')
    try:
        verify_sha256(whl)
        pip('install', '--no-deps', '--force-reinstall', str(whl))
    except (subprocess.CalledProcessError, RuntimeError) as err:
        log(f'  cannot install it: {err}')
        return False
    ok, out = mmcv_ok(situation)
    log(f'  {"works" if ok else "does not work here"}: {out.splitlines()[-1:]}')
    if not ok:
        pip('uninstall', '-y', 'mmcv')
    return ok


def build_mmcv(situation: dict) -> Path:
    """Build mmcv from the PyPI source distribution; return the wheel."""
    log('building mmcv from source (about 20 min on 2 cores for CPU ops)')
    # pkg_resources is gone from setuptools >= 81; mmcv's setup.py needs it.
    pip('install', 'setuptools<81', 'wheel', 'ninja', 'packaging')
    work = Path(tempfile.mkdtemp(prefix='mmcv-build-'))
    pip('download', '--no-deps', '--no-binary', ':all:',
        f'mmcv=={MMCV_VERSION}', '-d', str(work))
    sdist = next(work.glob('mmcv-*.tar.gz'))
    with tarfile.open(sdist) as tar:
        tar.extractall(work)
    src = next(p for p in work.iterdir() if p.is_dir())
    setup_py = src / 'setup.py'
    text = setup_py.read_text()
    # torch >= 2.10 headers need C++20; the source hard-codes c++14/c++17.
    text = re.sub(r'-std=c\+\+1[47]', '-std=c++20', text)
    setup_py.write_text(text)
    env = dict(os.environ, MMCV_WITH_OPS='1',
               MAX_JOBS=os.environ.get('MAX_JOBS', str(os.cpu_count() or 2)))
    env['FORCE_CUDA'] = '1' if situation['want_cuda_ops'] else '0'
    out_dir = work / 'dist'
    run([sys.executable, '-m', 'pip', 'wheel', '--no-build-isolation',
         '--no-deps', '-w', str(out_dir), str(src)], env=env)
    return next(out_dir.glob('mmcv-*.whl'))


def ensure_mmcv(wheel_dirs: list[Path]) -> None:
    situation = torch_situation()
    ok, out = mmcv_ok(situation)
    if ok:
        log(f'mmcv present: {out.splitlines()[-1]}')
        return
    log(f'mmcv {MMCV_VERSION} with ops not usable yet ({situation["key"]})')
    pip('install', '-c', str(hold_constraints()), *MMCV_RUNTIME_REQUIREMENTS)
    cache = cache_dir(situation)
    for folder in [*wheel_dirs, cache]:
        if not folder.is_dir():
            continue
        for whl in candidate_wheels(folder, situation):
            if try_wheel(whl, situation):
                return
    whl = build_mmcv(situation)
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / whl.name
    shutil.copy2(whl, cached)
    log(f'cached the build at {cached}')
    if not try_wheel(cached, situation):
        sys.exit('the freshly built mmcv does not work; see the log above')


# ------------------------------------------------------------ the rest
def hold_constraints() -> Path:
    """A pip constraints file pinning torch, torchvision and mmcv to what is
    installed (and mmcv to 2.1.0 when absent), so no resolver swaps them."""
    lines = [f'{d}=={version_of(d)}' for d in ('torch', 'torchvision')]
    lines.append(f'mmcv=={version_of("mmcv") or MMCV_VERSION}')
    path = Path(tempfile.mkdtemp(prefix='nommer-deps-')) / 'constraints.txt'
    path.write_text('\n'.join(lines) + '\n')
    return path


def pins_satisfied() -> list[str]:
    missing = [f'{d}=={v}' for d, v in OPENMMLAB_PINS.items()
               if version_of(d) != v]
    missing += [r for r in EXTRA_REQUIREMENTS if not requirement_met(r)]
    return missing


def requirement_met(requirement: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    req = Requirement(requirement)
    installed = version_of(req.name)
    return installed is not None and req.specifier.contains(
        installed, prereleases=True)


def ensure_rest(install_self: bool) -> None:
    missing = pins_satisfied()
    if missing:
        log(f'installing {missing} with torch, torchvision, mmcv held')
        pip('install', '-c', str(hold_constraints()), *missing)
    else:
        log('OpenMMLab packages and extras present')
    if install_self:
        ok, out = probe('import nommer_mm, os; print(os.path.dirname('
                        'os.path.dirname(nommer_mm.__file__)))')
        if ok and Path(out.splitlines()[-1]).resolve() == REPO_ROOT:
            log('nommer_mm installed from this checkout')
        else:
            pip('install', '--no-deps', '--no-build-isolation', '-e',
                str(REPO_ROOT))


def final_check() -> None:
    ok, out = probe('import mmdet, mmseg, mmpretrain, mmengine, mmcv\n'
                    'from mmcv.ops import RoIAlign, nms\n'
                    'from mmengine.config import Config\n'
                    'import tempfile, os\n'
                    'f = os.path.join(tempfile.mkdtemp(), "c.py")\n'
                    'open(f, "w").write("_base_ = [\'mmdet::_base_/'
                    'default_runtime.py\']")\n'
                    'assert Config.fromfile(f).default_scope == "mmdet"\n'
                    'print("stack:", mmengine.__version__, mmcv.__version__, '
                    'mmdet.__version__, mmseg.__version__, mmpretrain.__version__)')
    if not ok:
        sys.exit(f'the stack does not import:\n{out}')
    log(next(ln for ln in out.splitlines() if ln.startswith('stack:')))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--wheels', action='append', default=[],
                        help='folder with prebuilt mmcv wheels (repeatable); '
                        'NOMMER_MMCV_WHEELS (os.pathsep-separated) adds more')
    parser.add_argument('--no-self', action='store_true',
                        help='do not pip install -e this repository')
    args = parser.parse_args()
    wheel_dirs = [Path(p) for p in args.wheels]
    env_dirs = os.environ.get('NOMMER_MMCV_WHEELS', '')
    wheel_dirs += [Path(p) for p in env_dirs.split(os.pathsep) if p]

    ensure_torch()
    ensure_mmcv(wheel_dirs)
    ensure_rest(install_self=not args.no_self)
    final_check()


if __name__ == '__main__':
    main()
