#!/usr/bin/env python3
"""Bring this Python environment to a working NomMer + OpenMMLab 2.x stack.

Steps, each skipped when already satisfied (a second run installs nothing):

1. torch + torchvision: an importable pair is kept; otherwise the pinned
   PyPI pair is installed (mmpretrain needs torchvision, and PyPI has no
   CPU-only torchvision, so this is the CUDA build; it runs on CPU too).
2. mmcv 2.1.0 *with compiled ops* (mmdet needs RoIAlign, NMS ...), from the
   first source that yields a working build:
   a. a wheel folder named by ``--wheels`` / ``NOMMER_MMCV_WHEELS``
      (CI: ``../shared/wheels``),
   b. the local build cache (``$XDG_CACHE_HOME/nommer_mm/mmcv/<key>``, the
      key naming Python, torch, CUDA and the kernel architectures),
   c. the PyPI source, built with C++20 flags, no build isolation,
      ``setuptools<81`` and ``MMCV_WITH_OPS=1``, then stored in the cache.
      CUDA kernels are built for ``--cuda-archs`` (default: the GPU's own
      architecture when a GPU is present, none otherwise), also on a
      machine without a GPU or a CUDA toolkit: nvcc and the CUDA headers
      then come from NVIDIA's PyPI packages at torch's CUDA version,
      installed into the cache (a build-only location), not this
      environment.
   A wheel counts as matching only if it installs for this Python and its
   ops import and run against the installed torch.
3. The frozen OpenMMLab packages and the undeclared dependencies of mmseg,
   installed under a constraints file that pins torch, torchvision and mmcv
   to what is installed, so no resolver can swap them.
4. This repository itself, editable (``pip install -e .``).

Offline machines (a cluster's compute nodes, a GPU box without network):

* ``--wheelhouse DIR [--for-python 3.12 --for-torch 2.11.0]
  [--cuda-archs 9.0]`` fills DIR with mmcv built for that Python and torch
  (in a side environment when they are not this one's) and the OpenMMLab
  packages with every dependency the target image lacks, as wheels.
* ``--wheelhouse DIR --offline`` installs from DIR alone (no index), keeps
  the machine's torch, torchvision and numpy, and ends with the same checks.

Usage: ``python tools/install_deps.py [--wheels DIR] [--cuda-archs 8.0,9.0]
[--no-self]``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
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
OPENMMLAB_PINS = {
    name: PINS[name] for name in ('mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain')
}
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
CACHE_ROOT = (
    Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'nommer_mm'
)


def log(msg: str) -> None:
    print(f'[install_deps] {msg}', flush=True)


def run(cmd: list, env: dict | None = None, cwd: str | None = None) -> None:
    log('$ ' + ' '.join(str(c) for c in cmd))
    subprocess.check_call([str(c) for c in cmd], env=env, cwd=cwd)


def pip(*args: str, env: dict | None = None) -> None:
    run([sys.executable, '-m', 'pip', '--disable-pip-version-check', *args], env=env)


def probe(code: str, python: str | None = None) -> tuple[bool, str]:
    """Run ``code`` in a fresh interpreter: a broken import must not poison
    this process (and a freshly installed package must be seen)."""
    # Run outside the checkout, or `import nommer_mm` would succeed from the
    # working directory without the package being installed.
    proc = subprocess.run(
        [python or sys.executable, '-c', code],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def version_of(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def canonical(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def packaging(module: str):
    """``packaging.<module>``, or pip's vendored copy in a bare interpreter."""
    try:
        return importlib.import_module(f'packaging.{module}')
    except ImportError:
        return importlib.import_module(f'pip._vendor.packaging.{module}')


# ----------------------------------------------------------------- torch
def torch_pair_ok() -> tuple[bool, str]:
    return probe(
        'import torch, torchvision; print(torch.__version__, torchvision.__version__)'
    )


def ensure_torch() -> None:
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


def parse_archs(text: str) -> list[str]:
    """``'8.0,9.0'`` -> ``['8.0', '9.0']`` (``+PTX`` allowed, as in
    ``TORCH_CUDA_ARCH_LIST``)."""
    archs = [a.strip() for a in re.split(r'[,; ]+', text) if a.strip()]
    for arch in archs:
        if not re.fullmatch(r'\d+\.\d+a?(\+PTX)?', arch):
            sys.exit(
                f'--cuda-archs {text!r}: {arch!r} is not a compute '
                'capability; give them like 8.0,9.0 (A100, H100)'
            )
    if not archs:
        sys.exit(f'--cuda-archs {text!r} names no architecture; give them like 8.0,9.0')
    return archs


def arch_tag(arch: str) -> str:
    return 'sm' + arch.replace('.', '').replace('+PTX', '-ptx')


def torch_situation(cuda_archs: list[str] | None = None) -> dict:
    """Python, torch and CUDA facts that decide which mmcv build fits.

    ``cuda_archs``: the architectures asked for; None means "this GPU's, if
    there is one"."""
    ok, out = probe(
        'import os, sys, torch\n'
        'gpu = torch.cuda.is_available()\n'
        'cap = "%d.%d" % torch.cuda.get_device_capability(0) if gpu else "-"\n'
        'print("SITUATION", sys.version_info[0], sys.version_info[1], '
        'torch.__version__.split("+")[0], torch.version.cuda or "none", '
        'int(gpu), cap, os.path.dirname(os.path.dirname(torch.__file__)))'
    )
    if not ok:
        sys.exit(f'cannot inspect torch:\n{out}')
    # torch may print warnings (e.g. about CUDA) around the line we want.
    line = next(ln for ln in out.splitlines() if ln.startswith('SITUATION '))
    major, minor, tv, cuda, gpu, cap, site = line.split(maxsplit=7)[1:]
    if cuda_archs is None:
        archs = [cap] if gpu == '1' and cuda != 'none' else []
    else:
        archs = cuda_archs
        if archs and cuda == 'none':
            sys.exit(
                f'--cuda-archs {",".join(archs)}: this torch '
                f'({tv}) is a CPU-only build (torch.version.cuda is '
                'None), so CUDA kernels cannot be built against it; '
                'install a CUDA build of torch or leave out --cuda-archs'
            )
        if int(cuda.split('.')[0]) >= 13:
            old = [a for a in archs if float(a.rstrip('a').split('+')[0]) < 7.5]
            if old:
                sys.exit(
                    f'--cuda-archs {",".join(archs)}: CUDA {cuda} '
                    f'(torch {tv}) cannot compile for {old}; it '
                    'supports compute capability 7.5 and newer'
                )
    kernels = (
        ('cu' + cuda.replace('.', '') + '-' + '-'.join(arch_tag(a) for a in archs))
        if archs
        else 'cpu'
    )
    return dict(
        py=f'cp{major}{minor}',
        torch=tv,
        cuda=cuda,
        gpu=gpu == '1',
        archs=archs,
        site_packages=site,
        want_cuda_ops=bool(archs),
        key=f'cp{major}{minor}-torch{tv}-{kernels}',
    )


# ------------------------------------------------------- CUDA toolchain
# What nvcc needs beyond the headers and libraries torch's own CUDA wheels
# install (site-packages/nvidia/cuXY/{include,lib}): the compiler, its
# front-end headers, the NVVM back end and the CCCL headers (thrust, cub,
# nv/target), at torch's CUDA version. cuobjdump (any version) lists the
# kernels a build holds.
CUDA_TOOL_PACKAGES = (
    'nvidia-cuda-nvcc',
    'nvidia-cuda-crt',
    'nvidia-nvvm',
    'nvidia-cuda-cccl',
)
CUOBJDUMP_PACKAGE = 'nvidia-cuda-cuobjdump'
# --pypi-cuda: use those packages even where a system toolkit exists.
PYPI_CUDA = False


def nvcc_version(nvcc: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(nvcc), '--version'], capture_output=True, text=True
        ).stdout
    except OSError:
        return None
    found = re.search(r'release (\d+\.\d+)', out)
    return found.group(1) if found else None


def system_cuda_homes() -> dict[Path, str]:
    """The CUDA toolkits already on this machine (CUDA_HOME, CUDA_PATH, the
    nvcc on PATH, /usr/local/cuda), each with its nvcc's version, in that
    order."""
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    nvcc = shutil.which('nvcc')
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    candidates.append('/usr/local/cuda')
    found = {}
    for home in map(Path, filter(None, candidates)):
        # A toolkit has its headers beside nvcc (a wrapper script in
        # /usr/local/bin does not make /usr/local one).
        if (home / 'include' / 'cuda_runtime.h').exists():
            version = nvcc_version(home / 'bin' / 'nvcc')
            if version:
                found.setdefault(home, version)
    return found


def pip_target(requirement: str, target: Path) -> None:
    """``pip install --target`` into a folder of its own (pip skips folders
    a target already has, so packages sharing ``nvidia/cuXY`` must not share
    a target); a folder is used only once complete."""
    if (target / '.complete').exists():
        return
    tmp = target.with_name(target.name + '.part')
    shutil.rmtree(tmp, ignore_errors=True)
    pip('install', '--no-deps', '--target', str(tmp), requirement)
    (tmp / '.complete').write_text(requirement + '\n')
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def link_children(src: Path, dst: Path) -> None:
    """Symlink each entry of ``src`` into ``dst``; the first source to offer
    a name wins (callers list the toolchain before torch's copies)."""
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        link = dst / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry)


def cuda_home_from_pypi(cuda: str, site_packages: str) -> Path:
    """Assemble a CUDA_HOME of symlinks from NVIDIA's PyPI packages (in the
    cache) and the CUDA runtime that torch's wheels installed."""
    root = CACHE_ROOT / 'cuda' / cuda
    major = cuda.split('.')[0]
    pkgs = []
    for name in CUDA_TOOL_PACKAGES:
        pip_target(f'{name}=={cuda}.*', root / 'pkgs' / name)
        pkgs.append(root / 'pkgs' / name / 'nvidia' / f'cu{major}')
    try:  # only for the proof that the kernels are in the build
        pip_target(CUOBJDUMP_PACKAGE, root / 'pkgs' / CUOBJDUMP_PACKAGE)
        pkgs.append(root / 'pkgs' / CUOBJDUMP_PACKAGE / 'nvidia' / f'cu{major}')
    except subprocess.CalledProcessError:
        log(f'{CUOBJDUMP_PACKAGE} did not install; the kernel listing will be skipped')
    torch_cuda = Path(site_packages) / 'nvidia' / f'cu{major}'
    if not (torch_cuda / 'include' / 'cuda_runtime.h').exists():
        sys.exit(
            f'torch {cuda} CUDA headers not found under {torch_cuda}: '
            'the torch in this environment was not installed with '
            "NVIDIA's CUDA wheels (pip install torch from PyPI does)"
        )
    # Assembled afresh each time: it points into one environment's torch.
    home = root / 'home'
    shutil.rmtree(home, ignore_errors=True)
    # nvcc finds cicc, the profile and nvvm relative to its own file, so the
    # binaries are copied, not linked.
    (home / 'bin').mkdir(parents=True)
    for pkg in pkgs:
        if (pkg / 'bin').is_dir():
            for tool in (pkg / 'bin').iterdir():
                dst = home / 'bin' / tool.name
                if not dst.exists():
                    if tool.is_dir():
                        shutil.copytree(tool, dst, symlinks=True)
                    else:
                        shutil.copy2(tool, dst)
        if (pkg / 'nvvm').is_dir() and not (home / 'nvvm').exists():
            (home / 'nvvm').symlink_to(pkg / 'nvvm')
    for pkg in [*pkgs, torch_cuda]:
        link_children(pkg / 'include', home / 'include')
        # CUDA 13 moved thrust, cub and nv/ under include/cccl; nvcc's
        # profile adds that folder, torch's extension builder does not.
        link_children(pkg / 'include' / 'cccl', home / 'include')
        link_children(pkg / 'lib', home / 'lib64')
    runtime = sorted((home / 'lib64').glob('libcudart.so.*'))
    if not runtime:
        sys.exit(f'no libcudart.so.* under {torch_cuda}/lib')
    (home / 'lib64' / 'libcudart.so').symlink_to(runtime[0].name)
    # nvcc.profile reads $(TOP)/targets/x86_64-linux/{include,lib}.
    target = home / 'targets' / 'x86_64-linux'
    target.mkdir(parents=True)
    (target / 'include').symlink_to(home / 'include')
    (target / 'lib').symlink_to(home / 'lib64')
    found = nvcc_version(home / 'bin' / 'nvcc')
    if found != cuda:
        sys.exit(f'the assembled nvcc reports CUDA {found}, torch needs {cuda}')
    log(
        f'CUDA {cuda} toolchain for building: {home} (build-only, from '
        f"NVIDIA's PyPI packages; nothing installed into this environment)"
    )
    return home


def cuda_home_for(situation: dict) -> Path:
    """The toolkit to build with: one of torch's CUDA version on this
    machine; else, for CUDA 13 and newer, one assembled from NVIDIA's PyPI
    packages; else one of the same major version (torch's extension builder
    accepts a minor mismatch); else stop, saying what to do."""
    cuda = situation['cuda']
    major = cuda.split('.')[0]
    found = system_cuda_homes()
    exact = [h for h, v in found.items() if v == cuda]
    if exact and not PYPI_CUDA:
        log(f'using the CUDA {cuda} toolkit at {exact[0]}')
        return exact[0]
    if int(major) >= 13:
        return cuda_home_from_pypi(cuda, situation['site_packages'])
    # Before CUDA 13 NVIDIA's PyPI packages hold no compiler:
    # nvidia-cuda-nvcc-cu12 and -cu11 ship ptxas alone (no nvcc, no cicc).
    near = [h for h, v in found.items() if v.split('.')[0] == major]
    if near and not PYPI_CUDA:
        log(
            f'using the CUDA {found[near[0]]} toolkit at {near[0]} for torch '
            f"{situation['torch']}'s CUDA {cuda} (the same major version; "
            "torch's extension builder accepts it)"
        )
        return near[0]
    others = ', '.join(f'{h} (nvcc {v})' for h, v in found.items()) or 'none'
    sys.exit(
        f'--cuda-archs {",".join(situation["archs"])}: torch '
        f'{situation["torch"]} is built for CUDA {cuda}, and building its '
        f'kernels needs a CUDA {major}.x toolkit (nvcc and headers); toolkits '
        f"found: {others}. NVIDIA's PyPI packages stand in for a toolkit "
        f'from CUDA 13 on only (nvidia-cuda-nvcc-cu{major} holds ptxas but no '
        f'nvcc). Install or load a CUDA {cuda} toolkit and set CUDA_HOME to '
        'it (on a cluster often `module load cuda/'
        f"{cuda}`), or use a torch built for CUDA 13, such as PyPI's torch "
        '2.11.0 or 2.15.0; or leave out --cuda-archs for CPU ops only.'
    )


def kernel_archs(wheel: Path, cuda_home: Path) -> list[str] | None:
    """The ``sm_XX`` kernels in a wheel's ``_ext`` library, listed by
    ``cuobjdump --list-elf``; None when cuobjdump is not available."""
    cuobjdump = cuda_home / 'bin' / 'cuobjdump'
    if not cuobjdump.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if re.match(r'mmcv/_ext.*\.so$', n))
        lib = z.extract(name, tmp)
        out = subprocess.run(
            [str(cuobjdump), '--list-elf', lib], capture_output=True, text=True
        ).stdout
    return sorted(set(re.findall(r'\.(sm_\d+a?)\.cubin', out)))


# ------------------------------------------------------------------ mmcv
# mmcv 2.1.0's own runtime requirements: wheels are installed with --no-deps
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
MMCV_CHECK = """
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
    assert get_compiling_cuda_version() != "not available", \\
        "mmcv built without CUDA ops"
if {need_cuda} and torch.cuda.is_available():
    _, keep = nms(boxes.cuda(), scores.cuda(), 0.5)
    assert keep.tolist() == [0, 2]
print("mmcv", mmcv.__version__, "ops OK, cuda:", get_compiling_cuda_version())
"""


def mmcv_ok(situation: dict) -> tuple[bool, str]:
    return probe(
        MMCV_CHECK.format(ver=MMCV_VERSION, need_cuda=situation['want_cuda_ops'])
    )


def cache_dir(situation: dict) -> Path:
    return CACHE_ROOT / 'mmcv' / situation['key']


def candidate_wheels(folder: Path, situation: dict) -> list[Path]:
    """mmcv 2.1.0 wheels in ``folder`` whose tags fit this interpreter."""
    sys_tags = packaging('tags').sys_tags
    parse_wheel_filename = packaging('utils').parse_wheel_filename
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
            if sha256(whl) != parts[0]:
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


# Edits to the mmcv 2.1.0 source, each with its reason: (file, pattern,
# replacement, reason, the first torch that needs it). Applied with re.subn
# when the torch built against is that one or newer; a pattern that no
# longer matches is reported, so a changed source does not pass silently.
SOURCE_PATCHES = [
    (
        'setup.py',
        r'-std=c\+\+1[47]',
        '-std=c++20',
        'torch >= 2.10 headers need C++20; the source hard-codes c++14/c++17 '
        '(older torch keeps them: CUDA 11 nvcc has no C++20)',
        '2.10',
    ),
]


def patch_sources(src: Path, torch_version: str) -> None:
    def release(v: str) -> tuple:  # 2.10.0a0 (a nightly) counts as 2.10
        return packaging('version').Version(v).release

    for rel, pattern, replacement, reason, first_torch in SOURCE_PATCHES:
        if release(torch_version) < release(first_torch):
            log(f'not patching {rel} for torch {torch_version}: {reason}')
            continue
        path = src / rel
        text, count = re.subn(pattern, replacement, path.read_text())
        if not count:
            sys.exit(
                f'mmcv source patch no longer applies to {rel} ({pattern!r}): {reason}'
            )
        path.write_text(text)
        log(f'patched {rel} ({count}x): {reason}')


def build_mmcv(situation: dict) -> Path:
    """Build mmcv from the PyPI source distribution; return the wheel."""
    kernels = (
        f'CUDA {situation["cuda"]} kernels for {",".join(situation["archs"])}'
        if situation['archs']
        else 'CPU ops only'
    )
    # The toolkit first: a machine that cannot compile the kernels is told
    # so before the source is fetched.
    cuda_home = cuda_home_for(situation) if situation['archs'] else None
    log(
        f'building mmcv {MMCV_VERSION} from source with {kernels} (2 cores: '
        'about 20 min for CPU ops, 25 min more per CUDA architecture)'
    )
    # pkg_resources is gone from setuptools >= 81; mmcv's setup.py needs it.
    pip('install', 'setuptools<81', 'wheel', 'ninja', 'packaging')
    work = Path(tempfile.mkdtemp(prefix='mmcv-build-'))
    # No build isolation here either: an isolated setup.py run would get
    # the newest setuptools, without pkg_resources.
    pip(
        'download',
        '--no-deps',
        '--no-build-isolation',
        '--no-binary',
        ':all:',
        f'mmcv=={MMCV_VERSION}',
        '-d',
        str(work),
    )
    sdist = next(work.glob('mmcv-*.tar.gz'))
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter='data')
    src = next(p for p in work.iterdir() if p.is_dir())
    patch_sources(src, situation['torch'])
    # -g0: no debug info (a much smaller library, a faster link).
    env = dict(
        os.environ,
        MMCV_WITH_OPS='1',
        CFLAGS='-O2 -g0',
        CXXFLAGS='-O2 -g0',
        MAX_JOBS=os.environ.get('MAX_JOBS', str(os.cpu_count() or 2)),
    )
    if cuda_home:
        env.update(
            FORCE_CUDA='1',
            CUDA_HOME=str(cuda_home),
            TORCH_CUDA_ARCH_LIST=';'.join(situation['archs']),
            PATH=f'{cuda_home / "bin"}{os.pathsep}{env["PATH"]}',
        )
    else:
        env['FORCE_CUDA'] = '0'
    out_dir = work / 'dist'
    start = time.time()
    run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '--no-build-isolation',
            '--no-deps',
            '-w',
            str(out_dir),
            str(src),
        ],
        env=env,
    )
    whl = next(out_dir.glob('mmcv-*.whl'))
    log(
        f'built {whl.name} in {(time.time() - start) / 60:.1f} min on '
        f'{os.cpu_count()} cores ({kernels}), '
        f'{whl.stat().st_size / 2**20:.1f} MiB'
    )
    if cuda_home:
        found = kernel_archs(whl, cuda_home)
        wanted = sorted(
            arch_tag(a).replace('sm', 'sm_').split('-')[0] for a in situation['archs']
        )
        log(f'cuobjdump --list-elf on mmcv/_ext: {found}')
        if found is not None and not set(wanted) <= set(found):
            sys.exit(f'the build lacks kernels for {wanted}: it has {found}')
    return whl


def working_wheel(wheel_dirs: list[Path], situation: dict) -> Path:
    """Install the first mmcv wheel that works here (wheel folders, the
    cache, else a fresh build that is then cached); return its path."""
    cache = cache_dir(situation)
    for folder in [*wheel_dirs, cache]:
        if not folder.is_dir():
            continue
        for whl in candidate_wheels(folder, situation):
            if try_wheel(whl, situation):
                return whl
    whl = build_mmcv(situation)
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / whl.name
    shutil.copy2(whl, cached)
    log(f'cached the build at {cached}')
    if not try_wheel(cached, situation):
        sys.exit('the freshly built mmcv does not work; see the log above')
    return cached


def installed_is(wheel: Path) -> bool:
    """Whether the installed mmcv's compiled library is the one in
    ``wheel``."""
    ok, out = probe('import mmcv._ext as e; print(e.__file__)')
    if not ok:
        return False
    installed = Path(out.splitlines()[-1])
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n == f'mmcv/{installed.name}']
        return bool(names) and hashlib.sha256(z.read(names[0])).hexdigest() == sha256(
            installed
        )


def ensure_mmcv(wheel_dirs: list[Path], cuda_archs: list[str] | None) -> None:
    situation = torch_situation(cuda_archs)
    ok, out = mmcv_ok(situation)
    # An explicit --cuda-archs asks for a build for those architectures: the
    # installed mmcv counts only if it is the cached build for them.
    if ok and (
        cuda_archs is None
        or any(installed_is(whl) for whl in cache_dir(situation).glob('*.whl'))
    ):
        log(f'mmcv present: {out.splitlines()[-1]}')
        return
    log(f'mmcv {MMCV_VERSION} with ops for {situation["key"]} wanted')
    pip('install', '-c', str(hold_constraints()), *MMCV_RUNTIME_REQUIREMENTS)
    working_wheel(wheel_dirs, situation)


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
    missing = [f'{d}=={v}' for d, v in OPENMMLAB_PINS.items() if version_of(d) != v]
    missing += [r for r in EXTRA_REQUIREMENTS if not requirement_met(r)]
    return missing


def requirement_met(requirement: str) -> bool:
    Requirement = packaging('requirements').Requirement
    req = Requirement(requirement)
    installed = version_of(req.name)
    return installed is not None and req.specifier.contains(installed, prereleases=True)


def install_self(*pip_options: str) -> None:
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
    missing = pins_satisfied()
    if missing:
        log(f'installing {missing} with torch, torchvision, mmcv held')
        pip('install', '-c', str(hold_constraints()), *missing)
    else:
        log('OpenMMLab packages and extras present')
    if with_self:
        install_self()


def final_check() -> None:
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


# ------------------------------------------------------------ wheelhouse
# What the target image is assumed to ship (with everything these need):
# the stack of this project's GPU machines and of the common CUDA images
# (NGC PyTorch). The wheelhouse holds the rest of the stack's closure.
# numpy 2 is asked for, so compiled wheels that support it are chosen.
IMAGE_HAS = [
    'torch',
    'torchvision',
    'numpy',
    'opencv-python',
    'matplotlib',
    'scipy',
    'pyyaml',
    'rich',
    'tqdm',
    'regex',
    'einops',
    'pillow',
]
WHEELHOUSE_BUDGET_MIB = 60
MANIFEST = 'wheelhouse.json'


def find_interpreter(version: str) -> Path:
    """A CPython ``version`` (like '3.12') interpreter on this machine."""
    names = [f'python{version}']
    found = [shutil.which(n) for n in names]
    pyenv_root = Path(os.environ.get('PYENV_ROOT', Path.home() / '.pyenv'))
    found += sorted(
        str(p) for p in pyenv_root.glob(f'versions/{version}.*/bin/python{version}')
    )
    for candidate in filter(None, found):
        ok, out = probe(
            'import sys; print("%d.%d" % sys.version_info[:2])', python=candidate
        )
        if ok and out.splitlines()[-1] == version:
            return Path(candidate)
    sys.exit(
        f'--for-python {version}: no CPython {version} on this machine '
        f'(looked for python{version} on PATH and under '
        f'{pyenv_root}/versions); install one, e.g. '
        f'`pyenv install {version}`'
    )


def side_environment(python_version: str, torch_version: str) -> Path:
    """A virtual environment (in the cache) with that Python and torch, to
    build mmcv against; returns its interpreter."""
    name = f'cp{python_version.replace(".", "")}-torch{torch_version}'
    env_dir = CACHE_ROOT / 'envs' / name
    python = env_dir / 'bin' / 'python'
    check = (
        'import torch; assert torch.__version__.split("+")[0] == '
        f'"{torch_version}", torch.__version__; print(torch.__version__)'
    )
    if python.exists() and probe(check, python=str(python))[0]:
        log(f'side environment {env_dir} present')
        return python
    interpreter = find_interpreter(python_version)
    run([interpreter, '-m', 'venv', '--clear', env_dir])
    run(
        [
            python,
            '-m',
            'pip',
            '--disable-pip-version-check',
            'install',
            f'torch=={torch_version}',
            'numpy>=2',
            'setuptools<81',
            'wheel',
            'ninja',
            'packaging',
        ]
    )
    ok, out = probe(check, python=str(python))
    if not ok:
        sys.exit(f'torch {torch_version} does not import in {env_dir}:\n{out}')
    return python


def overlay_environment() -> Path:
    """A virtual environment (in the cache) that sees this environment's
    packages, its own first: --wheelhouse for this very Python and torch
    builds and tries mmcv there, so this environment's mmcv stays as it is.
    A .pth file adds this environment's site folders with
    ``site.addsitedir``, so that their own .pth files (editable installs)
    count too (``venv --system-site-packages`` would name the base
    interpreter's, not those of a virtual environment running this); returns
    its interpreter."""
    tag = '%d%d' % sys.version_info[:2]
    torch_version = (version_of('torch') or 'none').split('+')[0]
    env_dir = CACHE_ROOT / 'envs' / f'overlay-cp{tag}-torch{torch_version}'
    python = env_dir / 'bin' / 'python'
    if not python.exists():
        run([sys.executable, '-m', 'venv', '--clear', env_dir])
    ok, out = probe(
        'import sysconfig; print(sysconfig.get_path("purelib"))', python=str(python)
    )
    if not ok:
        sys.exit(f'the overlay environment {env_dir} does not run:\n{out}')
    parents = dict.fromkeys(
        sysconfig.get_path(k) for k in ('purelib', 'platlib')
    )  # ordered, without repeats
    Path(out.splitlines()[-1], 'nommer-overlay.pth').write_text(
        ''.join(f'import site; site.addsitedir({d!r})\n' for d in parents)
    )
    log(f'overlay environment {env_dir} over {", ".join(parents)}')
    return python


def closure(report: dict, roots: list[str]) -> set[str]:
    """Names (canonical) of ``roots`` and everything they require, within
    a ``pip install --report`` resolution."""
    Requirement = packaging('requirements').Requirement
    # markers are evaluated for the target interpreter, which pip records
    environment = dict(report.get('environment') or {}, extra='')
    requires = {}
    for item in report['install']:
        meta = item['metadata']
        deps = []
        for spec in meta.get('requires_dist') or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(environment):
                deps.append(canonical(req.name))
        requires[canonical(meta['name'])] = deps
    seen, todo = set(), [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name not in requires:
            continue
        seen.add(name)
        todo.extend(requires[name])
    return seen


def make_wheelhouse(
    dest: Path,
    python_version: str | None,
    torch_version: str | None,
    cuda_archs: list[str] | None,
    image_has: list[str],
    wheel_dirs: list[Path],
) -> None:
    here = '%d.%d' % sys.version_info[:2]
    this_torch = (version_of('torch') or '').split('+')[0]
    python_version = python_version or here
    torch_version = torch_version or this_torch
    if not torch_version:
        sys.exit(
            '--wheelhouse: no torch here; name the target one with --for-torch VERSION'
        )
    if python_version == here and torch_version == this_torch:
        python = overlay_environment()
    else:
        python = side_environment(python_version, torch_version)
    dest.mkdir(parents=True, exist_ok=True)
    # the old manifest goes with the old wheels: until the new one is
    # written, the folder is refused as unmade, not as a bad copy
    (dest / MANIFEST).unlink(missing_ok=True)
    for old in dest.glob('*.whl'):
        old.unlink()
    # 1. mmcv, built for (or found for) that interpreter and torch.
    cmd = [python, __file__, '--mmcv-into', dest]
    cmd += ['--pypi-cuda'] if PYPI_CUDA else []
    cmd += [a for d in wheel_dirs for a in ('--wheels', d)]
    if cuda_archs:
        cmd += ['--cuda-archs', ','.join(cuda_archs)]
    try:
        run(cmd)
    except subprocess.CalledProcessError as e:
        sys.exit(
            f'--wheelhouse: no mmcv for {python} (exit status {e.returncode}); '
            'the reason is printed above'
        )
    facts = json.loads((dest / 'mmcv-build.json').read_text())
    (dest / 'mmcv-build.json').unlink()
    # 2. Resolve the stack for that interpreter, mmcv from the folder.
    work = Path(tempfile.mkdtemp(prefix='wheelhouse-'))
    constraints = work / 'constraints.txt'
    constraints.write_text(f'torch=={torch_version}\nnumpy>=2\nmmcv=={MMCV_VERSION}\n')
    wanted = [
        f'mmcv=={MMCV_VERSION}',
        *(f'{n}=={v}' for n, v in OPENMMLAB_PINS.items()),
        *RUNTIME_EXTRAS,
        *image_has,
    ]
    report_file = work / 'report.json'
    run(
        [
            python,
            '-m',
            'pip',
            '--disable-pip-version-check',
            'install',
            '--dry-run',
            '--ignore-installed',
            '--quiet',
            '--report',
            report_file,
            '--find-links',
            dest,
            '--prefer-binary',
            '-c',
            constraints,
            *wanted,
        ]
    )
    report = json.loads(report_file.read_text())
    provided = closure(report, image_has)
    ours = [re.split(r'[=<>!~]', w)[0] for w in wanted if w not in image_has]
    needed = closure(report, ours) - provided
    # A version bound of ours is kept even where the image has the package
    # (torch requires setuptools, which may be >= 81, without pkg_resources).
    needed |= {
        canonical(re.split(r'[=<>!~]', w)[0])
        for w in RUNTIME_EXTRAS
        if re.search(r'[=<>!~]', w)
    }
    versions = {
        canonical(i['metadata']['name']): i['metadata']['version']
        for i in report['install']
    }
    fetch = sorted(f'{n}=={versions[n]}' for n in needed if n != 'mmcv')
    # 3. Wheels for that interpreter (pure-Python sdists are built).
    run(
        [
            python,
            '-m',
            'pip',
            '--disable-pip-version-check',
            'wheel',
            '--no-deps',
            '--prefer-binary',
            '-w',
            dest,
            *fetch,
        ]
    )
    wheels = sorted(dest.glob('*.whl'))
    total = sum(w.stat().st_size for w in wheels) / 2**20
    manifest = dict(
        python=python_version,
        torch=torch_version,
        cuda=facts['cuda'],
        cuda_archs=facts['archs'],
        mmcv_key=facts['key'],
        image_has=image_has,
        made_by='tools/install_deps.py --wheelhouse',
        wheels={w.name: sha256(w) for w in wheels},
    )
    # the manifest last, written beside and renamed: a making that was
    # stopped leaves no manifest, never half of one
    partial = dest / (MANIFEST + '.partial')
    partial.write_text(json.dumps(manifest, indent=1) + '\n')
    partial.replace(dest / MANIFEST)
    log(
        f'wheelhouse {dest}: {len(wheels)} wheels, {total:.1f} MiB, for '
        f'CPython {python_version} + torch {torch_version} '
        f'({facts["key"]}); the target must already have '
        f'{", ".join(image_has)}'
    )
    if total > WHEELHOUSE_BUDGET_MIB:
        biggest = sorted(wheels, key=lambda w: -w.stat().st_size)[:3]
        log(
            f'over the {WHEELHOUSE_BUDGET_MIB} MiB budget; largest: '
            + ', '.join(
                f'{w.name} ({w.stat().st_size / 2**20:.1f} MiB)' for w in biggest
            )
        )


def mmcv_into(dest: Path, wheel_dirs: list[Path], cuda_archs: list[str] | None) -> None:
    """(Run by --wheelhouse in the target's interpreter.) A working mmcv
    wheel for this interpreter into ``dest``."""
    situation = torch_situation(cuda_archs)
    known = [
        w
        for d in [*wheel_dirs, cache_dir(situation)]
        if d.is_dir()
        for w in candidate_wheels(d, situation)
    ]
    installed = next((w for w in known if installed_is(w)), None)
    if installed and mmcv_ok(situation)[0]:
        whl = installed  # already installed here and working
    else:
        pip(
            'install',
            '-c',
            str(hold_constraints()),
            'setuptools<81',
            'wheel',
            *MMCV_RUNTIME_REQUIREMENTS,
        )
        whl = working_wheel(wheel_dirs, situation)
    shutil.copy2(whl, dest / whl.name)
    (dest / 'mmcv-build.json').write_text(
        json.dumps(
            dict(cuda=situation['cuda'], archs=situation['archs'], key=situation['key'])
        )
    )


def externally_managed() -> bool:
    marker = Path(sysconfig.get_path('stdlib')) / 'EXTERNALLY-MANAGED'
    return marker.exists() and sys.prefix == sys.base_prefix


def install_offline(dest: Path, with_self: bool, break_system_packages: bool) -> None:
    """Install the stack from a wheelhouse alone, keeping this machine's
    torch, torchvision and numpy."""
    os.environ['PIP_NO_INDEX'] = '1'
    manifest_file = dest / MANIFEST
    if not manifest_file.exists():
        sys.exit(
            f'--wheelhouse {dest}: no {MANIFEST} there; make the '
            'folder with tools/install_deps.py --wheelhouse DIR '
            '[--for-python X.Y --for-torch VERSION] on a machine with '
            'network'
        )
    try:
        manifest = json.loads(manifest_file.read_text())
    except ValueError as e:
        sys.exit(
            f'--wheelhouse {dest}: {MANIFEST} is not readable JSON ({e}); '
            'copy the wheelhouse again, or make it again with '
            'tools/install_deps.py --wheelhouse DIR'
        )
    here = '%d.%d' % sys.version_info[:2]
    if manifest['python'] != here:
        sys.exit(
            f'--wheelhouse {dest} was made for CPython '
            f'{manifest["python"]}, this is {here}: make one with '
            f'--for-python {here}'
        )
    ok, out = probe('import torch; print(torch.__version__)')
    if not ok:
        sys.exit(
            f"--offline keeps the machine's torch, but torch does not "
            f'import here:\n{out}'
        )
    this_torch = out.splitlines()[-1].split('+')[0]
    if this_torch != manifest['torch']:
        sys.exit(
            f'--wheelhouse {dest} was made for torch '
            f'{manifest["torch"]}, this machine has {this_torch}: make '
            f'one with --for-torch {this_torch}'
        )
    wheels = []
    for name, digest in sorted(manifest['wheels'].items()):
        path = dest / name
        if not path.exists() or sha256(path) != digest:
            sys.exit(
                f'{path} is missing or differs from {MANIFEST}; '
                'copy the wheelhouse again'
            )
        wheels.append(str(path))
    options = ['--no-index']
    if externally_managed():
        if not break_system_packages:
            sys.exit(
                f'{sys.executable} is an externally managed (system) '
                'Python. Either use a virtual environment that sees '
                'its torch (python3 -m venv --system-site-packages '
                '.venv, then .venv/bin/python tools/install_deps.py '
                '...), or pass --break-system-packages'
            )
        options.append('--break-system-packages')
    log(
        f'installing {len(wheels)} wheels from {dest} (no index; torch '
        f"{this_torch} and the image's packages kept)"
    )
    pip('install', *options, '--no-deps', *wheels)
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'check'], capture_output=True, text=True
    )
    ours = {canonical(n.split('-')[0]) for n in manifest['wheels']}
    for line in proc.stdout.splitlines():
        # "mmdet 3.3.0 requires shapely, which is not installed."
        if line.split() and canonical(line.split()[0]) in ours:
            log(f'pip check: {line}')
    situation = torch_situation(manifest['cuda_archs'])
    ok, out = mmcv_ok(situation)
    if not ok:
        sys.exit(f'mmcv from the wheelhouse does not work here:\n{out}')
    log(out.splitlines()[-1])
    if with_self:
        install_self(*options)
    final_check()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2],
    )
    parser.add_argument(
        '--wheels',
        action='append',
        default=[],
        help='folder with prebuilt mmcv wheels (repeatable); '
        'NOMMER_MMCV_WHEELS (os.pathsep-separated) adds more',
    )
    parser.add_argument(
        '--cuda-archs',
        type=parse_archs,
        help="build mmcv's CUDA kernels for these compute "
        "capabilities, e.g. 8.0,9.0 (default: the GPU's own "
        'when one is present, else CPU ops only)',
    )
    parser.add_argument(
        '--pypi-cuda',
        action='store_true',
        help="build CUDA kernels with NVIDIA's PyPI nvcc "
        'packages even where a CUDA toolkit is installed',
    )
    parser.add_argument(
        '--no-self', action='store_true', help='do not pip install -e this repository'
    )
    parser.add_argument(
        '--wheelhouse',
        type=Path,
        metavar='DIR',
        help='fill DIR with the stack as wheels for an '
        'offline machine (with --offline: install from it)',
    )
    parser.add_argument(
        '--for-python',
        metavar='X.Y',
        help='--wheelhouse: the target CPython (default: this one)',
    )
    parser.add_argument(
        '--for-torch',
        metavar='VERSION',
        help="--wheelhouse: the target's torch (default: this one)",
    )
    parser.add_argument(
        '--image-has',
        nargs='+',
        default=IMAGE_HAS,
        metavar='NAME',
        help='--wheelhouse: distributions '
        'the target already has, left out with everything '
        f'they need (default: {" ".join(IMAGE_HAS)})',
    )
    parser.add_argument(
        '--offline', action='store_true', help='install from --wheelhouse DIR alone'
    )
    parser.add_argument(
        '--break-system-packages',
        action='store_true',
        help='--offline into a system Python marked externally managed',
    )
    parser.add_argument('--mmcv-into', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global PYPI_CUDA
    PYPI_CUDA = args.pypi_cuda
    wheel_dirs = [Path(p) for p in args.wheels]
    env_dirs = os.environ.get('NOMMER_MMCV_WHEELS', '')
    wheel_dirs += [Path(p) for p in env_dirs.split(os.pathsep) if p]
    if (args.for_python or args.for_torch or args.offline) and not args.wheelhouse:
        parser.error('--for-python, --for-torch and --offline go with --wheelhouse DIR')
    if args.for_python and not re.fullmatch(r'3\.\d+', args.for_python):
        parser.error(f'--for-python {args.for_python!r}: give X.Y, e.g. 3.12')

    if args.mmcv_into:
        mmcv_into(args.mmcv_into, wheel_dirs, args.cuda_archs)
    elif args.wheelhouse and args.offline:
        install_offline(args.wheelhouse, not args.no_self, args.break_system_packages)
    elif args.wheelhouse:
        make_wheelhouse(
            args.wheelhouse,
            args.for_python,
            args.for_torch,
            args.cuda_archs,
            args.image_has,
            wheel_dirs,
        )
    else:
        ensure_torch()
        ensure_mmcv(wheel_dirs, args.cuda_archs)
        ensure_rest(with_self=not args.no_self)
        final_check()


if __name__ == '__main__':
    main()
