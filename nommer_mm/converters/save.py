"""Writing a converted checkpoint, shared by the converter CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_converted(state_dict: dict, meta: dict, dst: str | Path) -> None:
    """Save ``dict(state_dict=..., meta=...)`` to ``dst`` (parents created)
    and print what was written and the backbone dict to build it with."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state_dict=state_dict, meta=meta), dst)
    print(f'wrote {len(state_dict)} tensors to {dst}')
    print(f'backbone: {json.dumps(meta["backbone"])}')
