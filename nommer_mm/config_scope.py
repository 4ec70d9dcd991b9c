"""``mmdet::`` / ``mmseg::`` / ``mmpretrain::`` config bases on either
OpenMMLab stack.

mmengine finds a ``SCOPE::path`` base in the package its table
``mmengine.config.utils.MODULE2PACKAGE`` names for the scope. OneDL's
mmengine names ``mmsegmentation`` for ``mmseg``, a package that stack does
not have (its segmentation package is ``onedl-mmsegmentation``, imported as
``mmseg``), so every ``mmseg::`` base fails there with
``ModuleNotFoundError: mmsegmentation is not installed``.

:func:`config_bases_resolve` points such an entry at the import name while
a config is read (our tools read configs through
:func:`nommer_mm.launch.load_config`) and puts the table back afterwards;
entries that resolve, and scopes other than ours, are left as they are.
"""

from __future__ import annotations

import contextlib
import importlib.util
from importlib import metadata
from typing import Iterator

# the codebases whose bases our configs inherit
SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def _resolves(package: str) -> bool:
    """Whether mmengine finds ``package``: an installed distribution of that
    name, or an importable module of that name."""
    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        return importlib.util.find_spec(package) is not None


def unresolved_scopes() -> dict[str, str]:
    """``{scope: package}`` for our scopes whose package in mmengine's
    table is not installed while the scope's module imports."""
    from mmengine.config import utils

    table = getattr(utils, 'MODULE2PACKAGE', None) or {}
    return {
        scope: table[scope]
        for scope in SCOPES
        if scope in table
        and not _resolves(table[scope])
        and importlib.util.find_spec(scope) is not None
    }


@contextlib.contextmanager
def config_bases_resolve() -> Iterator[None]:
    """While inside, ``SCOPE::`` bases of our scopes resolve to the
    installed module of that name (see the module docstring)."""
    from mmengine.config import utils

    broken = unresolved_scopes()
    table = utils.MODULE2PACKAGE
    for scope in broken:
        table[scope] = scope  # the import name: mmengine finds its folder
    try:
        yield
    finally:
        table.update(broken)
