import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_installer_is_a_no_op_on_a_working_stack():
    """The test run itself needs the stack, so it is installed: a second
    run of the installer must find everything and install nothing."""
    env = dict(os.environ, PIP_NO_INDEX='1')  # any install attempt fails
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/install_deps.py')],
        capture_output=True,
        text=True,
        env=env,
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
import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402


def _installer():
    from cls_helpers import load_tool

    return load_tool('tools/install_deps.py')


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
    inst = _installer()
    monkeypatch.setattr(inst, 'CACHE_ROOT', tmp_path / 'cache')
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
    home = inst.cuda_home_from_pypi('13.0', str(site))
    assert not (home / 'bin' / 'nvcc').is_symlink()
    assert inst.nvcc_version(home / 'bin' / 'nvcc') == '13.0'
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


def test_cuda_arch_and_source_patch_errors(tmp_path):
    inst = _installer()
    assert inst.parse_archs('8.0, 9.0') == ['8.0', '9.0']
    assert inst.arch_tag('9.0+PTX') == 'sm90-ptx'
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/install_deps.py'), '--cuda-archs', '9'],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "--cuda-archs '9': '9' is not a compute capability" in proc.stderr
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
        inst.patch_sources(tmp_path, torch_version)
        assert setup.read_text() == expected, torch_version
    # a source the patches no longer match stops the build, naming it
    setup.write_text("extra_compile_args = ['-std=c++20']")
    with pytest.raises(SystemExit, match='no longer applies to setup.py'):
        inst.patch_sources(tmp_path, '2.15.0')


def _held_site(target: Path, roots: list[str]) -> None:
    """Symlinks to this environment's installed ``roots`` and everything
    they require: the 'image' a fresh virtual environment sees (this
    machine's own torch, numpy ..., not copies)."""
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
    inst = _installer()
    monkeypatch.setattr(inst, 'PYPI_CUDA', False)
    monkeypatch.setenv('PATH', '/usr/bin:/bin')  # no nvcc on PATH
    monkeypatch.delenv('CUDA_PATH', raising=False)
    monkeypatch.setattr(
        inst, 'cuda_home_from_pypi', lambda *a: pytest.fail('no PyPI nvcc for 12')
    )
    exact = _fake_toolkit(tmp_path / 'cuda-12.8', '12.8')
    near = _fake_toolkit(tmp_path / 'cuda-12.4', '12.4')
    situation = dict(cuda='12.8', torch='2.8.0', archs=['9.0'], site_packages='')
    for home, expected in [(exact, exact), (near, near)]:
        monkeypatch.setenv('CUDA_HOME', str(home))
        assert inst.cuda_home_for(situation) == expected
    monkeypatch.setenv('CUDA_HOME', str(near))
    with pytest.raises(SystemExit) as stop:
        inst.cuda_home_for(dict(situation, cuda='11.8', torch='2.1.2'))
    message = str(stop.value)
    assert 'torch 2.1.2 is built for CUDA 11.8' in message
    assert f'{near} (nvcc 12.4)' in message
    assert 'nvidia-cuda-nvcc-cu11 holds ptxas but no nvcc' in message
    assert 'module load cuda/11.8' in message
    # --pypi-cuda cannot help there either
    monkeypatch.setattr(inst, 'PYPI_CUDA', True)
    with pytest.raises(SystemExit, match='from CUDA 13 on only'):
        inst.cuda_home_for(situation)


def test_offline_install_from_a_wheelhouse_into_a_fresh_venv(tmp_path):
    """--wheelhouse for this machine, then --offline into a new virtual
    environment that has only the 'image' (this machine's torch, numpy,
    opencv ...) and no index (PIP_NO_INDEX=1)."""
    inst = _installer()
    house = tmp_path / 'house'
    env = dict(os.environ)
    situation = inst.torch_situation()
    folders = [
        Path(p) for p in env.get('NOMMER_MMCV_WHEELS', '').split(os.pathsep) if p
    ] + [inst.cache_dir(situation)]
    if not any(f.is_dir() and inst.candidate_wheels(f, situation) for f in folders):
        pytest.skip(
            'no prebuilt mmcv wheel for this Python and torch (set '
            'NOMMER_MMCV_WHEELS): the wheelhouse would build mmcv'
        )
    ext = 'import mmcv._ext as e; print(e.__file__)'
    mmcv_ext = Path(
        subprocess.check_output(
            [sys.executable, '-c', ext], text=True, cwd=tmp_path
        ).split()[-1]
    )
    before = inst.sha256(mmcv_ext)
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
    )
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    # mmcv is found or built in an overlay environment: this one's stays
    assert 'overlay-cp' in make.stdout + make.stderr
    assert '--mmcv-into' in make.stdout + make.stderr
    assert inst.sha256(mmcv_ext) == before
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
    size = sum((house / n).stat().st_size for n in manifest['wheels'])
    assert size <= inst.WHEELHOUSE_BUDGET_MIB * 2**20, size

    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    site = next(venv.glob('lib/python*/site-packages'))
    held = tmp_path / 'image'
    held.mkdir()
    _held_site(held, inst.IMAGE_HAS)
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
    )
    assert check.returncode == 0, check.stderr
    torch_file, numpy_version, prefix = check.stdout.split()
    assert torch_file.startswith(str(held))  # the machine's own torch
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
    remake.wait()
    assert not stale.exists()
    assert not (house / 'wheelhouse.json').exists()
    proc = install_offline()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'no wheelhouse.json there; make the folder' in proc.stderr
    shutil.rmtree(venv)


def test_gpu_check_skips_without_a_gpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_check.py')],
        capture_output=True,
        text=True,
    )
    if 'skipped' not in proc.stdout:
        pytest.skip('a GPU is present: tools/gpu_check.py runs for real')
    assert proc.returncode == 0


def _gpu_check_on_cpu(out, *only_and_options, env=None):
    """tools/gpu_check.py --allow-cpu --only ...: its output and report,
    which must have no failed check."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
        + ['--only', *only_and_options, '--out', str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['failed'] == 0
    return proc, report


def test_gpu_check_harness_runs_on_the_cpu(tmp_path):
    """The GPU check's harness with --allow-cpu (the device is the CPU):
    mmcv's ops against themselves, NomMer-T under fp32, bf16 and fp16
    autocast against fp32 on the same weights, the attention kernels of the
    three transformers, torch.compile of NomMer-T, the report file. On one
    device the fp32 comparison must be exact: same weights, same input and,
    replayed, the same nominations."""
    import torch

    if torch.cuda.is_available():
        pytest.skip('a GPU is present: tools/gpu_check.py compares it with the CPU')
    proc, report = _gpu_check_on_cpu(
        tmp_path, 'ops', 'backbones', 'attention', 'compile',
        '--models', 'NomMer-T', '--size', '64', '--batch', '2',
    )  # fmt: skip
    # the report is readable in a lease's short output tail: no line per
    # parameter from init_weights
    assert len((proc.stdout + proc.stderr).splitlines()) < 60, proc.stdout[-2000:]
    assert report['complete'] is True
    assert set(report['section_seconds']) == {
        'ops',
        'backbones',
        'attention',
        'compile',
    }
    rows = {r['name']: r for r in report['rows']}
    assert {'nms', 'batched_nms', 'RoIAlign forward/backward'} <= set(rows)
    fp32 = rows['NomMer-T fp32']
    assert fp32['logits_rel'] == 0 and fp32['grads_rel'] == 0
    assert fp32['nominations_agree'] == 1
    for dtype in ('bf16', 'fp16'):
        row = rows[f'NomMer-T {dtype}']
        assert row['ok'] and 0 < row['logits_rel'] and row['nominations_agree'] > 0.9
    # every attention layer's calls, by backend; in inference the CPU's
    # flash kernel for all (training with a learned bias mask is MATH here)
    for name, layers in [
        ('NomMer-T', {'LocalWindowContext', 'MultiheadSelfAttention'}),
        ('GC ViT-T', {'WindowMSA', 'GlobalQueryWindowMSA'}),
        ('Visformer-S', {'ConvAttention'}),
    ]:
        for mode in ('training', 'inference'):
            row = rows[f'{name} bf16 {mode}']
            assert set(row['backends']) == layers, row
            counts = [
                n for backends in row['backends'].values() for n in backends.values()
            ]
            assert sum(counts) == row['calls'] > 0
        row = rows[f'{name} bf16 inference']
        assert row['math_calls'] == 0, row
    # inductor's CPU code: one graph, its output near eager's, timed
    row = rows['NomMer-T bf16 batch 2']
    assert row['graph_breaks'] == 0 and row['logits_rel'] < 6e-2, row
    assert row['compile_s'] > 0 and row['speedup'] > 0, row
    assert 0.9 < row['nominations_agree'] <= 1, row


def test_gpu_check_report_is_rewritten_after_every_row(tmp_path):
    """gpu_check.json is current after each check, marked incomplete until
    the end, so that a run stopped from outside (a lease's time limit)
    still leaves what it measured; never a half-written file."""
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    path = tmp_path / 'gpu_check.json'
    report = gpu_check.Report(path, {'device': 'cpu'})

    def read():
        return json.loads(path.read_text())

    report.write(complete=False)
    assert read()['rows'] == [] and read()['complete'] is False
    report.add('ops', 'nms', True, kept=3)
    assert read()['rows'][0] == dict(section='ops', name='nms', ok=True, kept=3)
    assert read()['failed'] == 0 and read()['complete'] is False
    report.add('ops', 'RoIAlign', False, forward_rel=0.5)
    assert read()['failed'] == 1 and len(read()['rows']) == 2
    report.section_seconds['ops'] = 1.5
    report.write(complete=True)
    assert read()['complete'] is True and read()['section_seconds'] == {'ops': 1.5}
    assert read()['environment'] == {'device': 'cpu'}
    assert [p.name for p in tmp_path.iterdir()] == ['gpu_check.json']


def test_gpu_check_goes_on_after_a_model_that_raises(tmp_path, monkeypatch):
    """A model whose check raises (out of memory, say) gets a failed row
    naming the error; the models after it are still checked."""
    import torch
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    build = gpu_check.build_classifier

    def build_or_fail(config):
        if 'gcvit' in config:
            raise torch.OutOfMemoryError('out of memory (simulated)')
        return build(config)

    monkeypatch.setattr(gpu_check, 'build_classifier', build_or_fail)
    report = gpu_check.Report(tmp_path / 'gpu_check.json', {'device': 'cpu'})
    gpu_check.check_attention('cpu', report, 64, 2)
    gpu_check.check_backbones('cpu', report, 64, 2, ['GC ViT-T', 'Visformer-S'])
    assert [(r['section'], r['name']) for r in report.rows] == [
        ('attention', 'NomMer-T bf16 training'),
        ('attention', 'NomMer-T bf16 inference'),
        ('attention', 'GC ViT-T raised'),
        ('attention', 'Visformer-S bf16 training'),
        ('attention', 'Visformer-S bf16 inference'),
        ('backbones', 'GC ViT-T raised'),
        ('backbones', 'Visformer-S fp32'),
        ('backbones', 'Visformer-S bf16'),
        ('backbones', 'Visformer-S fp16'),
    ]
    for row in report.rows:
        raised = row['name'] == 'GC ViT-T raised'
        assert row['ok'] is not raised, row
        assert raised == ('out of memory (simulated)' in row.get('error', ''))


def test_gpu_check_fp32_bound_follows_the_cpus_own_rounding():
    """Beyond the fixed fp32 tolerance a figure passes within ROUNDING times
    the CPU fp32's own distance from fp64 (at 224, batch 4, CoTNet-50's CPU
    fp32 gradients are 2.6e-3 from fp64, beyond the fixed 1e-3, so a right
    GPU would fail it); each figure is held to its own bound."""
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    tol_logits, tol_grads = gpu_check.TOLERANCES['fp32']
    step = gpu_check.ROUNDING
    assert gpu_check.within_fp32_rounding(tol_logits, tol_grads, (0.0, 0.0))
    assert not gpu_check.within_fp32_rounding(tol_logits, 3 * tol_grads, (0, 0))
    assert gpu_check.within_fp32_rounding(
        tol_logits, 3 * tol_grads, (0.0, 3 * tol_grads / step)
    )
    assert not gpu_check.within_fp32_rounding(
        tol_logits, 3 * tol_grads, (0.0, 2 * tol_grads / step)
    )
    # the gradients' distance does not widen the logits' bound
    assert not gpu_check.within_fp32_rounding(3 * tol_logits, tol_grads, (0, 1))


def test_gpu_check_fp32_bound_runs_on_a_real_model(tmp_path, monkeypatch):
    """The path a GPU takes when an fp32 figure is beyond its tolerance, on
    the CPU: with the tolerances made negative even the exact one-device
    comparison is beyond them, so NomMer-T's fp32 row measures the CPU
    fp32's distance from fp64 (nominations replayed) and passes within it."""
    from cls_helpers import load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    monkeypatch.setitem(gpu_check.TOLERANCES, 'fp32', (-1.0, -1.0))
    report = gpu_check.Report(tmp_path / 'gpu_check.json', {'device': 'cpu'})
    gpu_check.check_backbones('cpu', report, 64, 2, ['NomMer-T'])
    row = {r['name']: r for r in report.rows}['NomMer-T fp32']
    assert row['ok'] and row['logits_rel'] == 0 and row['grads_rel'] == 0, row
    # fp64 is another computation: a small distance, not none
    assert 0 < row['cpu_fp32_vs_fp64_logits'] < 1e-5, row
    assert 0 < row['cpu_fp32_vs_fp64_grads'] < 1e-4, row


def test_gpu_check_focal_loss_reference_is_mmdets():
    """The CUDA-only focal loss check compares mmcv's kernel with a formula;
    the formula agrees with mmdet's own PyTorch focal loss, value and
    gradient."""
    import torch
    from cls_helpers import load_tool
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

    gpu_check = load_tool('tools/gpu_check.py')
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 5, (64,), generator=g)
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss = gpu_check.focal_loss_reference(ours, target)
    expected = py_sigmoid_focal_loss(
        theirs,
        torch.nn.functional.one_hot(target, 5).double(),
        gamma=2.0,
        alpha=0.25,
        reduction='sum',
    )
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_run_bounded_stops_every_process_it_started(tmp_path):
    """A run past its time (a hung NCCL rendezvous, say) is stopped with
    every process it started, even one that ignores SIGTERM, one that
    ``timeout`` moved into a group of its own, and one in a session of its
    own (as torchrun starts its workers), and its output so far comes back.
    (Stopping only the shell would hang: its children keep the output pipe
    open; stopping only its group missed the last two, and the call then
    waited for them.)"""
    import signal

    from cls_helpers import alive, load_tool

    gpu_check = load_tool('tools/gpu_check.py')
    assert gpu_check.run_bounded(['bash', '-c', 'echo done; exit 3'], 30) == (
        3,
        'done\n',
    )
    pids = tmp_path / 'pids'
    script = (
        f'sleep 600 & echo $! >> {pids}; '
        f'bash -c \'trap "" TERM; echo $$ >> {pids}; '
        f"sleep 600 & echo $! >> {pids}; wait' & "
        f"timeout 600 bash -c 'echo $$ >> {pids}; exec sleep 600' & "
        f"setsid bash -c 'echo $$ >> {pids}; exec sleep 600' & "
        f'while [ $(wc -l < {pids}) -lt 5 ]; do sleep 0.05; done; '
        'echo started; wait'
    )
    call = (
        'import json, sys; sys.path.insert(0, "tests"); '
        'from cls_helpers import load_tool; '
        'run_bounded = load_tool("tools/gpu_check.py").run_bounded; '
        f'print(json.dumps(run_bounded(["bash", "-c", {script!r}], 2, grace=1)))'
    )
    try:
        proc = subprocess.run(
            [sys.executable, '-c', call],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,  # a hang is a failure too
        )
        assert proc.returncode == 0, proc.stderr
        rc, out = json.loads(proc.stdout)
        assert rc is None and out == 'started\n'
        children = [int(p) for p in pids.read_text().split()]
        assert len(children) == 5
        deadline = time.time() + 10  # init reaps the orphans
        while any(map(alive, children)) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(map(alive, children))
    finally:  # whatever a failed run left
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_gpu_check_dist_runs_on_the_cpu(tmp_path):
    """gpu_check's dist section with --allow-cpu: its three small configs
    (classification with sync_bn, Cascade Mask R-CNN, UperNet) train and
    test through dist_train.sh / dist_test.sh in one gloo process, so that
    a GPU lease is not spent on a broken config (the classification one
    once was: sync_bn on CPU). The launchers run the check's own Python,
    not the first python3 on PATH (here one that fails)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip('a GPU is present: tools/gpu_check.py runs it with NCCL')
    other = tmp_path / 'other-bin'
    other.mkdir()
    (other / 'python3').write_text('#!/bin/sh\necho "not this python" >&2\nexit 1\n')
    (other / 'python3').chmod(0o755)
    env = dict(os.environ, PATH=f'{other}:{os.environ["PATH"]}')
    env.pop('PYTHON', None)
    _, report = _gpu_check_on_cpu(tmp_path, 'dist', env=env)
    assert len(report['rows']) == 3
    for row, metric in zip(report['rows'], ('accuracy/top1', 'coco/bbox_mAP', 'mIoU')):
        name, value = row['metric'].split('=')
        assert name == metric and float(value) >= 0, row
        assert row['backend'] == 'gloo'
    assert not list(tmp_path.glob('*-failure.log'))


def test_gpu_check_dist_runs_past_their_time_are_stopped(tmp_path):
    """--dist-timeout: each run that takes longer is stopped with its
    workers, reported as failed with the reason and its log kept, and the
    check goes on with the next run; the report is complete."""
    import torch

    if torch.cuda.is_available():
        pytest.skip('a GPU is present: tools/gpu_check.py runs it with NCCL')
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
        + ['--only', 'dist', '--dist-timeout', '2', '--out', str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert report['complete'] is True and report['failed'] == 3
    assert set(report['section_seconds']) == {'dist'}
    for row in report['rows']:
        assert row['error'] == 'train stopped after 2 s (--dist-timeout)', row
        assert Path(row['log']).parent == tmp_path
    assert len(list(tmp_path.glob('dist-*-failure.log'))) == 3
    # no process of the stopped runs is left (their configs lay in tmp_path)
    left = _processes_naming(str(tmp_path))
    assert not left, left


def _processes_naming(text: str) -> list[str]:
    """Command lines of the running processes that contain ``text``."""
    found = []
    for cmdline in Path('/proc').glob('[0-9]*/cmdline'):
        try:
            line = cmdline.read_text().replace('\0', ' ')
        except OSError:
            continue  # gone meanwhile
        if text in line:
            found.append(line)
    return found


def test_gpu_check_stopped_by_sigterm_ends_its_dist_run(tmp_path):
    """A job's time limit (a GPU lease, SLURM) sends gpu_check SIGTERM while
    a dist run goes on in a session of its own: the check exits 143 and no
    process of that run is left to hold the GPU; the report so far stays."""
    import signal

    import torch

    if torch.cuda.is_available():
        pytest.skip('a GPU is present: tools/gpu_check.py runs it with NCCL')
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / 'tools/gpu_check.py'), '--allow-cpu']
        + ['--only', 'dist', '--out', str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        # gpu_check names tmp_path itself; torchrun and its worker make three
        while len(_processes_naming(str(tmp_path))) < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert len(_processes_naming(str(tmp_path))) >= 3, 'no dist run started'
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
        assert 'gpu_check: stopped by SIGTERM' in out
        report = json.loads((tmp_path / 'gpu_check.json').read_text())
        assert report['complete'] is False
        deadline = time.time() + 10  # init reaps the orphans
        while _processes_naming(str(tmp_path)) and time.time() < deadline:
            time.sleep(0.1)
        assert not _processes_naming(str(tmp_path))
    finally:  # whatever a failed run left
        proc.kill()
        proc.wait()
        subprocess.run(['pkill', '-KILL', '-f', str(tmp_path)], check=False)


def test_overlay_environment_sees_this_one_after_its_own(tmp_path, monkeypatch):
    """The overlay venv (where --wheelhouse tries mmcv for this Python and
    torch) imports this environment's packages, editable installs included
    (their .pth files are processed), and its own site folder comes first,
    so that what is installed there shadows this environment's copy."""
    inst = _installer()
    monkeypatch.setattr(inst, 'CACHE_ROOT', tmp_path / 'cache')
    python = inst.overlay_environment()
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
    inst = _installer()
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
    assert inst.closure(report, ['torch']) == {'torch', 'setuptools', 'filelock'}
    env['python_version'] = '3.11'
    assert inst.closure(report, ['Torch']) == {'torch', 'filelock'}


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
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, shapes = proc.stdout.strip().splitlines()[-2:]
    assert first.startswith(str(target)), first
    assert shapes == '[(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]'
