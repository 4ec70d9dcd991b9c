import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installer_is_a_no_op_on_a_working_stack():
    """The test run itself needs the stack, so it is installed: a second
    run of the installer must find everything and install nothing."""
    env = dict(os.environ, PIP_NO_INDEX='1')  # any install attempt fails
    proc = subprocess.run([sys.executable, str(ROOT / 'tools/install_deps.py')],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ' pip ' not in proc.stdout, proc.stdout
    assert 'mmcv present' in proc.stdout
    assert 'stack: 0.10.7 2.1.0 3.3.0 1.2.2 1.2.0' in proc.stdout


def test_mmcv_ops_work():
    from mmcv.ops import RoIAlign, nms  # noqa: F401
    import torch
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
