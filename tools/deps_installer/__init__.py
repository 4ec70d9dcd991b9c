"""The steps of ``tools/install_deps.py``, one module per concern.

- ``common``: logging, running pip and fresh interpreters, the cache folder.
- ``pins``: the stack's pins (read from requirements.txt), what is installed,
  torch, the OpenMMLab packages, this repository, the final import check.
- ``cuda``: Python / torch / CUDA facts, the CUDA toolkit to build with
  (a system one, or one assembled from NVIDIA's PyPI packages).
- ``mmcv``: mmcv from a wheel folder, the build cache or its source
  (patched, built, cached), each candidate verified by running its ops.
- ``wheelhouse``: a folder of wheels for an offline machine, and the
  install from it.

Nothing here imports torch: the installer runs before torch is installed.
"""
