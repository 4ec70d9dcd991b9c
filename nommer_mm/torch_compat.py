"""The few torch APIs that changed between the oldest supported torch (2.1)
and the newest, each chosen once at import."""

from __future__ import annotations

import torch

TORCH_VERSION = tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2])

# torch.compiler.is_compiling: torch 2.3; torch._dynamo's before
is_compiling = getattr(torch.compiler, 'is_compiling', None) or (
    torch._dynamo.is_compiling
)


def cpu_autocast_enabled() -> bool:
    """Whether autocast is on for the CPU (``torch.is_autocast_enabled``
    takes a device type from torch 2.4; its CPU form before is deprecated
    after)."""
    if TORCH_VERSION >= (2, 4):
        return torch.is_autocast_enabled('cpu')
    return torch.is_autocast_cpu_enabled()
