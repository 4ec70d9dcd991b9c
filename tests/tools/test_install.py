import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

# tools/ is on sys.path (tests/conftest.py): the installer's steps, as
# tools/install_deps.py imports them
from deps_installer import common, cuda, mmcv, wheelhouse

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_installer_is_a_no_op_on_a_working_stack():
    """The test run itself needs the stack, so it is installed: a second
    run of the installer must find everything and install nothing."""
    env = dict(os.environ, PIP_NO_INDEX='1')  # any install attempt fails
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/install_deps.py')],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ' pip ' not in proc.stdout, proc.stdout
    assert 'mmcv present' in proc.stdout
    assert 'stack: 0.10.7 2.1.0 3.3.0 1.2.2 1.2.0' in proc.stdout


def test_mmcv_ops_work():
    from mmcv.ops import RoIAlign, nms
    import torch

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    # RoIAlign of a linear ramp: bilinear sampling reproduces it, so every
    # bin holds the ramp's value at the bin centre
    feat = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()
    rois = torch.tensor([[0.0, 2.0, 2.0, 10.0, 10.0]])  # image 0, x1 y1 x2 y2
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(
        feat, rois
    )
    # aligned: the box shifts by -0.5 into pixel-index coordinates, [1.5,
    # 9.5]; bin centres 3.5 and 7.5, where the ramp (value = column) is 3.5
    # and 7.5
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], torch.tensor([[3.5, 7.5], [3.5, 7.5]]))


# ------------------------------------------------ CUDA builds, wheelhouse
def test_the_command_loads_as_a_module():
    """tools/install_deps.py imports without running (as tests' load_tool
    does) and without torch, through its steps' modules."""
    from cls_helpers import load_tool

    inst = load_tool('tools/install_deps.py')
    assert inst.cuda is cuda and inst.mmcv is mmcv and inst.wheelhouse is wheelhouse
    assert callable(inst.main)
    # in a fresh interpreter: importing the command and its steps loads
    # neither torch nor anything of the stack it installs
    code = (
        'import sys; sys.path.insert(0, "tools"); import install_deps; '
        'print(sorted({m.split(".")[0] for m in sys.modules} '
        '& {"torch", "torchvision", "numpy", "mmcv", "mmengine"}))'
    )
    proc = subprocess.run(
        [sys.executable, '-c', code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['[]'], proc.stdout


def _fake_package(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / '.complete').write_text('fake\n')


def test_cuda_home_is_assembled_from_pypi_packages(tmp_path, monkeypatch):
    """The build-only CUDA_HOME: nvcc copied (it finds its profile and
    cicc beside itself), the toolchain's headers before torch's, CCCL's
    thrust/cub/nv on the include path, lib64/libcudart.so, and the
    targets/ folder nvcc.profile reads."""
    monkeypatch.setattr(common, 'CACHE_ROOT', tmp_path / 'cache')
    pkgs = tmp_path / 'cache' / 'cuda' / '13.0' / 'pkgs'
    nvcc = '#!/bin/sh\necho "Cuda compilation tools, release 13.0, V13.0.88"\n'
    _fake_package(
        pkgs / 'nvidia-cuda-nvcc',
        {
            'nvidia/cu13/bin/nvcc': nvcc,
            'nvidia/cu13/bin/nvcc.profile': 'TOP = $(_HERE_)/..\n',
            'nvidia/cu13/include/fatbinary_section.h': 'toolchain',
        },
    )
    (pkgs / 'nvidia-cuda-nvcc/nvidia/cu13/bin/nvcc').chmod(0o755)
    _fake_package(
        pkgs / 'nvidia-cuda-crt', {'nvidia/cu13/include/crt/host_config.h': ''}
    )
    _fake_package(
        pkgs / 'nvidia-nvvm',
        {'nvidia/cu13/nvvm/bin/cicc': '', 'nvidia/cu13/lib/libnvvm.so.4': ''},
    )
    _fake_package(
        pkgs / 'nvidia-cuda-cccl',
        {
            'nvidia/cu13/include/cccl/thrust/version.h': '13.0',
            'nvidia/cu13/include/cccl/cub/cub.cuh': '',
            'nvidia/cu13/include/nv/target': '',
        },
    )
    _fake_package(pkgs / 'nvidia-cuda-cuobjdump', {'nvidia/cu13/bin/cuobjdump': ''})
    site = tmp_path / 'site'
    _fake_package(
        site,
        {
            'nvidia/cu13/include/cuda_runtime.h': '',
            'nvidia/cu13/include/fatbinary_section.h': 'torch',
            'nvidia/cu13/include/cccl/thrust/version.h': '13.2 (torch)',
            'nvidia/cu13/lib/libcudart.so.13': '',
        },
    )
    home = cuda.cuda_home_from_pypi('13.0', str(site))
    assert not (home / 'bin' / 'nvcc').is_symlink()
    assert cuda.nvcc_version(home / 'bin' / 'nvcc') == '13.0'
    assert (home / 'bin' / 'nvcc.profile').exists()
    assert (home / 'bin' / 'cuobjdump').exists()
    assert (home / 'nvvm' / 'bin' / 'cicc').exists()
    # first source wins: the toolchain's CCCL, not torch's newer copy
    assert (home / 'include/fatbinary_section.h').read_text() == 'toolchain'
    assert (home / 'include/thrust/version.h').read_text() == '13.0'
    assert (home / 'include/cccl/thrust/version.h').read_text() == '13.0'
    for rel in (
        'include/cuda_runtime.h',
        'include/crt/host_config.h',
        'include/cub/cub.cuh',
        'include/nv/target',
        'lib64/libnvvm.so.4',
        'targets/x86_64-linux/include/cuda_runtime.h',
        'targets/x86_64-linux/lib/libcudart.so',
    ):
        assert (home / rel).exists(), rel
    assert os.readlink(home / 'lib64/libcudart.so') == 'libcudart.so.13'
    # nothing of it went into this environment
    assert not list(
        Path(sys.prefix).glob('lib/python*/site-packages/nvidia_cuda_nvcc*')
    )


@pytest.mark.slow
def test_a_bad_cuda_arch_stops_the_command():
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/install_deps.py'), '--cuda-archs', '9'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--cuda-archs '9': '9' is not a compute capability" in proc.stderr


def test_cuda_arch_and_source_patch_errors(tmp_path):
    assert cuda.parse_archs('8.0, 9.0') == ['8.0', '9.0']
    assert cuda.arch_tag('9.0+PTX') == 'sm90-ptx'
    # C++20 for torch >= 2.10 (a nightly of 2.10 too); older torch keeps the
    # source's own standard (CUDA 11's nvcc has no C++20)
    setup = tmp_path / 'setup.py'
    source = "{'nvcc': ['-std=c++14'], 'cxx': ['-std=c++17']}"
    for torch_version, expected in [
        ('2.15.0', "{'nvcc': ['-std=c++20'], 'cxx': ['-std=c++20']}"),
        ('2.10.0a0', "{'nvcc': ['-std=c++20'], 'cxx': ['-std=c++20']}"),
        ('2.9.1', source),
        ('2.1.2', source),
    ]:
        setup.write_text(source)
        mmcv.patch_sources(tmp_path, torch_version)
        assert setup.read_text() == expected, torch_version
    # a source the patches no longer match stops the build, naming it
    setup.write_text("extra_compile_args = ['-std=c++20']")
    with pytest.raises(SystemExit, match='no longer applies to setup.py'):
        mmcv.patch_sources(tmp_path, '2.15.0')


def _held_site(target: Path, roots: list[str]) -> None:
    """Symlinks to this environment's installed ``roots`` and everything
    they require: the 'image' a fresh virtual environment sees (this
    environment's own torch, numpy ..., not copies)."""
    import importlib.metadata as md

    todo, seen = list(roots), set()
    while todo:
        name = re.sub(r'[-_.]+', '-', todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            if 'extra ==' not in req:
                todo.append(re.split(r'[ ;<>=!~\[(]', req, maxsplit=1)[0])
        base = Path(dist.locate_file(''))
        for f in dist.files or []:
            top = f.parts[0]
            if top.endswith('.pth') or top == '..' or top == '__pycache__':
                continue
            link = target / top
            if not link.exists() and (base / top).exists():
                link.symlink_to(base / top)


def _fake_toolkit(root: Path, version: str) -> Path:
    """A folder that looks like a CUDA toolkit: headers and an nvcc that
    reports ``version``."""
    (root / 'include').mkdir(parents=True)
    (root / 'include' / 'cuda_runtime.h').write_text('')
    (root / 'bin').mkdir()
    nvcc = root / 'bin' / 'nvcc'
    nvcc.write_text(
        f'#!/bin/sh\necho "Cuda compilation tools, release {version}, V{version}.1"\n'
    )
    nvcc.chmod(0o755)
    return root


def test_cuda_12_needs_a_toolkit_of_its_own(tmp_path, monkeypatch):
    """NVIDIA's PyPI nvcc packages before CUDA 13 hold no compiler, so a
    torch built for CUDA 12 or 11 builds its kernels with a toolkit of the
    same major version on the machine (the exact version first) or stops
    before the source is fetched, naming the toolkits found and what to do."""
    monkeypatch.setattr(cuda, 'PYPI_CUDA', False)
    monkeypatch.setenv('PATH', '/usr/bin:/bin')  # no nvcc on PATH
    monkeypatch.delenv('CUDA_PATH', raising=False)
    monkeypatch.setattr(
        cuda, 'cuda_home_from_pypi', lambda *a: pytest.fail('no PyPI nvcc for 12')
    )
    exact = _fake_toolkit(tmp_path / 'cuda-12.8', '12.8')
    near = _fake_toolkit(tmp_path / 'cuda-12.4', '12.4')
    situation = dict(cuda='12.8', torch='2.8.0', archs=['9.0'], site_packages='')
    for home, expected in [(exact, exact), (near, near)]:
        monkeypatch.setenv('CUDA_HOME', str(home))
        assert cuda.cuda_home_for(situation) == expected
    monkeypatch.setenv('CUDA_HOME', str(near))
    with pytest.raises(SystemExit) as stop:
        cuda.cuda_home_for(dict(situation, cuda='11.8', torch='2.1.2'))
    message = str(stop.value)
    assert 'torch 2.1.2 is built for CUDA 11.8' in message
    assert f'{near} (nvcc 12.4)' in message
    assert 'nvidia-cuda-nvcc-cu11 holds ptxas but no nvcc' in message
    assert 'module load cuda/11.8' in message
    # --pypi-cuda cannot help there either
    monkeypatch.setattr(cuda, 'PYPI_CUDA', True)
    with pytest.raises(SystemExit, match='from CUDA 13 on only'):
        cuda.cuda_home_for(situation)


@pytest.mark.slow
def test_offline_install_from_a_wheelhouse_into_a_fresh_venv(tmp_path):
    """--wheelhouse for this Python and torch, then --offline into a new virtual
    environment that has only the 'image' (this environment's torch, numpy,
    opencv ...) and no index (PIP_NO_INDEX=1)."""
    house = tmp_path / 'house'
    env = dict(os.environ)
    situation = cuda.torch_situation()
    folders = [
        Path(p) for p in env.get('NOMMER_MMCV_WHEELS', '').split(os.pathsep) if p
    ] + [mmcv.cache_dir(situation)]
    if not any(f.is_dir() and mmcv.candidate_wheels(f, situation) for f in folders):
        pytest.skip(
            'no prebuilt mmcv wheel for this Python and torch (set '
            'NOMMER_MMCV_WHEELS): the wheelhouse would build mmcv'
        )
    ext = 'import mmcv._ext as e; print(e.__file__)'
    mmcv_ext = Path(
        subprocess.check_output(
            [sys.executable, '-c', ext], text=True, cwd=tmp_path, timeout=120
        ).split()[-1]
    )
    before = common.sha256(mmcv_ext)
    make = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'tools/install_deps.py'),
            '--wheelhouse',
            str(house),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    # mmcv is found or built in an overlay environment: this one's stays
    assert 'overlay-cp' in make.stdout + make.stderr
    assert '--mmcv-into' in make.stdout + make.stderr
    assert common.sha256(mmcv_ext) == before
    manifest = json.loads((house / 'wheelhouse.json').read_text())
    names = {
        re.sub(r'[-_.]+', '-', n.split('-')[0]).lower() for n in manifest['wheels']
    }
    assert {
        'mmcv',
        'mmengine',
        'mmdet',
        'mmsegmentation',
        'mmpretrain',
        'pycocotools',
        'shapely',
        'ftfy',
        'setuptools',
    } <= names
    assert not names & {
        'torch',
        'torchvision',
        'numpy',
        'opencv-python',
        'matplotlib',
        'scipy',
    }, names
    # the log reports the wheels the manifest names, and their size
    size = sum((house / n).stat().st_size for n in manifest['wheels'])
    report = f'{len(manifest["wheels"])} wheels, {size / 2**20:.1f} MiB'
    assert report in make.stdout, make.stdout[-3000:]

    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
    site = next(venv.glob('lib/python*/site-packages'))
    held = tmp_path / 'image'
    held.mkdir()
    _held_site(held, wheelhouse.IMAGE_HAS)
    (site / 'image.pth').write_text(str(held) + '\n')
    py = str(venv / 'bin' / 'python')
    offline = dict(
        env,
        PIP_NO_INDEX='1',
        PIP_FIND_LINKS='',
        XDG_CACHE_HOME=str(tmp_path / 'no-cache'),
    )
    offline.pop('NOMMER_MMCV_WHEELS', None)

    def install_offline():
        return subprocess.run(
            [py, str(ROOT / 'tools/install_deps.py'), '--wheelhouse', str(house)]
            + ['--offline'],
            capture_output=True,
            text=True,
            env=offline,
            timeout=900,
        )

    proc = install_offline()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'stack: 0.10.7 2.1.0 3.3.0 1.2.2 1.2.0' in out
    assert 'ops OK' in out
    check = subprocess.run(
        [
            py,
            '-c',
            'import torch, numpy, mmcv, nommer_mm, sys; '
            'print(torch.__file__, numpy.__version__, sys.prefix)',
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr
    torch_file, numpy_version, prefix = check.stdout.split()
    assert torch_file.startswith(str(held))  # the image's own torch
    assert numpy_version.startswith('2.')
    assert prefix == str(venv)
    # a wheelhouse for another torch is refused before anything installs
    manifest['torch'] = '2.11.0'
    (house / 'wheelhouse.json').write_text(json.dumps(manifest))
    proc = install_offline()
    assert proc.returncode != 0
    assert 'was made for torch 2.11.0' in proc.stderr
    assert '--for-torch' in proc.stderr
    # and so is one whose manifest was cut short, with the file named
    text = json.dumps(manifest)
    (house / 'wheelhouse.json').write_text(text[: len(text) // 2])
    proc = install_offline()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'wheelhouse.json is not readable JSON' in proc.stderr
    assert 'Traceback' not in proc.stderr
    # a making stopped as it begins (its old wheels gone) takes the old
    # manifest with it: the folder is refused as unmade, not as a bad copy
    (house / 'wheelhouse.json').write_text(json.dumps(manifest))
    stale = house / 'stale-0.0-py3-none-any.whl'
    stale.write_bytes(b'')
    remake = subprocess.Popen(
        [sys.executable, str(ROOT / 'tools/install_deps.py'), '--wheelhouse']
        + [str(house)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while stale.exists() and remake.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(remake.pid, 9)
    remake.wait(timeout=60)
    assert not stale.exists()
    assert not (house / 'wheelhouse.json').exists()
    proc = install_offline()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'no wheelhouse.json there; make the folder' in proc.stderr
    shutil.rmtree(venv)


@pytest.mark.slow
def test_overlay_environment_sees_this_one_after_its_own(tmp_path, monkeypatch):
    """The overlay venv (where --wheelhouse tries mmcv for this Python and
    torch) imports this environment's packages, editable installs included
    (their .pth files are processed), and its own site folder comes first,
    so that what is installed there shadows this environment's copy."""
    monkeypatch.setattr(common, 'CACHE_ROOT', tmp_path / 'cache')
    python = wheelhouse.overlay_environment()
    assert python.is_relative_to(tmp_path / 'cache' / 'envs')
    proc = subprocess.run(
        [
            str(python),
            '-c',
            'import sys, sysconfig, nommer_mm, torch; '
            'print(sys.prefix); print(sysconfig.get_path("purelib")); '
            'print(nommer_mm.__file__); print(torch.__file__); '
            'print("\\n".join(sys.path))',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repository: nommer_mm must come from its install
    )
    assert proc.returncode == 0, proc.stderr
    prefix, own_site, nommer_file, torch_file, *path = proc.stdout.splitlines()
    assert Path(prefix).is_relative_to(tmp_path)
    assert Path(nommer_file).is_relative_to(ROOT)
    assert Path(torch_file).is_relative_to(sysconfig.get_path('platlib'))
    assert path.index(own_site) < path.index(sysconfig.get_path('purelib'))


def test_wheelhouse_closure_reads_markers_for_the_target_python():
    """What the image provides and what the stack needs are computed for the
    target interpreter (pip's report records its marker environment), not
    for the Python running the installer."""
    env = dict(
        python_version='3.12',
        python_full_version='3.12.3',
        sys_platform='linux',
        platform_machine='x86_64',
        os_name='posix',
        platform_system='Linux',
        implementation_name='cpython',
        platform_python_implementation='CPython',
    )
    report = {
        'environment': env,
        'install': [
            {
                'metadata': {
                    'name': 'torch',
                    'requires_dist': [
                        'setuptools; python_version >= "3.12"',
                        'filelock',
                        'opt-einsum; extra == "opt-einsum"',
                    ],
                }
            },
            {'metadata': {'name': 'setuptools'}},
            {'metadata': {'name': 'filelock'}},
            {'metadata': {'name': 'opt_einsum'}},
        ],
    }
    assert wheelhouse.closure(report, ['torch']) == {'torch', 'setuptools', 'filelock'}
    env['python_version'] = '3.11'
    assert wheelhouse.closure(report, ['Torch']) == {'torch', 'filelock'}


@pytest.mark.slow
def test_package_works_from_a_wheel_outside_the_repository(tmp_path):
    """``nommer_mm`` installed from its wheel (not editable) and run from
    another directory: it reads nothing of the repository (configs, tools).
    The wheel holds only the package; the three codebases find the
    backbones through the registry."""
    import zipfile

    # built from a copy: setuptools writes build/ and *.egg-info beside
    # setup.py, which must not land in the checkout
    src = tmp_path / 'src'
    shutil.copytree(
        ROOT / 'nommer_mm',
        src / 'nommer_mm',
        ignore=shutil.ignore_patterns('__pycache__'),
    )
    for name in ('setup.py', 'README.md'):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / 'dist'
    subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation']
        + ['-q', '-w', dist, src],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob('nommer_mm-*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith(('configs/', 'tools/', 'tests/'))]
    target = tmp_path / 'site'
    subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-deps', '-q']
        + ['--target', target, wheel],
        check=True,
        capture_output=True,
        timeout=600,
    )
    code = """
import torch, nommer_mm
from mmengine.registry import init_default_scope
from nommer_mm.converters import convert_reference
print(nommer_mm.__file__)
for scope in ('mmpretrain', 'mmdet', 'mmseg'):
    init_default_scope(scope)
    reg = __import__(scope + '.registry', fromlist=['MODELS']).MODELS
    for name in ('NomMer', 'GCViT', 'Visformer', 'CoTNet'):
        assert reg.get(name) is not None, (scope, name)
model = reg.build(dict(type='NomMer', arch=dict(embed_dims=32, depths=[1, 1, 1, 1],
    num_heads=[2, 2, 2, 4], bottleneck_ratios=[2, 2]))).eval()
with torch.no_grad():
    print([tuple(o.shape) for o in model(torch.randn(1, 3, 64, 64))])
"""
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run(
        [sys.executable, '-c', code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, shapes = proc.stdout.strip().splitlines()[-2:]
    assert first.startswith(str(target)), first
    assert shapes == '[(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]'
