"""tools/install_deps.py --stack upstream|onedl: which stack it picks, the
pins, wheels, cache and constraints of each, and the other stack's packages
removed before installing one."""

from pathlib import Path

import pytest

# tools/ is on sys.path (tests/conftest.py), as tools/install_deps.py has it
from deps_installer import mmcv, pins

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack_pins():
    """Leave the installer's pins as the command starts them."""
    yield pins
    pins.use_stack('upstream')


def _found(*stacks: str) -> list:
    module = pins.stack_module()
    return [
        module.Found(imp, dists[stack], '1.0', stack)
        for stack in stacks
        for imp, dists in module.DISTRIBUTIONS.items()
    ]


@pytest.mark.parametrize(
    'installed,asked,chosen',
    [
        ((), None, 'upstream'),  # a bare environment
        (('upstream',), None, 'upstream'),
        (('onedl',), None, 'onedl'),  # whatever is installed
        (('upstream',), 'onedl', 'onedl'),  # a switch
        (('upstream', 'onedl'), 'onedl', 'onedl'),  # a mix, resolved
    ],
)
def test_the_stack_chosen(installed, asked, chosen, monkeypatch):
    monkeypatch.setattr(pins.stack_module(), 'installed', lambda: _found(*installed))
    assert pins.choose_stack(asked) == chosen


def test_a_mix_without_stack_stops_with_the_fix(monkeypatch):
    monkeypatch.setattr(
        pins.stack_module(), 'installed', lambda: _found('upstream', 'onedl')
    )
    with pytest.raises(SystemExit) as err:
        pins.choose_stack(None)
    assert 'onedl-mmcv 1.0' in str(err.value) and 'mmcv 1.0' in str(err.value)
    assert 'install_deps.py --stack' in str(err.value)


def _requirements(name: str) -> dict:
    return pins.read_pins(ROOT / name)


def test_each_stack_has_its_pins(stack_pins):
    for name, file, mmcv_dist in [
        ('upstream', 'requirements.txt', 'mmcv'),
        ('onedl', 'requirements-onedl.txt', 'onedl-mmcv'),
    ]:
        pins.use_stack(name)
        wanted = _requirements(file)
        assert pins.MMCV_DIST == mmcv_dist
        assert pins.MMCV_VERSION == wanted[mmcv_dist]
        assert pins.OPENMMLAB_PINS == {
            d: v
            for d, v in wanted.items()
            if d not in ('torch', 'torchvision', mmcv_dist)
        }
        mmengine = next(iter(pins.OPENMMLAB_PINS))
        assert mmengine.endswith('mmengine')
        assert f'{mmengine}=={wanted[mmengine]}' in pins.MMCV_RUNTIME_REQUIREMENTS
    with pytest.raises(SystemExit, match="--stack 'other': expected one of"):
        pins.use_stack('other')


def test_constraints_hold_this_mmcv_and_refuse_the_other(stack_pins):
    pins.use_stack('onedl')
    lines = pins.hold_constraints().read_text().split()
    assert 'mmcv<0' in lines
    assert any(line.startswith('onedl-mmcv==') for line in lines)
    pins.use_stack('upstream')
    lines = pins.hold_constraints().read_text().split()
    assert 'onedl-mmcv<0' in lines and 'mmcv<0' not in lines


def test_wheels_and_cache_are_the_stacks_own(tmp_path, stack_pins):
    tag = 'cp311-cp311-linux_x86_64'
    for name in (f'mmcv-2.1.0-{tag}.whl', f'onedl_mmcv-2.3.6-{tag}.whl'):
        (tmp_path / name).write_bytes(b'')
    situation = dict(key='cp311-torch2.15.0-cpu')
    found, caches = {}, {}
    for name in ('upstream', 'onedl'):
        pins.use_stack(name)
        found[name] = [w.name for w in mmcv.candidate_wheels(tmp_path, situation)]
        caches[name] = mmcv.cache_dir(situation)
    if found['upstream']:  # a CPython 3.11 on x86-64 Linux takes these tags
        assert found == {
            'upstream': [f'mmcv-2.1.0-{tag}.whl'],
            'onedl': [f'onedl_mmcv-2.3.6-{tag}.whl'],
        }
    assert caches['upstream'] != caches['onedl']
    assert caches['onedl'].parent.name == 'onedl-mmcv'


def test_the_other_stack_is_removed_first(monkeypatch, stack_pins):
    monkeypatch.setattr(
        pins.stack_module(), 'installed', lambda: _found('upstream', 'onedl')
    )
    ran = []
    monkeypatch.setattr(pins, 'pip', lambda *args, **kw: ran.append(args))
    pins.use_stack('onedl')
    pins.remove_other_stack()
    assert ran == [
        ('uninstall', '-y', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain')
    ]


def test_constraints_keep_numpy_1_where_it_is(stack_pins, monkeypatch):
    """torch before 2.3 is built against numpy 1: a resolver must not swap it."""
    versions = {'numpy': '1.26.4'}
    real = pins.version_of
    monkeypatch.setattr(pins, 'version_of', lambda d: versions.get(d) or real(d))
    assert 'numpy<2' in pins.hold_constraints().read_text().split()
    versions['numpy'] = '2.4.6'
    assert not any(
        line.startswith('numpy') for line in pins.hold_constraints().read_text().split()
    )


def test_the_upstream_extra_installs_the_pins():
    """``pip install -e ".[upstream]"`` (the docs' path after a prebuilt
    mmcv) asks for requirements.txt's versions and admits its mmcv."""
    import ast

    from packaging.requirements import Requirement

    tree = ast.parse((ROOT / 'setup.py').read_text())
    upstream = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and getattr(node.targets[0], 'id', '') == 'UPSTREAM'
    )
    extra = {Requirement(r).name: Requirement(r).specifier for r in upstream}
    for dist, version in _requirements('requirements.txt').items():
        if dist not in ('torch', 'torchvision'):
            assert version in extra[dist], (dist, version, extra[dist])
