#!/usr/bin/env python3
"""Bring this Python environment to a working NomMer + OpenMMLab 2.x stack.

Two stacks are supported, with the same import names (mmcv, mmengine,
mmdet, mmseg, mmpretrain): ``--stack upstream``, the original OpenMMLab
releases (pins in requirements.txt: mmcv 2.1.0, mmengine 0.10.7, mmdet
3.3.0, mmsegmentation 1.2.2, mmpretrain 1.2.0), and ``--stack onedl``, their
maintained fork OneDL (requirements-onedl.txt: onedl-mmcv 2.3.6,
onedl-mmengine 0.10.12, onedl-mmdetection 3.5.1, onedl-mmsegmentation
1.4.2, onedl-mmpretrain 1.3.6). Without ``--stack``: the stack installed
here, upstream on an environment with neither. Choosing one removes the
other's packages first (they would overwrite each other's files).

Steps, each skipped when already satisfied (a second run installs nothing):

1. torch + torchvision: an importable pair is kept; otherwise the pinned
   PyPI pair is installed (mmpretrain needs torchvision, and PyPI has no
   CPU-only torchvision, so this is the CUDA build; it runs on CPU too).
2. The stack's mmcv (mmcv 2.1.0 or onedl-mmcv 2.3.6) *with compiled ops*
   (mmdet needs RoIAlign, NMS ...), from the first source that yields a
   working build:
   a. a wheel folder named by ``--wheels`` / ``NOMMER_MMCV_WHEELS``,
   b. the local build cache (``$XDG_CACHE_HOME/nommer_mm/<mmcv or
      onedl-mmcv>/<key>``, the key naming Python, torch, CUDA and the
      kernel architectures),
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
3. The stack's OpenMMLab packages and the undeclared dependencies of mmseg,
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

Usage: ``python tools/install_deps.py [--stack upstream|onedl] [--wheels DIR]
[--cuda-archs 8.0,9.0] [--no-self]``.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

# tools/ is this script's folder, first on sys.path when it runs
from deps_installer import cuda, mmcv, pins, wheelhouse


def parse_args() -> argparse.Namespace:
    """The command line, checked; ``wheel_dirs`` adds NOMMER_MMCV_WHEELS's
    folders to those of --wheels. (Long but flat: one call per option.)"""
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 2)[2],
    )
    parser.add_argument(
        '--stack',
        choices=sorted(pins.STACKS),
        help='the OpenMMLab stack: upstream (the original releases) or onedl '
        '(the maintained fork); default: the one installed, else upstream',
    )
    parser.add_argument(
        '--wheels',
        action='append',
        default=[],
        help='folder with prebuilt mmcv / onedl-mmcv wheels (repeatable); '
        'NOMMER_MMCV_WHEELS (os.pathsep-separated) adds more',
    )
    parser.add_argument(
        '--cuda-archs',
        type=cuda.parse_archs,
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
        default=wheelhouse.IMAGE_HAS,
        metavar='NAME',
        help='--wheelhouse: distributions '
        'the target already has, left out with everything '
        f'they need (default: {" ".join(wheelhouse.IMAGE_HAS)})',
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
    if (args.for_python or args.for_torch or args.offline) and not args.wheelhouse:
        parser.error('--for-python, --for-torch and --offline go with --wheelhouse DIR')
    if args.for_python and not re.fullmatch(r'3\.\d+', args.for_python):
        parser.error(f'--for-python {args.for_python!r}: give X.Y, e.g. 3.12')
    env_dirs = os.environ.get('NOMMER_MMCV_WHEELS', '')
    args.wheel_dirs = [Path(p) for p in args.wheels]
    args.wheel_dirs += [Path(p) for p in env_dirs.split(os.pathsep) if p]
    return args


def main() -> None:
    """Run the step the command line asks for: by default the whole stack."""
    args = parse_args()
    cuda.PYPI_CUDA = args.pypi_cuda
    if not (args.wheelhouse and args.offline):  # there: the wheelhouse's stack
        pins.use_stack(pins.choose_stack(args.stack))
    if args.mmcv_into:
        mmcv.mmcv_into(args.mmcv_into, args.wheel_dirs, args.cuda_archs)
    elif args.wheelhouse and args.offline:
        wheelhouse.install_offline(
            args.wheelhouse, not args.no_self, args.break_system_packages, args.stack
        )
    elif args.wheelhouse:
        wheelhouse.make_wheelhouse(
            args.wheelhouse,
            args.for_python,
            args.for_torch,
            args.cuda_archs,
            args.image_has,
            args.wheel_dirs,
        )
    else:
        pins_file = pins.STACKS[pins.STACK]['requirements']
        pins.log(f'stack: {pins.STACK} (pins in {pins_file})')
        pins.remove_other_stack()
        pins.ensure_torch()
        mmcv.ensure_mmcv(args.wheel_dirs, args.cuda_archs)
        pins.ensure_rest(with_self=not args.no_self)
        pins.final_check()


if __name__ == '__main__':
    main()
