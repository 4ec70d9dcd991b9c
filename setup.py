"""nommer-mm: the NomMer backbone as an OpenMMLab 2.x plugin.

It runs on either OpenMMLab stack: the original releases (mmcv, mmengine,
mmdet, mmsegmentation, mmpretrain) or their maintained fork OneDL
(onedl-mmcv, onedl-mmengine, ...), which install the same import names. The
plain requirements name neither, so ``pip install -e .`` never replaces the
stack that is installed; the extras ``[upstream]`` and ``[onedl]`` name one.
The heavy, environment-specific parts (torch/torchvision pair, mmcv with
compiled ops) are brought by ``tools/install_deps.py --stack upstream|onedl``
(pins in requirements.txt and requirements-onedl.txt).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(
    r"__version__ = '([^']+)'", (here / 'nommer_mm' / 'version.py').read_text()
).group(1)

# Either stack, whole (mmengine and mmcv first: the 'cls'/'det'/'seg' extras
# take them). mmcv 2.1.0 and onedl-mmcv have no wheels for a current torch on
# PyPI: tools/install_deps.py builds them.
UPSTREAM = [
    'mmengine==0.10.7',
    'mmcv>=2.0.0,<2.2.0',
    'mmdet==3.3.0',
    'mmsegmentation==1.2.2',
    'mmpretrain==1.2.0',
    'pycocotools',
    'ftfy',
    'regex',
]
ONEDL = [
    'onedl-mmengine>=0.10.12',
    'onedl-mmcv>=2.3.6',
    'onedl-mmdetection>=3.5.1',
    'onedl-mmsegmentation>=1.4.2',
    'onedl-mmpretrain>=1.3.6',
    'pycocotools',
    'ftfy',
    'regex',
]

setup(
    name='nommer-mm',
    version=version,
    description='NomMer (CVPR 2022) backbone for mmpretrain, mmdet and mmseg',
    long_description=(here / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['nommer_mm', 'nommer_mm.*']),
    # tested at both ends (docs/install.md): Python 3.10 and 3.13, torch 2.1
    # and the pin of requirements.txt
    python_requires='>=3.10,<3.14',
    install_requires=['torch>=2.1', 'numpy'],
    extras_require={
        'upstream': UPSTREAM,
        'onedl': ONEDL,
        # the tasks' extras of the upstream stack, as before
        'cls': UPSTREAM[:2] + ['mmpretrain==1.2.0'],
        'det': UPSTREAM[:2] + ['mmdet==3.3.0', 'pycocotools'],
        'seg': UPSTREAM[:2] + ['mmsegmentation==1.2.2', 'ftfy', 'regex'],
    },
    license='Apache-2.0',
)
