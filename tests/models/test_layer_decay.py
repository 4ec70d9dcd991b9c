"""Layer-wise lr decay with our backbones from the mmpretrain, mmdet and
mmseg scopes: mmpretrain's contract (stem 0, one depth per block, norms
and heads last) and learning rates that fall with depth."""

import re
import warnings
from pathlib import Path

import pytest
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import nommer_mm  # noqa: F401  (backbones, LayerDecayOptimWrapperConstructor)
from nommer_mm import CoTNet, GCViT, NomMer, Visformer
from small_archs import SMALL

ROOT = Path(__file__).resolve().parents[2]


# the stem's first weight, and the prefix of block b of stage s
LAYOUT = {
    NomMer: ('stem.conv.weight', 'stages.{s}.blocks.{b}.'),
    GCViT: ('patch_embed.proj.weight', 'levels.{s}.blocks.{b}.'),
    Visformer: ('stem.0.weight', 'stage{s1}.{b}.'),
    CoTNet: ('conv1.0.weight', 'layer{s1}.{b}.'),
}


@pytest.mark.parametrize('cls', list(SMALL), ids=lambda c: c.__name__)
def test_depths_follow_the_blocks(cls):
    model = cls(**SMALL[cls])
    stage_depths = SMALL[cls]['arch']['depths']
    total = sum(stage_depths)
    found = {n: model.get_layer_depth(n) for n, _ in model.named_parameters()}
    assert {num for _, num in found.values()} == {total + 2}
    stem, block = LAYOUT[cls]
    assert found[stem][0] == 0
    k = 0
    for s, n in enumerate(stage_depths):
        for b in range(n):
            k += 1
            prefix = block.format(s=s, s1=s + 1, b=b)
            depths = {d for name, (d, _) in found.items() if name.startswith(prefix)}
            assert depths == {k}, (prefix, depths)
    assert all(0 <= d <= total + 1 for d, _ in found.values())
    for name, (depth, _) in found.items():
        if name.startswith(('norm', 'upsample0', 'final_norm')):
            assert depth == total + 1, name
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (
        total + 1,
        total + 2,
    )
    assert model.get_layer_depth('backbone.' + stem, 'backbone.')[0] == 0


def test_nommer_depths_by_part():
    model = NomMer(**SMALL[NomMer])  # depths 1, 2, 2, 1
    depth = lambda n: model.get_layer_depth(n)[0]  # noqa: E731
    assert depth('stem.conv.weight') == 0
    assert depth('stages.0.blocks.0.norm1.weight') == 1
    assert depth('stages.1.blocks.1.mlp.fc1.weight') == 3
    assert depth('merges.1.conv.weight') == 3  # ends stage 1
    assert depth('pos_embed') == 3  # added to stage 2's input
    assert depth('stages.2.blocks.0.attn.qkv.weight') == 4
    assert depth('cls_token') == 5  # joins at stage 3
    assert depth('stages.3.blocks.0.mlp.fc2.weight') == 6
    assert depth('norm3.weight') == 7


def _check_falling(model, wrapper, prefix):
    """lr grows with depth; the stem gets base * r ** (D - 1)."""
    names = {id(p): n for n, p in model.named_parameters()}
    base = wrapper.optimizer.defaults['lr']
    by_depth = {}
    for group in wrapper.optimizer.param_groups:
        name = names[id(group['params'][0])]
        depth, num = (
            model.get_layer_depth(name)
            if hasattr(model, 'get_layer_depth')
            else model.backbone.get_layer_depth(name, prefix)
        )
        by_depth.setdefault(depth, set()).add(round(group['lr'], 12))
    assert all(len(lrs) == 1 for lrs in by_depth.values()), by_depth
    lrs = [by_depth[d].pop() for d in sorted(by_depth)]
    assert lrs == sorted(lrs) and len(set(lrs)) == len(lrs)
    assert lrs[0] == pytest.approx(base * 0.5 ** (num - 1))
    assert lrs[-1] == pytest.approx(base)


def test_mmpretrain_classifier_with_mmpretrains_constructor():
    pytest.importorskip('mmpretrain')
    from mmpretrain.registry import MODELS

    init_default_scope('mmpretrain')
    model = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(
                type='NomMer', out_type='cls_token', out_indices=(3,), **SMALL[NomMer]
            ),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=128),
        )
    )
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            constructor='LearningRateDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.5),
        ),
    )
    _check_falling(model, wrapper, 'backbone.')


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_dense_models_with_our_constructor(scope):
    pytest.importorskip(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS

        cfg = dict(
            type='RetinaNet',
            data_preprocessor=dict(type='DetDataPreprocessor'),
            backbone=dict(type='GCViT', out_indices=(1, 2, 3), **SMALL[GCViT]),
            neck=dict(
                type='FPN', in_channels=[32, 64, 128], out_channels=16, num_outs=3
            ),
            bbox_head=dict(
                type='RetinaHead',
                num_classes=2,
                in_channels=16,
                feat_channels=16,
                anchor_generator=dict(
                    type='AnchorGenerator',
                    octave_base_scale=4,
                    scales_per_octave=1,
                    ratios=[1.0],
                    strides=[8, 16, 32],
                ),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
            ),
        )
    else:
        from mmseg.registry import MODELS

        cfg = dict(
            type='EncoderDecoder',
            backbone=dict(type='NomMer', **SMALL[NomMer]),
            decode_head=dict(
                type='FCNHead',
                in_channels=128,
                channels=8,
                in_index=3,
                num_convs=1,
                num_classes=2,
            ),
        )
    init_default_scope(scope)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = MODELS.build(ConfigDict(cfg))
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            constructor='LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.5),
        ),
    )
    _check_falling(model, wrapper, 'backbone.')
    assert isinstance(model.backbone, nn.Module)


def test_example_config_builds_its_optimizer():
    pytest.importorskip('mmseg')
    from nommer_mm.launch import load_config  # mmseg:: bases on either stack

    cfg = load_config(
        str(
            ROOT / 'configs/seg/upernet_nommer-t-layer-decay_8xb2-160k_'
            'ade20k-512x512.py'
        )
    )
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.arch = SMALL[NomMer]['arch']
    cfg.model.decode_head.in_channels = [16, 32, 64, 128]
    cfg.model.auxiliary_head.in_channels = 64
    cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type='BN')
    cfg.model.backbone.norm_cfg = dict(type='BN')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = wrapper.optimizer.param_groups
    stem = next(g for g in groups if g['layer_depth'] == 0)
    assert stem['lr'] == pytest.approx(6e-5 * 0.9 ** (sum([1, 2, 2, 1]) + 1))
    # the config's no-decay keys still apply
    norms = [
        g
        for g in groups
        if g['params'][0].ndim == 1 and g.get('weight_decay', 0.01) == 0
    ]
    assert norms


# ------------------------------------------- the depth of every parameter
# The rule (docs/backbones.md, "Layer-wise learning-rate decay", and the
# backbones' comments), written out here per backbone: blocks are numbered
# 1, 2, ... in the order the forward runs them; the stem is depth 0; a
# downsampler that ends a stage, and what is added to a stage's input
# (position embeddings, NomMer's class token), take the depth of the block
# before it (0 before the first block); GC ViT's global-query generator
# feeds every block of its level and takes the level's first block's
# depth; output norms (and Visformer's upsampling to output 0) come after
# the last block, at sum(depths) + 1, the last of sum(depths) + 2 depths.
def _numbering(depths) -> tuple[dict, dict]:
    """{(stage, block): depth} in forward order and {stage: the depth of its
    last block}, with stage -1 the stem (depth 0)."""
    block, end, k = {}, {-1: 0}, 0
    for s, n in enumerate(depths):
        for b in range(n):
            k += 1
            block[s, b] = k
        end[s] = k
    return block, end


def _expected_depth(cls, arch: dict, name: str) -> int:
    depths = arch['depths']
    block, end = _numbering(depths)
    last = sum(depths) + 1
    rules = {  # (pattern, depth from the match) in the backbone's names
        NomMer: [
            (r'stem\..+', lambda m: 0),
            (r'stages\.(\d)\.blocks\.(\d+)\..+', lambda m: block[int(m[1]), int(m[2])]),
            (r'merges\.(\d)\..+', lambda m: end[int(m[1])]),  # ends stage i
            # added to the input of the first global (G-NomMer) stage, the
            # one after the bottleneck (S-NomMer) stages
            (r'pos_embed', lambda m: end[len(arch['bottleneck_ratios']) - 1]),
            (r'cls_token', lambda m: end[2]),  # joins the tokens at stage 3
            (r'norm[0-3]\..+', lambda m: last),
        ],
        GCViT: [
            (r'patch_embed\..+', lambda m: 0),  # conv and its ReduceSize
            (r'levels\.(\d)\.blocks\.(\d+)\..+', lambda m: block[int(m[1]), int(m[2])]),
            (r'levels\.(\d)\.q_global_gen\..+', lambda m: block[int(m[1]), 0]),
            (r'levels\.(\d)\.downsample\..+', lambda m: end[int(m[1])]),
            (r'norm[0-3]\..+', lambda m: last),
        ],
        Visformer: [  # stages 1..3: depths[0..2]
            (r'stem\..+', lambda m: 0),
            (r'stage([1-3])\.(\d+)\..+', lambda m: block[int(m[1]) - 1, int(m[2])]),
            (r'patch_embed([1-3])\..+', lambda m: end[int(m[1]) - 2]),
            (r'pos_embed([1-3])', lambda m: end[int(m[1]) - 2]),
            (r'(norm[0-3]|upsample0)\..+', lambda m: last),
        ],
        CoTNet: [  # layers 1..4: depths[0..3]
            (r'(conv1|bn1)\..+', lambda m: 0),
            (r'layer([1-4])\.(\d+)\..+', lambda m: block[int(m[1]) - 1, int(m[2])]),
        ],
    }[cls]
    found = [depth(m) for p, depth in rules if (m := re.fullmatch(p, name))]
    assert len(found) == 1, f'{name}: {len(found)} rules of the table match'
    return found[0]


# The tiny arch of each backbone and one more. NomMer and GC ViT at their
# zoo depths with the widths narrowed (the names, hence the depths, are the
# zoo arch's; building them at full width costs seconds).
NARROW = dict(embed_dims=8, num_heads=[1, 1, 1, 1])
DECAY_ARCHS = [
    (NomMer, 'tiny', NARROW),
    (NomMer, 'small', NARROW),
    (GCViT, 'tiny', NARROW),
    (GCViT, 'small', NARROW),  # layer scale: gamma1 / gamma2 in the blocks
    (Visformer, 'tiny', {}),
    (Visformer, 'small', {}),
    (CoTNet, 'cotnet50', {}),
    (CoTNet, 'se-cotnetd50', {}),  # deep stem, average-pool shortcuts, SE
]


@pytest.mark.parametrize(
    'cls,arch,narrow', DECAY_ARCHS, ids=[f'{c.__name__}-{a}' for c, a, _ in DECAY_ARCHS]
)
def test_every_parameter_has_the_depth_of_the_rule(cls, arch, narrow):
    settings = {**cls.arch_zoo[arch], **narrow}
    assert set(settings) == set(cls.arch_zoo[arch])  # widths only
    model = cls(arch=settings)
    num = sum(settings['depths']) + 2
    wrong = {
        name: (got, expected)
        for name, _ in model.named_parameters()
        if (got := model.get_layer_depth(name))
        != (expected := (_expected_depth(cls, settings, name), num))
    }
    assert not wrong, f'(depth, of) got vs the rule: {wrong}'
    # not vacuous: the stem, every block and (CoTNet has none) the output
    # norms hold parameters
    depths = {_expected_depth(cls, settings, n) for n, _ in model.named_parameters()}
    assert depths == set(range(num - 1 if cls is CoTNet else num))
