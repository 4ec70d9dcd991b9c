"""What every converter here shares: the error type, finding the weights in
a checkpoint, required tensors, rule-based renaming and writing the result."""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import torch


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why."""


def extract_state_dict(checkpoint: dict, use_ema: bool = False) -> dict:
    """The model weights inside a reference checkpoint: ``model``,
    ``state_dict_ema`` (with ``use_ema``) or the plain state dict."""
    if not isinstance(checkpoint, dict):
        raise ConversionError(f'expected a dict, got {type(checkpoint)}')
    if use_ema:
        if 'state_dict_ema' not in checkpoint:
            raise ConversionError(
                'no `state_dict_ema` in this checkpoint; '
                f'its keys: {sorted(checkpoint)[:10]}'
            )
        sd = checkpoint['state_dict_ema']
    elif 'model' in checkpoint:
        sd = checkpoint['model']
    elif 'state_dict' in checkpoint:
        sd = checkpoint['state_dict']
    else:
        sd = checkpoint
    # DataParallel / EMA wrappers prefix their keys.
    return OrderedDict((re.sub(r'^(module\.)+', '', k), v) for k, v in sd.items())


def need(state: dict, key: str, source: str = 'the') -> torch.Tensor:
    """``state[key]``, or a :class:`ConversionError` saying the checkpoint
    is incomplete."""
    if key not in state:
        raise ConversionError(
            f'{source} checkpoint has no tensor for {key!r}; it is incomplete '
            'and cannot be converted'
        )
    return state[key]


# (pattern, replacement) pairs; the first full match wins; replacement None
# drops the key (derived buffers).
Rules = list[tuple[str, str | None]]


def rename(state_dict: dict, rules: Rules, source: str) -> OrderedDict:
    """Apply ``rules`` to every key; keys no rule matches are an error."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out, unmatched = OrderedDict(), []
    for key, value in state_dict.items():
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                if repl is not None:
                    out[pattern.sub(repl, key)] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ConversionError(
            f'{len(unmatched)} keys of the {source} checkpoint have no place '
            f"in this plugin's model, e.g. {unmatched[:5]}. Is it the "
            f'right model and layout?'
        )
    return out


def save_converted(state_dict: dict, meta: dict, dst: str | Path) -> None:
    """Save ``dict(state_dict=..., meta=...)`` to ``dst`` (parents created)
    and print what was written and the backbone dict to build it with."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state_dict=state_dict, meta=meta), dst)
    print(f'wrote {len(state_dict)} tensors to {dst}')
    print(f'backbone: {json.dumps(meta["backbone"])}')
