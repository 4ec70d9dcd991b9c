"""Convert reference NomMer checkpoints (TencentYoutuResearch/
VisualRecognition-NomMer, ``models/nommer.py``) to this plugin's layout.

The result is an mmpretrain ``ImageClassifier`` state dict (``backbone.*``,
``head.fc.*``) or, with ``backbone_only``, the bare backbone state dict.
The reference's fixed DCT/IDCT bases are not copied: they are checked
against the analytic bases and dropped (ours are derived buffers).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch

from ..models.backbones.nommer import NomMer
from .common import ConversionError, extract_state_dict, need
from ..models.layers.dct import dct_kronecker_basis
from ..models.layers.attention import relative_position_index

# Exact renames, applied to the part of a key after its block prefix.
_SNOMMER_RENAMES = {
    '0.norm': 'norm1',
    '0.fn.attention.relative_position_bias_table': 'mixer.window_context.relative_position_bias_table',  # noqa: E501
    '0.fn.attention.qkv': 'mixer.window_context.qkv',
    '0.fn.attention.proj': 'mixer.window_context.proj',
    '0.fn.attentionG.dw': 'mixer.global_context.compress',
    '0.fn.attentionG.bn1': 'mixer.global_context.norm',
    '0.fn.attentionG.attn.to_qkv': 'mixer.global_context.attn.qkv',
    '0.fn.attentionG.attn.to_out.0': 'mixer.global_context.attn.proj',
    '0.fn.attentionG.up': 'mixer.global_context.expand',
    '0.fn.fc': 'mixer.nominator.fc',
    '1.norm': 'norm2',
    '1.fn.net.0': 'mlp.fc1',
    '1.fn.net.3': 'mlp.fc2',
}
for _k in (1, 2, 3):
    _SNOMMER_RENAMES[f'0.fn.cnn.conv{_k}'] = f'mixer.conv_context.conv{_k}'
    _SNOMMER_RENAMES[f'0.fn.cnn.bn{_k}'] = f'mixer.conv_context.norm{_k}'

_GNOMMER_RENAMES = {
    '0.norm': 'norm1',
    '0.fn.to_qkv': 'attn.qkv',
    '0.fn.to_out.0': 'attn.proj',
    '1.norm': 'norm2',
    '1.fn.net.0': 'mlp.fc1',
    '1.fn.net.3': 'mlp.fc2',
}
_TOP_RENAMES = {
    'cnn1': 'backbone.stem.conv',
    'bn1': 'backbone.stem.norm',
    'pos_embedding': 'backbone.pos_embed',
    'cls_token': 'backbone.cls_token',
    'mlp_head.0': 'backbone.final_norm',
    'mlp_head.1': 'head.fc',
    'merge1': 'backbone.merges.0',
    'merge2': 'backbone.merges.1',
    'merge3': 'backbone.merges.2',
}
# Fixed tensors of the reference, verified and dropped.
_FIXED = (
    'fn.attentionG.dct_conv_8x8.weight',
    'fn.attentionG.idct_conv.0.weight',
    'fn.attention.relative_position_index',
)
_BLOCK_RE = re.compile(r'^transformer([1-4])\.layers\.(\d+)\.(.+)$')
_PARAM_SUFFIXES = (
    '.weight',
    '.bias',
    '.running_mean',
    '.running_var',
    '.num_batches_tracked',
)


def local_stages(sd: dict) -> int:
    """How many leading stages are S-NomMer: those whose first block has a
    conv context (the reference: two)."""
    n = 0
    while f'transformer{n + 1}.layers.0.0.fn.cnn.conv1.weight' in sd:
        n += 1
    if not 1 <= n <= 3:
        raise ConversionError(
            f'{n} leading S-NomMer stages (transformerK.layers.0.0.fn.cnn.*); '
            'a NomMer checkpoint has 1 to 3'
        )
    return n


def _rename(key: str, num_local: int) -> str | None:
    """Reference key -> ours, None for a fixed tensor; raises if unknown.
    Stages ``< num_local`` are S-NomMer."""
    m = _BLOCK_RE.match(key)
    if m:
        stage, block, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
        if any(rest.endswith(f) for f in _FIXED):
            return None
        table = _SNOMMER_RENAMES if stage < num_local else _GNOMMER_RENAMES
        for old, new in table.items():
            for suffix in ('', *_PARAM_SUFFIXES):
                if rest == old + suffix:
                    return f'backbone.stages.{stage}.blocks.{block}.{new}{suffix}'
        raise ConversionError(f'unknown reference key {key!r}')
    for old, new in _TOP_RENAMES.items():
        if key == old:
            return new
        for suffix in _PARAM_SUFFIXES:
            if key == old + suffix:
                return new + suffix
        if key.startswith(old + '.') and old.startswith('merge'):
            return new + key[len(old) :]
    raise ConversionError(f'unknown reference key {key!r}')


def infer_arch(sd: dict) -> dict:
    """Embed dims, depths, the S-NomMer stages' heads, bottleneck ratios and
    DCT block sizes from the tensor shapes. The G-NomMer stages' heads leave
    no trace in the weights; they are taken from the zoo arch with the same
    shape."""
    if 'cnn1.weight' not in sd:
        raise ConversionError('no `cnn1.weight`: not a reference NomMer checkpoint')
    C = sd['cnn1.weight'].shape[0]
    depths = []
    for s in range(1, 5):
        ids = {
            int(m.group(2))
            for k in sd
            if (m := _BLOCK_RE.match(k)) and m.group(1) == str(s)
        }
        if not ids or ids != set(range(len(ids))):
            raise ConversionError(
                f'transformer{s} blocks are missing or not '
                f'numbered 0..n-1: {sorted(ids)}'
            )
        depths.append(len(ids))
    heads, ratios, blocks = [], [], []
    for s in range(local_stages(sd)):
        p = f'transformer{s + 1}.layers.0.0.fn.'
        heads.append(_need(sd, p + 'attention.relative_position_bias_table').shape[1])
        ratios.append((C * 2**s) // _need(sd, p + 'cnn.conv1.weight').shape[0])
        blocks.append(_need(sd, p + 'attentionG.dct_conv_8x8.weight').shape[-1])
    window = int(
        round(
            (
                math.sqrt(
                    sd[
                        'transformer1.layers.0.0.fn.attention.'
                        'relative_position_bias_table'
                    ].shape[0]
                )
                + 1
            )
            / 2
        )
    )
    arch = dict(
        embed_dims=C,
        depths=depths,
        num_heads=heads + [None] * (4 - len(heads)),
        bottleneck_ratios=ratios,
    )
    for name in ('tiny', 'small', 'base'):
        zoo = NomMer.arch_zoo[name]
        if (
            zoo['embed_dims'],
            zoo['depths'],
            zoo['num_heads'][: len(heads)],
            zoo['bottleneck_ratios'],
        ) == (C, depths, heads, ratios):
            arch['num_heads'] = list(zoo['num_heads'])
            arch['name'] = name
    return dict(
        arch=arch,
        window_size=window,
        dct_blocks=blocks,
        img_size=_need(sd, 'pos_embedding').shape[1] * 16,
    )


def _need(sd: dict, key: str) -> torch.Tensor:
    return need(sd, key, 'the reference')


def _reference_name(key: str, num_local: int) -> str:
    """The reference key that :func:`_rename` turns into ``key``."""
    key = key if key.startswith(('backbone.', 'head.')) else 'backbone.' + key
    m = re.match(r'^backbone\.stages\.(\d)\.blocks\.(\d+)\.(.+)$', key)
    if m:
        stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
        table = _SNOMMER_RENAMES if stage < num_local else _GNOMMER_RENAMES
        for old, new in table.items():
            if rest.startswith(new + '.') or rest == new:
                return f'transformer{stage + 1}.layers.{block}.{old}{rest[len(new) :]}'
    for old, new in _TOP_RENAMES.items():
        if key.startswith(new + '.') or key == new:
            return old + key[len(new) :]
    return key


def _check_complete(out: dict, info: dict, backbone_only: bool) -> None:
    """Every tensor of the target model is filled, with its shape."""
    model = NomMer(**info, out_type='cls_token', out_indices=(3,)).state_dict()
    num_local = len(info['arch']['bottleneck_ratios'])
    expect = {k: tuple(v.shape) for k, v in model.items()}
    if not backbone_only:
        expect = {f'backbone.{k}': v for k, v in expect.items()}
        if 'head.fc.weight' in out:
            expect['head.fc.weight'] = (
                out['head.fc.weight'].shape[0],
                expect['backbone.final_norm.weight'][0],
            )
            expect['head.fc.bias'] = (out['head.fc.weight'].shape[0],)
        else:
            expect['head.fc.weight'] = expect['head.fc.bias'] = None
    missing = [k for k in expect if k not in out]
    wrong = [
        f'{k} ({_reference_name(k, num_local)}): {tuple(out[k].shape)}, '
        f'expected {expect[k]}'
        for k in expect
        if k in out and tuple(out[k].shape) != expect[k]
    ]
    if missing or wrong:
        lines = [
            f'missing {k} (reference key {_reference_name(k, num_local)!r})'
            for k in missing
        ] + [f'wrong shape: {w}' for w in wrong]
        raise ConversionError(
            f'the reference checkpoint does not fill the model '
            f'({len(missing)} missing, {len(wrong)} mis-shaped tensors); '
            'nothing was written:\n  ' + '\n  '.join(lines[:20])
        )


def analytic_fixed_tensor(key: str, shape: torch.Size, dct_block: int) -> torch.Tensor:
    """What a reference fixed tensor must hold, from the formulas alone."""
    if key.endswith('relative_position_index'):
        return relative_position_index(int(round(math.sqrt(shape[0]))))
    n = dct_block
    l = (n + 1) // 2
    kron = dct_kronecker_basis(n, l)  # (N*N, l*l)
    if key.endswith('dct_conv_8x8.weight'):
        # (C*l*l, 1, N, N): weight[c*l*l + u + v*l, 0, y, x] = K[y*N + x, .]
        one = kron.t().reshape(l * l, 1, n, n)
        return one.repeat(shape[0] // (l * l), 1, 1, 1)
    # idct_conv.0.weight (C*N*N, l*l, 1, 1): weight[c*N*N + x + y*N, .] =
    # K[y*N + x, .]; PixelShuffle(N) then places output channel x + y*N at
    # row y, column x of the block.
    one = kron.reshape(n * n, l * l, 1, 1)
    return one.repeat(shape[0] // (n * n), 1, 1, 1)


def _check_fixed(key: str, tensor: torch.Tensor, dct_block: int) -> None:
    expect = analytic_fixed_tensor(key, tensor.shape, dct_block)
    if expect.shape != tensor.shape:
        raise ConversionError(
            f'{key} has shape {tuple(tensor.shape)}, the '
            f'analytic one {tuple(expect.shape)}'
        )
    err = (expect.double() - tensor.double()).abs().max().item()
    if err > 1e-5:
        raise ConversionError(
            f'{key} differs from the analytic tensor by '
            f'{err:.2e}; this checkpoint uses another '
            'transform and cannot be converted exactly'
        )


def _plain(value):
    """Tuples and lists compare equal after this."""
    return list(value) if isinstance(value, (list, tuple)) else value


def convert_reference(
    checkpoint: dict,
    arch: str | dict | None = None,
    backbone_only: bool = False,
    use_ema: bool = False,
) -> tuple[OrderedDict, dict]:
    """Return (state_dict, backbone_kwargs).

    ``backbone_kwargs`` (arch, window_size, dct_blocks, img_size) build the
    matching :class:`NomMer`; ``arch`` overrides the inferred one (needed
    for a non-zoo arch, whose G-NomMer stages' heads are not in the
    weights).
    """
    sd = extract_state_dict(checkpoint, use_ema)
    info = infer_arch(sd)
    if arch is not None:
        given = NomMer.parse_arch(arch)
        found = info['arch']
        for key in ('embed_dims', 'depths', 'bottleneck_ratios'):
            if _plain(given[key]) != _plain(found[key]):
                raise ConversionError(
                    f'--arch says {key}={given[key]}, the checkpoint has {found[key]}'
                )
        n = len(found['bottleneck_ratios'])
        if list(given['num_heads'][:n]) != found['num_heads'][:n]:
            raise ConversionError(
                f'--arch says num_heads[:{n}]={given["num_heads"][:n]}, the '
                f'checkpoint has {found["num_heads"][:n]}'
            )
        info['arch'] = given
    elif 'name' not in info['arch']:
        raise ConversionError(
            f'the checkpoint (embed_dims={info["arch"]["embed_dims"]}, depths='
            f'{info["arch"]["depths"]}) is no zoo arch; give --arch as a dict '
            "with the G-NomMer stages' num_heads, which the weights do not "
            'record'
        )
    info['arch'] = {k: info['arch'][k] for k in NomMer.ARCH_KEYS}

    out = OrderedDict()
    num_local = len(info['arch']['bottleneck_ratios'])
    for key, value in sd.items():
        new = _rename(key, num_local)
        if new is None:
            stage = int(_BLOCK_RE.match(key).group(1)) - 1
            _check_fixed(key, value, info['dct_blocks'][stage])
            continue
        if backbone_only:
            if not new.startswith('backbone.'):
                continue
            new = new[len('backbone.') :]
        out[new] = value
    _check_complete(out, info, backbone_only)
    return out, info
