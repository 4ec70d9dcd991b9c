"""Convert checkpoints of the peer backbones to this plugin's layout.

Supported sources (``layout``):

- GC ViT: ``'nvlabs'`` (NVlabs/GCVit, ``models/gc_vit.py``) and ``'timm'``
  (``timm.models.gcvit``).
- Visformer: ``'reference'`` (danczs/Visformer, ``models.py``) and
  ``'timm'`` (``timm.models.visformer``).
- CoTNet: ``'reference'`` (JDAI-CV/CoTNet, ``models/cotnet.py`` and
  ``models/cotnet_hybrid.py``).

The result is an mmpretrain ``ImageClassifier`` state dict (``backbone.*``,
``head.fc.*``) or, with ``backbone_only``, the backbone alone. Every
converted key must exist in the target model with the same shape and every
target key must be filled, otherwise :class:`ConversionError` names them.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Callable

import torch

from .common import ConversionError, Rules, extract_state_dict, need, rename


# Sub-rules are written with named groups (``t`` = the key's tail) so they
# can be nested under prefixes that have groups of their own.
_MBCONV_TIMM = [
    (r'conv_dw\.(?P<t>.+)', r'conv.0.\g<t>'),
    (r'se\.fc1\.(?P<t>.+)', r'conv.2.fc.0.\g<t>'),
    (r'se\.fc2\.(?P<t>.+)', r'conv.2.fc.2.\g<t>'),
    (r'conv_pw\.(?P<t>.+)', r'conv.3.\g<t>'),
]
_REDUCE_TIMM = [(r'(?P<t>(norm1|norm2|reduction)\..+)', r'\g<t>')] + [
    (r'conv_block\.' + p, r) for p, r in _MBCONV_TIMM
]


def _nest(prefix_from: str, prefix_to: str, rules: Rules) -> Rules:
    return [(prefix_from + p, prefix_to + r) for p, r in rules]


_BLOCK = r'stages\.(?P<s>\d)\.blocks\.(?P<b>\d+)\.'
_LEVEL_BLOCK = r'backbone.levels.\g<s>.blocks.\g<b>.'

GCVIT_RULES = {
    'timm': [
        (r'stem\.conv1\.(?P<t>.+)', r'backbone.patch_embed.proj.\g<t>'),
        *_nest(r'stem\.down\.', 'backbone.patch_embed.conv_down.', _REDUCE_TIMM),
        *[
            rule
            for i in (1, 2, 3)
            for rule in _nest(
                rf'stages\.{i}\.downsample\.',
                f'backbone.levels.{i - 1}.downsample.',
                _REDUCE_TIMM,
            )
        ],
        *[
            rule
            for k in (1, 2, 3)
            for rule in _nest(
                rf'stages\.(?P<s>\d)\.global_block\.blocks\.conv{k}\.',
                rf'backbone.levels.\g<s>.q_global_gen.to_q_global.{k - 1}.',
                _MBCONV_TIMM,
            )
        ],
        (
            _BLOCK + r'attn\.rel_pos\.relative_position_bias_table',
            _LEVEL_BLOCK + 'attn.relative_position_bias_table',
        ),
        (_BLOCK + r'attn\.rel_pos\.relative_position_index', None),
        (_BLOCK + r'ls1\.gamma', _LEVEL_BLOCK + 'gamma1'),
        (_BLOCK + r'ls2\.gamma', _LEVEL_BLOCK + 'gamma2'),
        (_BLOCK + r'(?P<t>.+)', _LEVEL_BLOCK + r'\g<t>'),
        (r'stages\.3\.norm\.(?P<t>.+)', r'backbone.norm3.\g<t>'),
        (r'head\.fc\.(?P<t>.+)', r'head.fc.\g<t>'),
    ],
    'nvlabs': [
        (r'.+\.relative_position_index', None),
        # Early releases kept the query generator directly in the level.
        (
            r'levels\.(?P<s>\d)\.to_q_global\.(?P<t>.+)',
            r'backbone.levels.\g<s>.q_global_gen.to_q_global.\g<t>',
        ),
        (r'norm\.(?P<t>.+)', r'backbone.norm3.\g<t>'),
        (r'head\.(?P<t>.+)', r'head.fc.\g<t>'),
        (r'(?P<t>(patch_embed|levels)\..+)', r'backbone.\g<t>'),
    ],
}


def _gcvit_fix_shapes(state: OrderedDict) -> OrderedDict:
    # timm's squeeze-excite uses 1x1 convs where the reference has Linear.
    for key, value in state.items():
        if '.conv.2.fc.' in key and value.ndim == 4:
            state[key] = value.flatten(1)
    return state


def infer_gcvit_arch(state: dict) -> dict | str:
    """GC ViT arch settings read from a converted (``backbone.*``) state."""
    from ..models.backbones.gcvit import GCViT

    depths = [
        len(
            {
                k.split('.')[4]
                for k in state
                if k.startswith(f'backbone.levels.{i}.blocks.')
            }
        )
        for i in range(4)
    ]
    heads = [
        state[f'backbone.levels.{i}.blocks.0.attn.relative_position_bias_table'].shape[
            1
        ]
        for i in range(4)
    ]
    C = need(state, 'backbone.patch_embed.proj.weight').shape[0]
    fc1 = need(state, 'backbone.levels.0.blocks.0.mlp.fc1.weight')
    gamma = state.get('backbone.levels.0.blocks.0.gamma1')
    arch = dict(
        embed_dims=C,
        depths=depths,
        num_heads=heads,
        mlp_ratio=fc1.shape[0] / C,
        layer_scale=None if gamma is None else float(gamma.abs().max()),
    )
    return _match_zoo(GCViT, arch)


def _match_zoo(
    model_cls, arch: dict, none_only: tuple = ('layer_scale',), skip: tuple = ()
) -> dict | str:
    """The zoo name whose settings equal ``arch`` (``none_only`` keys
    compared for None-ness, ``skip`` keys not at all), else ``arch``."""
    names = [
        name
        for name, setting in model_cls.arch_zoo.items()
        if all(
            (arch[k] is None) == (setting[k] is None)
            if k in none_only
            else list(arch[k]) == list(setting[k])
            if isinstance(setting[k], list)
            else arch[k] == setting[k]
            for k in setting
            if k not in skip
        )
    ]
    # a zoo entry has a short and a long name ('t', 'tiny'): give the long
    return max(names, key=len) if names else arch


def _check_against(
    model: torch.nn.Module, state: OrderedDict, prefix: str = 'backbone.'
) -> None:
    target = {prefix + k: v for k, v in model.state_dict().items()}
    got = {k: v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(set(target) - set(got))
    unexpected = sorted(set(got) - set(target))
    wrong = [
        f'{k}: {tuple(got[k].shape)} vs {tuple(target[k].shape)}'
        for k in set(got) & set(target)
        if got[k].shape != target[k].shape
    ]
    if missing or unexpected or wrong:
        raise ConversionError(
            'converted weights do not fit the model: '
            f'missing {missing[:8]}{" ..." if len(missing) > 8 else ""}; '
            f'unexpected {unexpected[:8]}; wrong shape {wrong[:8]}'
        )


def _finish(state: OrderedDict, backbone_only: bool) -> OrderedDict:
    head = [k for k in ('head.fc.weight', 'head.fc.bias') if k not in state]
    if head and not backbone_only:
        raise ConversionError(
            f'the checkpoint has no classifier head ({", ".join(head)} '
            'missing after renaming); convert with backbone_only '
            '(--backbone-only) for the backbone alone'
        )
    if backbone_only:
        return OrderedDict(
            (k[len('backbone.') :], v)
            for k, v in state.items()
            if k.startswith('backbone.')
        )
    return state


def _load_and_rename(
    checkpoint: dict, use_ema: bool, model: str, rules: dict, layout: str, markers: dict
) -> OrderedDict:
    """The model weights of ``checkpoint``, renamed by the ``rules`` of its
    layout. ``layout='auto'`` takes the first layout in ``markers`` (layout
    -> key regex) whose pattern some key matches."""
    state = extract_state_dict(checkpoint, use_ema)
    if layout == 'auto':
        layout = next(
            (
                name
                for name, marker in markers.items()
                if any(re.match(marker, k) for k in state)
            ),
            None,
        )
        if layout is None:
            raise ConversionError(
                f'cannot tell the {model} checkpoint layout (looked for '
                f'{markers}); pass layout= explicitly. First keys: '
                f'{list(state)[:5]}'
            )
    if layout not in rules:
        raise ConversionError(
            f'unknown {model} layout {layout!r}; choose one of {sorted(rules)}'
        )
    return rename(state, rules[layout], f'{model} ({layout})')


def convert_gcvit(
    checkpoint: dict,
    layout: str = 'auto',
    backbone_only: bool = False,
    use_ema: bool = False,
) -> tuple[OrderedDict, dict]:
    """GC ViT checkpoint -> (state dict, backbone kwargs)."""
    from ..models.backbones.gcvit import GCViT

    out = _gcvit_fix_shapes(
        _load_and_rename(
            checkpoint,
            use_ema,
            'GC ViT',
            GCVIT_RULES,
            layout,
            markers={'timm': r'stem\.conv1\.', 'nvlabs': r'patch_embed\.proj\.'},
        )
    )
    arch = infer_gcvit_arch(out)
    info = dict(arch=arch)
    _check_against(GCViT(arch=arch, out_indices=(3,)), out)
    return _finish(out, backbone_only), info


VISFORMER_RULES = {
    'timm': [
        (r'norm\.(?P<t>.+)', r'backbone.norm3.\g<t>'),
        (r'head\.(?P<t>.+)', r'head.fc.\g<t>'),
        (r'(?P<t>(stem|patch_embed\d|pos_embed\d|stage\d).*)', r'backbone.\g<t>'),
    ],
    'reference': [
        # The reference wraps every BatchNorm as `.bn`.
        (r'norm\.bn\.(?P<t>.+)', r'backbone.norm3.\g<t>'),
        (r'head\.(?P<t>.+)', r'head.fc.\g<t>'),
        (
            r'(?P<m>(stem|patch_embed\d|stage\d).*)\.bn\.(?P<t>[^.]+)',
            r'backbone.\g<m>.\g<t>',
        ),
        (r'(?P<t>(stem|patch_embed\d|pos_embed\d|stage\d).*)', r'backbone.\g<t>'),
    ],
}


def infer_visformer_arch(state: dict) -> dict | str:
    from ..models.backbones.visformer import Visformer

    depths = [
        len({k.split('.')[2] for k in state if k.startswith(f'backbone.stage{i}.')})
        for i in (1, 2, 3)
    ]
    C = need(state, 'backbone.patch_embed2.proj.weight').shape[0]
    return _match_zoo(
        Visformer,
        dict(
            stem_channels=need(state, 'backbone.stem.0.weight').shape[0],
            embed_dims=C,
            depths=depths,
            num_heads=None,
        ),
        skip=('num_heads',),
    )


def convert_visformer(
    checkpoint: dict,
    layout: str = 'auto',
    backbone_only: bool = False,
    use_ema: bool = False,
    num_heads: int | None = None,
) -> tuple[OrderedDict, dict]:
    """Visformer checkpoint -> (state dict, backbone kwargs). Heads are not
    visible in the weights: zoo archs carry theirs, others need
    ``num_heads``."""
    from ..models.backbones.visformer import Visformer

    # the reference wraps its BatchNorms as `.bn`; otherwise timm's layout
    out = _load_and_rename(
        checkpoint,
        use_ema,
        'Visformer',
        VISFORMER_RULES,
        layout,
        markers={'reference': r'.*\.bn\.', 'timm': ''},
    )
    arch = infer_visformer_arch(out)
    if isinstance(arch, dict):
        if num_heads is None:
            raise ConversionError('not a zoo Visformer; give num_heads')
        arch['num_heads'] = num_heads
    pos = out['backbone.pos_embed1'].shape[-2:]
    info = dict(arch=arch, img_size=[8 * pos[0], 8 * pos[1]])
    _check_against(Visformer(**info, out_indices=(3,)), out)
    return _finish(out, backbone_only), info


COTNET_RULES = {
    'reference': [
        (r'fc\.(?P<t>.+)', r'head.fc.\g<t>'),
        (r'(?P<t>(conv1|bn1|layer\d)\..+)', r'backbone.\g<t>'),
    ],
}


def infer_cotnet_arch(state: dict) -> dict | str:
    """CoTNet arch settings read from a converted (``backbone.*``) state."""
    from ..models.backbones.cotnet import CoTNet

    depths = [
        len({k.split('.')[2] for k in state if k.startswith(f'backbone.layer{i}.')})
        for i in range(1, 5)
    ]
    deep = 'backbone.conv1.0.weight' in state
    width = need(state, 'backbone.layer1.0.conv1.weight').shape[0]
    key_groups = 1
    for k, v in state.items():  # the first CoT layer's key conv tells
        if k.endswith('conv2.key_embed.0.weight'):
            key_groups = v.shape[0] // v.shape[1]
            break
    cardinality = max(key_groups // 4, 1)
    se_blocks = [
        sorted(
            {
                int(k.split('.')[2])
                for k in state
                if k.startswith(f'backbone.layer{i}.') and '.conv2.bn0.' in k
            }
        )
        for i in range(1, 5)
    ]
    return _match_zoo(
        CoTNet,
        dict(
            depths=depths,
            cardinality=cardinality,
            base_width=width // cardinality,  # layer1 has 64 planes
            stem='deep' if deep else 'resnet',
            stem_width=(
                need(state, 'backbone.conv1.0.weight').shape[0] if deep else 64
            ),
            avg_down='backbone.layer1.0.downsample.2.weight' in state,
            se_blocks=se_blocks,
        ),
        none_only=(),
    )


def convert_cotnet(
    checkpoint: dict,
    layout: str = 'reference',
    backbone_only: bool = False,
    use_ema: bool = False,
) -> tuple[OrderedDict, dict]:
    """CoTNet / CoTNeXt / SE-CoTNetD checkpoint -> (state dict, backbone
    kwargs)."""
    from ..models.backbones.cotnet import CoTNet

    out = _load_and_rename(
        checkpoint, use_ema, 'CoTNet', COTNET_RULES, layout, markers={'reference': ''}
    )
    arch = infer_cotnet_arch(out)
    _check_against(CoTNet(arch=arch, out_indices=(3,)), out)
    return _finish(out, backbone_only), dict(arch=arch)


CONVERTERS: dict[str, Callable] = {
    'gcvit': convert_gcvit,
    'visformer': convert_visformer,
    'cotnet': convert_cotnet,
}
