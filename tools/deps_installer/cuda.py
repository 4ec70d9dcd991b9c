"""Python, torch and CUDA facts, and the CUDA toolkit that builds mmcv's
kernels: a toolkit on the machine, or (CUDA 13 and newer) one assembled
from NVIDIA's PyPI packages in the cache, a build-only location."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import common
from .common import log, pip, probe


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
    """``'9.0+PTX'`` -> ``'sm90-ptx'`` (as in cache keys)."""
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
# --pypi-cuda: use those packages even where a system toolkit exists (set by
# the command line).
PYPI_CUDA = False


def nvcc_version(nvcc: Path) -> str | None:
    """The CUDA release ``nvcc --version`` reports, None if it does not run."""
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


def toolchain_packages(cuda: str, root: Path) -> list[Path]:
    """NVIDIA's PyPI toolchain packages at CUDA version ``cuda``, each in a
    folder of its own under ``root``; returns their ``nvidia/cuXY`` folders."""
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
    return pkgs


def cuda_home_from_pypi(cuda: str, site_packages: str) -> Path:
    """Assemble a CUDA_HOME of symlinks from NVIDIA's PyPI packages (in the
    cache) and the CUDA runtime that torch's wheels installed."""
    root = common.CACHE_ROOT / 'cuda' / cuda
    major = cuda.split('.')[0]
    pkgs = toolchain_packages(cuda, root)
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
