"""mmcv with compiled ops: found in a wheel folder or the build cache, or
built from its PyPI source (patched where newer torch needs it), cached,
and each candidate verified by running its ops (and, for a fresh CUDA
build, by listing the kernels it holds)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from . import common, cuda, pins
from .common import canonical, log, packaging, pip, probe, run, sha256

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

# Edits to the mmcv source, each with its reason: (file, pattern,
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


# ---------------------------------------------------------- verification
def mmcv_ok(situation: dict) -> tuple[bool, str]:
    """Whether the installed mmcv is the pinned one and its ops run (its
    CUDA ops too where ``situation`` wants them), with the probe's output."""
    return probe(
        MMCV_CHECK.format(ver=pins.MMCV_VERSION, need_cuda=situation['want_cuda_ops'])
    )


def verify_sha256(whl: Path) -> None:
    """Raise RuntimeError if a SHA256SUMS beside ``whl`` names another digest."""
    sums = whl.parent / 'SHA256SUMS'
    if not sums.exists():
        return
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == whl.name:
            if sha256(whl) != parts[0]:
                raise RuntimeError(f'{whl} does not match SHA256SUMS')


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


def check_kernels(whl: Path, cuda_home: Path, archs: list[str]) -> None:
    """Stop if the built wheel lacks a kernel for one of ``archs``."""
    found = kernel_archs(whl, cuda_home)
    wanted = sorted(cuda.arch_tag(a).replace('sm', 'sm_').split('-')[0] for a in archs)
    log(f'cuobjdump --list-elf on mmcv/_ext: {found}')
    if found is not None and not set(wanted) <= set(found):
        sys.exit(f'the build lacks kernels for {wanted}: it has {found}')


# ------------------------------------------------- wheel folders, cache
def cache_dir(situation: dict) -> Path:
    """The build cache's folder for this stack's mmcv (``mmcv`` or
    ``onedl-mmcv``), Python, torch, CUDA and archs."""
    return common.CACHE_ROOT / pins.MMCV_DIST / situation['key']


def candidate_wheels(folder: Path, situation: dict) -> list[Path]:
    """Wheels of the stack's pinned mmcv in ``folder`` whose tags fit this
    interpreter."""
    sys_tags = packaging('tags').sys_tags
    parse_wheel_filename = packaging('utils').parse_wheel_filename
    supported = set(sys_tags())
    found = []
    for whl in sorted(folder.glob('*.whl')):
        try:
            name, ver, _, tags = parse_wheel_filename(whl.name)
        except Exception:  # not a well-formed wheel name: not ours to judge
            continue
        if (
            canonical(name) == pins.MMCV_DIST
            and str(ver) == pins.MMCV_VERSION
            and tags & supported
        ):
            found.append(whl)
    return found


def try_wheel(whl: Path, situation: dict) -> bool:
    """Install ``whl`` and keep it if its ops work here; else uninstall it."""
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
        pip('uninstall', '-y', pins.MMCV_DIST)
    return ok


# ----------------------------------------------------------------- build
def patch_sources(src: Path, torch_version: str) -> None:
    """Apply SOURCE_PATCHES that ``torch_version`` needs to the source tree
    ``src``; stop if one no longer matches."""

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


def fetch_source(work: Path) -> Path:
    """The stack's pinned mmcv source distribution, unpacked under
    ``work``."""
    # pkg_resources is gone from setuptools >= 81; mmcv's setup.py needs it.
    pip('install', 'setuptools<81', 'wheel', 'ninja', 'packaging')
    # No build isolation here either: an isolated setup.py run would get
    # the newest setuptools, without pkg_resources.
    pip(
        'download',
        '--no-deps',
        '--no-build-isolation',
        '--no-binary',
        ':all:',
        f'{pins.MMCV_DIST}=={pins.MMCV_VERSION}',
        '-d',
        str(work),
    )
    sdist = next(work.glob('*.tar.gz'))
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter='data')
    return next(p for p in work.iterdir() if p.is_dir())


def build_env(situation: dict, cuda_home: Path | None) -> dict[str, str]:
    """The environment of the build: ops on, CUDA kernels for the asked
    architectures with ``cuda_home``'s nvcc, or none."""
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
    return env


def build_mmcv(situation: dict) -> Path:
    """Build mmcv from the PyPI source distribution; return the wheel."""
    kernels = (
        f'CUDA {situation["cuda"]} kernels for {",".join(situation["archs"])}'
        if situation['archs']
        else 'CPU ops only'
    )
    # The toolkit first: a machine that cannot compile the kernels is told
    # so before the source is fetched.
    cuda_home = cuda.cuda_home_for(situation) if situation['archs'] else None
    log(
        f'building {pins.MMCV_DIST} {pins.MMCV_VERSION} from source with {kernels} on '
        f'{os.cpu_count()} cores (a long compile: tens of minutes on a few '
        'cores, more for each CUDA architecture)'
    )
    work = Path(tempfile.mkdtemp(prefix='mmcv-build-'))
    src = fetch_source(work)
    patch_sources(src, situation['torch'])
    out_dir = work / 'dist'
    start = time.time()
    run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-build-isolation', '--no-deps']
        + ['-w', str(out_dir), str(src)],
        env=build_env(situation, cuda_home),
    )
    whl = next(out_dir.glob('*.whl'))
    log(
        f'built {whl.name} in {(time.time() - start) / 60:.1f} min on '
        f'{os.cpu_count()} cores ({kernels}), '
        f'{whl.stat().st_size / 2**20:.1f} MiB'
    )
    if cuda_home:
        check_kernels(whl, cuda_home, situation['archs'])
    return whl


# ------------------------------------------------------------ the steps
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


def ensure_mmcv(wheel_dirs: list[Path], cuda_archs: list[str] | None) -> None:
    """Keep a working mmcv of the pin, else install the first that works."""
    situation = cuda.torch_situation(cuda_archs)
    ok, out = mmcv_ok(situation)
    # An explicit --cuda-archs asks for a build for those architectures: the
    # installed mmcv counts only if it is the cached build for them.
    if ok and (
        cuda_archs is None
        or any(installed_is(whl) for whl in cache_dir(situation).glob('*.whl'))
    ):
        log(f'mmcv present: {out.splitlines()[-1]}')
        return
    log(f'{pins.MMCV_DIST} {pins.MMCV_VERSION} with ops for {situation["key"]} wanted')
    pip('install', '-c', str(pins.hold_constraints()), *pins.MMCV_RUNTIME_REQUIREMENTS)
    working_wheel(wheel_dirs, situation)


def mmcv_into(dest: Path, wheel_dirs: list[Path], cuda_archs: list[str] | None) -> None:
    """(Run by --wheelhouse in the target's interpreter.) A working mmcv
    wheel for this interpreter into ``dest``, with the facts of its build
    in ``dest/mmcv-build.json``."""
    situation = cuda.torch_situation(cuda_archs)
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
            str(pins.hold_constraints()),
            'setuptools<81',
            'wheel',
            *pins.MMCV_RUNTIME_REQUIREMENTS,
        )
        whl = working_wheel(wheel_dirs, situation)
    shutil.copy2(whl, dest / whl.name)
    (dest / 'mmcv-build.json').write_text(
        json.dumps(
            dict(cuda=situation['cuda'], archs=situation['archs'], key=situation['key'])
        )
    )
