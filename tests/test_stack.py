"""nommer_mm names the OpenMMLab stack it runs on (upstream or OneDL) and
stops at import on a mix of the two, naming packages, versions and the fix."""

import os
import subprocess
import sys
from importlib import metadata

import pytest

from nommer_mm import stack
from nommer_mm.stack import ONEDL, UPSTREAM, Found, StackMismatchError, detect_stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_distribution(site, name: str, version: str) -> None:
    """A ``NAME-VERSION.dist-info`` with metadata only: what pip leaves
    behind, enough for importlib.metadata to count it as installed."""
    info = site / f'{name.replace("-", "_")}-{version}.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text(
        f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n'
    )


def test_the_installed_stack_is_one_of_the_two():
    found = stack.installed()
    assert stack.STACK in (UPSTREAM, ONEDL)
    assert {f.stack for f in found} == {stack.STACK}
    # mmengine is always there (the hooks need it), from the stack found
    dist = stack.DISTRIBUTIONS['mmengine'][stack.STACK]
    assert metadata.version(dist) in stack.describe()


def test_each_stack_alone_is_accepted():
    for name in (UPSTREAM, ONEDL):
        found = [
            Found(module, dists[name], '1.0', name)
            for module, dists in stack.DISTRIBUTIONS.items()
        ]
        assert detect_stack(found) == name
    assert detect_stack([]) is None


def test_a_mix_names_packages_versions_and_the_fix():
    found = [
        Found('mmcv', 'onedl-mmcv', '2.3.6', ONEDL),
        Found('mmengine', 'mmengine', '0.10.7', UPSTREAM),
        Found('mmdet', 'mmdet', '3.3.0', UPSTREAM),
    ]
    with pytest.raises(StackMismatchError) as err:
        detect_stack(found)
    msg = str(err.value)
    assert 'onedl-mmcv 2.3.6' in msg and 'mmdet 3.3.0' in msg
    assert 'mmengine 0.10.7' in msg
    # the stack that brings mmcv is kept; the other one is uninstalled
    assert 'pip uninstall -y mmengine mmdet' in msg
    assert 'install_deps.py --stack onedl' in msg


def test_a_foreign_distribution_on_the_path_is_found(tmp_path, monkeypatch):
    other = ONEDL if stack.STACK == UPSTREAM else UPSTREAM
    dist = stack.DISTRIBUTIONS['mmdet'][other]
    _fake_distribution(tmp_path, dist, '9.9.9')
    # (not syspath_prepend: its pkg_resources refresh rescans every package)
    monkeypatch.setattr(sys, 'path', [str(tmp_path), *sys.path])
    with pytest.raises(StackMismatchError, match=f'{dist} 9.9.9'):
        detect_stack()


def test_import_stops_on_a_mix(tmp_path):
    """``import nommer_mm`` itself, in a fresh interpreter, with a
    distribution of the other stack on the path."""
    other = ONEDL if stack.STACK == UPSTREAM else UPSTREAM
    dist = stack.DISTRIBUTIONS['mmcv'][other]
    _fake_distribution(tmp_path, dist, '9.9.9')
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(tmp_path), ROOT, env.get('PYTHONPATH', '')]
    )
    proc = subprocess.run(
        [sys.executable, '-c', 'import nommer_mm'],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0
    assert 'StackMismatchError' in proc.stderr, proc.stderr[-2000:]
    assert f'{dist} 9.9.9' in proc.stderr
    assert f'--stack {other}' in proc.stderr or f'--stack {stack.STACK}' in (
        proc.stderr
    )
