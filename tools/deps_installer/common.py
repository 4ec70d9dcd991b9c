"""Helpers every step shares: log lines, commands, fresh interpreters,
file digests and the cache folder."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
# The command users run; --wheelhouse runs it again in the target's Python.
SCRIPT = REPO_ROOT / 'tools' / 'install_deps.py'
CACHE_ROOT = (
    Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'nommer_mm'
)


def log(msg: str) -> None:
    """One line of the installer's log, on stdout."""
    print(f'[install_deps] {msg}', flush=True)


def run(cmd: list, env: dict | None = None, cwd: str | None = None) -> None:
    """Log ``cmd`` and run it; CalledProcessError when it fails."""
    log('$ ' + ' '.join(str(c) for c in cmd))
    subprocess.check_call([str(c) for c in cmd], env=env, cwd=cwd)


def pip(*args: str, env: dict | None = None) -> None:
    """This interpreter's ``pip`` with ``args``."""
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


def canonical(name: str) -> str:
    """A distribution name normalized as pip compares them."""
    return re.sub(r'[-_.]+', '-', name).lower()


def sha256(path: Path) -> str:
    """The hex SHA-256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def packaging(module: str) -> ModuleType:
    """``packaging.<module>``, or pip's vendored copy in a bare interpreter."""
    try:
        return importlib.import_module(f'packaging.{module}')
    except ImportError:
        return importlib.import_module(f'pip._vendor.packaging.{module}')
