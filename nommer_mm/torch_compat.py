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


# torch.promote_types for floating dtypes, written out: TorchDynamo in
# torch 2.1 breaks the graph on it
def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """``torch.promote_types(dtype, torch.float32)`` of a floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def promote_floats(dtypes: list) -> torch.dtype:
    """``torch.promote_types`` folded over floating dtypes."""
    out = dtypes[0]
    for dtype in dtypes[1:]:
        if dtype != out:  # two of half, bfloat16, float32 meet at float32
            wide = out == torch.float64 or dtype == torch.float64
            out = torch.float64 if wide else torch.float32
    return out
