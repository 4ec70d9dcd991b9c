"""nommer-mm: the NomMer backbone as an OpenMMLab 2.x plugin.

The heavy, environment-specific dependencies (torch/torchvision pair, mmcv
with compiled ops) are brought by ``tools/install_deps.py``; they are listed
here loosely so ``pip install -e .`` never swaps an installed torch.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(
    r"__version__ = '([^']+)'", (here / 'nommer_mm' / 'version.py').read_text()
).group(1)

setup(
    name='nommer-mm',
    version=version,
    description='NomMer (CVPR 2022) backbone for mmpretrain, mmdet and mmseg',
    long_description=(here / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['nommer_mm', 'nommer_mm.*']),
    python_requires='>=3.8',
    install_requires=[
        'torch>=2.0',
        'mmengine==0.10.7',
        'mmcv>=2.0.0,<2.2.0',
    ],
    extras_require={
        'cls': ['mmpretrain==1.2.0'],
        'det': ['mmdet==3.3.0', 'pycocotools'],
        'seg': ['mmsegmentation==1.2.2', 'ftfy', 'regex'],
    },
    license='Apache-2.0',
)
