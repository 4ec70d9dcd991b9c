"""A wheelhouse: the stack as wheels for an offline machine whose image
already has torch and the common scientific packages, and the install from
it (no index, the machine's torch kept)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from . import common, cuda, pins
from .common import canonical, log, packaging, pip, probe, run, sha256
from .mmcv import mmcv_ok

# What the target image is assumed to ship (with everything these need):
# the stack of the common CUDA images (NGC PyTorch). The wheelhouse holds
# the rest of the stack's closure. numpy 2 is asked for, so compiled wheels
# that support it are chosen.
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
MANIFEST = 'wheelhouse.json'


# ------------------------------------------------- build interpreters
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
    env_dir = common.CACHE_ROOT / 'envs' / name
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
    torch_version = (pins.version_of('torch') or 'none').split('+')[0]
    env_dir = common.CACHE_ROOT / 'envs' / f'overlay-cp{tag}-torch{torch_version}'
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


# ----------------------------------------------------------- making
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


def mmcv_wheel_into(
    dest: Path, python: Path, cuda_archs: list[str] | None, wheel_dirs: list[Path]
) -> dict:
    """A working mmcv wheel for interpreter ``python`` into ``dest`` (found
    or built by the installer run in that interpreter); returns its build's
    facts (CUDA version, architectures, cache key)."""
    cmd = [python, common.SCRIPT, '--stack', pins.STACK, '--mmcv-into', dest]
    cmd += ['--pypi-cuda'] if cuda.PYPI_CUDA else []
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
    return facts


def wheels_to_fetch(
    python: Path, dest: Path, torch_version: str, image_has: list[str]
) -> list[str]:
    """The stack resolved for interpreter ``python`` (mmcv from ``dest``):
    ``name==version`` of each distribution it needs beyond ``image_has`` and
    what those need, mmcv left out."""
    work = Path(tempfile.mkdtemp(prefix='wheelhouse-'))
    constraints = work / 'constraints.txt'
    mmcv_pin = f'{pins.MMCV_DIST}=={pins.MMCV_VERSION}'
    constraints.write_text(f'torch=={torch_version}\nnumpy>=2\n{mmcv_pin}\n')
    wanted = [
        mmcv_pin,
        *(f'{n}=={v}' for n, v in pins.OPENMMLAB_PINS.items()),
        *pins.RUNTIME_EXTRAS,
        *image_has,
    ]
    report_file = work / 'report.json'
    run(
        [python, '-m', 'pip', '--disable-pip-version-check', 'install', '--dry-run']
        + ['--ignore-installed', '--quiet', '--report', report_file]
        + ['--find-links', dest, '--prefer-binary', '-c', constraints, *wanted]
    )
    report = json.loads(report_file.read_text())
    provided = closure(report, image_has)
    ours = [re.split(r'[=<>!~]', w)[0] for w in wanted if w not in image_has]
    needed = closure(report, ours) - provided
    # A version bound of ours is kept even where the image has the package
    # (torch requires setuptools, which may be >= 81, without pkg_resources).
    needed |= {
        canonical(re.split(r'[=<>!~]', w)[0])
        for w in pins.RUNTIME_EXTRAS
        if re.search(r'[=<>!~]', w)
    }
    versions = {
        canonical(i['metadata']['name']): i['metadata']['version']
        for i in report['install']
    }
    mmcv = canonical(pins.MMCV_DIST)
    return sorted(f'{n}=={versions[n]}' for n in needed if n != mmcv)


def make_wheelhouse(
    dest: Path,
    python_version: str | None,
    torch_version: str | None,
    cuda_archs: list[str] | None,
    image_has: list[str],
    wheel_dirs: list[Path],
) -> None:
    """Fill ``dest`` with the stack as wheels for CPython ``python_version``
    and torch ``torch_version`` (default: this one's), less ``image_has``,
    and a manifest of their digests."""
    here = '%d.%d' % sys.version_info[:2]
    this_torch = (pins.version_of('torch') or '').split('+')[0]
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
    facts = mmcv_wheel_into(dest, python, cuda_archs, wheel_dirs)
    fetch = wheels_to_fetch(python, dest, torch_version, image_has)
    # Wheels for that interpreter (pure-Python sdists are built).
    run(
        [python, '-m', 'pip', '--disable-pip-version-check', 'wheel', '--no-deps']
        + ['--prefer-binary', '-w', dest, *fetch]
    )
    wheels = sorted(dest.glob('*.whl'))
    total = sum(w.stat().st_size for w in wheels) / 2**20
    manifest = dict(
        stack=pins.STACK,
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


# ------------------------------------------------------ installing from it
def read_manifest(dest: Path) -> tuple[dict, str]:
    """The wheelhouse's manifest and this machine's torch version; stops
    unless the wheelhouse was made for this Python and torch."""
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
    return manifest, this_torch


def install_offline(
    dest: Path,
    with_self: bool,
    break_system_packages: bool,
    stack: str | None = None,
) -> None:
    """Install the stack from a wheelhouse alone, keeping this machine's
    torch, torchvision and numpy. ``stack``, when given, must be the
    wheelhouse's."""
    os.environ['PIP_NO_INDEX'] = '1'
    manifest, this_torch = read_manifest(dest)
    # a wheelhouse without a stack was made for the upstream one
    made_for = manifest.get('stack', 'upstream')
    if stack and stack != made_for:
        sys.exit(
            f'--stack {stack}: the wheelhouse {dest} holds the {made_for} '
            f'stack; make one with --wheelhouse DIR --stack {stack}'
        )
    pins.use_stack(made_for)
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
    if pins.externally_managed():
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
    pins.remove_other_stack(*options[1:])  # not --no-index: pip uninstall
    pip('install', *options, '--no-deps', *wheels)
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'check'], capture_output=True, text=True
    )
    ours = {canonical(n.split('-')[0]) for n in manifest['wheels']}
    for line in proc.stdout.splitlines():
        # "mmdet 3.3.0 requires shapely, which is not installed."
        if line.split() and canonical(line.split()[0]) in ours:
            log(f'pip check: {line}')
    ok, out = mmcv_ok(cuda.torch_situation(manifest['cuda_archs']))
    if not ok:
        sys.exit(f'mmcv from the wheelhouse does not work here:\n{out}')
    log(out.splitlines()[-1])
    if with_self:
        pins.install_self(*options)
    pins.final_check()
