import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nommer_mm import NomMer
from nommer_mm.analysis import count_flops, count_params
from nommer_mm.models.layers import WindowMSA, window_reverse

# A small arch keeps CPU tests fast; groups=8 needs C divisible by 8.
SMALL = dict(
    embed_dims=32, depths=[1, 1, 1, 1], num_heads=[2, 2, 2, 4], bottleneck_ratios=[2, 2]
)


def small_nommer(**kwargs) -> NomMer:
    kwargs.setdefault('arch', SMALL)
    return NomMer(**kwargs)


@pytest.mark.parametrize(
    'size', [(224, 224), (32, 32), (65, 97), (97, 65), (100, 150), (47, 33), (256, 320)]
)
def test_featmap_shapes_any_size(size):
    model = small_nommer().eval()
    H, W = size
    with torch.no_grad():
        outs = model(torch.randn(1, 3, H, W))
    assert len(outs) == 4
    for i, out in enumerate(outs):
        stride = 2 ** (i + 2)
        assert out.shape == (
            1,
            32 * 2**i,
            math.ceil(H / stride),
            math.ceil(W / stride),
        ), (i, out.shape)
        assert torch.isfinite(out).all()


def test_out_indices_subset_and_negative():
    model = small_nommer(out_indices=(1, -1)).eval()
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in outs] == [(2, 64, 8, 8), (2, 256, 2, 2)]
    # stage 3 is not needed: the forward stops early and builds no norm3
    model = small_nommer(out_indices=(0,)).eval()
    assert not hasattr(model, 'norm3')
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 32, 16, 16)
    with pytest.raises(ValueError, match='out_indices'):
        small_nommer(out_indices=(4,))


@pytest.mark.parametrize('out_type', ['cls_token', 'avg_featmap'])
def test_classification_out_types(out_type):
    model = small_nommer(out_indices=(2, 3), out_type=out_type).eval()
    outs = model(torch.randn(2, 3, 96, 64))
    assert outs[0].shape == (2, 128, 6, 4)
    assert outs[1].shape == (2, 256)
    assert hasattr(model, 'final_norm') and not hasattr(model, 'norm3')


def test_cls_token_stays_out_of_dense_output():
    """Changing the class token must not change any dense feature map."""
    model = small_nommer().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.cls_token.add_(5.0)
        after = model(x)
    # the class token is attended to in stage 3, so maps may change there,
    # but the dense output must be exactly the H/32 x W/32 patch grid
    assert after[3].shape == before[3].shape == (1, 256, 2, 2)
    for a, b in zip(before[:3], after[:3]):
        assert torch.equal(a, b)


def test_dense_stage3_is_norm3_of_the_patch_tokens():
    """Stage 3's map is ``norm3`` of its patch tokens, the class token
    (first in the sequence) dropped, laid out as (B, C, H/32, W/32)."""
    model = small_nommer().eval()
    seen = {}
    model.stages[3].register_forward_hook(lambda m, i, o: seen.update(tokens=o))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 64))[3]
    tokens = seen['tokens']
    assert tokens.shape == (2, 1 + 3 * 2, 256)
    expected = model.norm3(tokens[:, 1:]).reshape(2, 3, 2, 256).permute(0, 3, 1, 2)
    assert torch.equal(out, expected)


@pytest.mark.parametrize('num_local', [1, 3])
def test_stages_follow_the_arch(num_local):
    """``bottleneck_ratios`` sets how many leading stages are S-NomMer; the
    position embedding joins the first G stage, at its stride."""
    arch = dict(SMALL, bottleneck_ratios=[2] * num_local)
    dct = (8, 4, 2)[:num_local]
    model = small_nommer(arch=arch, dct_blocks=dct, img_size=128).eval()
    stride = 4 * 2**num_local
    assert model.pos_embed.shape == (1, 128 // stride, 128 // stride, 32 * stride // 4)
    kinds = [type(s.blocks[0]).__name__ for s in model.stages]
    assert kinds == ['SNomMerBlock'] * num_local + ['GNomMerBlock'] * (4 - num_local)
    x = torch.randn(1, 3, 100, 70)
    with torch.no_grad():
        outs = model(x)
    for i, out in enumerate(outs):
        s = 2 ** (i + 2)
        assert out.shape == (1, 32 * 2**i, math.ceil(100 / s), math.ceil(70 / s))
    assert list(model.nomination_maps()) == [
        f'stages.{i}.blocks.0' for i in range(num_local)
    ]
    # the position embedding is added where the G stages begin
    with torch.no_grad():
        model.pos_embed.add_(1.0)
        moved = model(x)
    assert all(torch.equal(a, b) for a, b in zip(outs[:num_local], moved[:num_local]))
    assert not torch.equal(outs[num_local], moved[num_local])
    with pytest.raises(ValueError, match=r'dct_blocks=\(8, 4\); expected one'):
        small_nommer(arch=arch)
    with pytest.raises(ValueError, match=f'side must be >= {stride}'):
        small_nommer(arch=arch, dct_blocks=dct, img_size=stride - 1)


def test_arch_needs_a_g_stage_at_the_end():
    with pytest.raises(ValueError, match=r"arch\['bottleneck_ratios'\]"):
        small_nommer(arch=dict(SMALL, bottleneck_ratios=[2] * 4), dct_blocks=(2,) * 4)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError) as err:
        NomMer(arch='huge')
    for name in ('tiny', 'small', 'base'):
        assert name in str(err.value)
    with pytest.raises(ValueError, match='bottleneck_ratios'):
        NomMer(arch=dict(embed_dims=32, depths=[1] * 4, num_heads=[1] * 4))


def test_gradients_reach_all_branches_and_nominator():
    torch.manual_seed(0)
    model = small_nommer().train()
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out).backward()
    mixer = model.stages[0].blocks[0].mixer
    for name in (
        'conv_context.conv1.weight',
        'window_context.qkv.weight',
        'window_context.relative_position_bias_table',
        'global_context.compress.weight',
        'global_context.attn.qkv.weight',
        'global_context.expand.weight',
        'nominator.fc.weight',
    ):
        grad = dict(mixer.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
    ]
    assert not missing, missing


def test_training_nomination_is_one_hot_and_stochastic():
    """Each position's output is exactly the nominated candidate (one-hot
    weights), the nomination is the argmax of the Gumbel-perturbed logits
    recomputed here, and it changes from call to call."""
    torch.manual_seed(0)
    model = small_nommer(out_indices=(0,)).train()
    nominator = model.stages[0].blocks[0].mixer.nominator
    seen = {}
    hooks = [
        nominator.register_forward_pre_hook(
            lambda m, args: seen.update(feats=[f.detach() for f in args[0]])
        ),
        nominator.register_forward_hook(
            lambda m, args, out: seen.update(out=out.detach())
        ),
    ]
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    model(x)
    first = model.nomination_maps()['stages.0.blocks.0'].clone()
    for h in hooks:
        h.remove()
    feats, index = seen['feats'], first
    chosen = torch.stack(feats, -1).gather(
        -1, index[..., None, None].expand(*index.shape, feats[0].shape[-1], 1)
    )[..., 0]
    torch.testing.assert_close(seen['out'], chosen, rtol=1e-6, atol=1e-6)
    assert first.shape == (2, 16, 16) and len(first.unique()) == 3
    # the same Gumbel draw, recomputed: the nomination is its argmax
    torch.manual_seed(1)
    model(x)
    logits = F.linear(sum(feats).double(), nominator.fc.weight.double())
    logits = logits + nominator.fc.bias.double()
    torch.manual_seed(1)
    # the stem's and blocks' randomness before the nominator: none in this
    # model (no dropout before stage 0's first mixer, drop path is per
    # sample after it), so the next draw is the nominator's
    noise = -torch.empty_like(logits.float()).exponential_().log()
    expected = ((logits.float() + noise) / nominator.tau).argmax(-1)
    assert torch.equal(model.nomination_maps()['stages.0.blocks.0'], expected)
    model(x)
    second = model.nomination_maps()['stages.0.blocks.0']
    assert not torch.equal(first, second)  # Gumbel noise differs per call


def test_eval_is_deterministic_and_maps_exposed():
    model = small_nommer().eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        a, b = model(x), model(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    maps = model.nomination_maps()
    assert list(maps) == ['stages.0.blocks.0', 'stages.1.blocks.0']
    assert maps['stages.0.blocks.0'].shape == (1, 18, 23)
    assert maps['stages.1.blocks.0'].shape == (1, 9, 12)


def test_dct_bases_are_buffers_not_parameters():
    model = small_nommer()
    names = [n for n, _ in model.named_parameters()]
    assert not any('dct' in n or 'relative_position_index' in n for n in names)
    state = model.state_dict()
    assert not any(k.endswith('.basis') or k.endswith('position_index') for k in state)


# The reference implementation's trainable parameters and fvcore FLOPs at
# 224 with 1000 classes, as published with it to two decimals (M, G).
REFERENCE_FIGURES = {
    'tiny': (22.46, 5.49),
    'small': (41.53, 10.09),
    'base': (73.40, 17.53),
}


@pytest.mark.slow
@pytest.mark.parametrize('arch', list(REFERENCE_FIGURES))
def test_classifier_params_match_reference(arch):
    from mmengine.registry import init_default_scope
    from mmpretrain.models import ImageClassifier

    init_default_scope('mmpretrain')  # earlier tests may leave another
    C = NomMer.arch_zoo[arch]['embed_dims']
    model = ImageClassifier(
        backbone=dict(type='NomMer', arch=arch, out_indices=(3,), out_type='cls_token'),
        head=dict(type='LinearClsHead', num_classes=1000, in_channels=8 * C),
    )
    n = count_params(model)
    assert round(n / 1e6, 2) == REFERENCE_FIGURES[arch][0], n


class _Classifier(nn.Module):
    def __init__(self, arch):
        super().__init__()
        C = NomMer.arch_zoo[arch]['embed_dims']
        self.backbone = NomMer(arch=arch, out_indices=(3,), out_type='cls_token')
        self.fc = nn.Linear(8 * C, 1000)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1])


@pytest.mark.slow
@pytest.mark.parametrize('arch', list(REFERENCE_FIGURES))
def test_classifier_flops_match_reference(arch):
    flops = count_flops(_Classifier(arch), torch.randn(1, 3, 224, 224))
    assert round(flops / 1e9, 2) == REFERENCE_FIGURES[arch][1], flops


TABLE4 = {
    'window_only': dict(contexts=('window',)),
    'window_conv_sum': dict(contexts=('conv', 'window'), fusion='sum'),
    'pooled_global_sum': dict(global_type='pooled', fusion='sum'),
    'dct_global_sum': dict(fusion='sum'),
    'full': dict(),
    'window_conv_nominator': dict(contexts=('window', 'conv')),
}


@pytest.mark.parametrize('name', list(TABLE4))
def test_ablation_variants_build_and_run(name):
    model = small_nommer(**TABLE4[name]).train()
    out = model(torch.randn(1, 3, 50, 70))
    sum(o.mean() for o in out).backward()
    mixer = model.stages[0].blocks[0].mixer
    wanted = TABLE4[name].get('contexts', ('conv', 'window', 'global'))
    assert set(mixer.contexts) == set(wanted)
    has_nominator = (
        TABLE4[name].get('fusion', 'nominator') == 'nominator' and len(wanted) > 1
    )
    assert (mixer.nominator is not None) == has_nominator
    assert bool(model.nomination_maps()) == has_nominator


def test_ablation_sum_is_sum_of_candidates():
    torch.manual_seed(0)
    mixer = small_nommer(fusion='sum').stages[0].blocks[0].mixer.eval()
    x = torch.randn(1, 16, 16, 32)
    with torch.no_grad():
        expected = (
            mixer.conv_context(x) + mixer.window_context(x) + mixer.global_context(x)
        )
        assert torch.allclose(mixer(x), expected, atol=1e-6)


def test_bad_ablation_switches_are_named():
    with pytest.raises(ValueError, match='contexts'):
        small_nommer(contexts=('conv', 'fourier'))
    with pytest.raises(ValueError, match='global_type'):
        small_nommer(global_type='fft')
    with pytest.raises(ValueError, match='fusion'):
        small_nommer(fusion='max')


def test_window_attention_ignores_padding():
    """On a 5x5 map (padded to 7x7), each token attends to the 25 real
    tokens only, with the relative position bias of their offsets."""
    torch.manual_seed(0)
    attn = WindowMSA(8, 2, window_size=7).eval()
    nn.init.normal_(attn.relative_position_bias_table)
    x = torch.randn(1, 5, 5, 8)
    with torch.no_grad():
        out = attn(x)
        # direct computation over the real tokens
        qkv = attn.qkv(x.view(1, 25, 8)).view(1, 25, 3, 2, 4)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        idx = torch.tensor([r * 7 + c for r in range(5) for c in range(5)])
        bias = attn.relative_position_bias()[:, idx][:, :, idx]
        a = (q @ k.transpose(-1, -2)) * 4**-0.5 + bias
        ref = attn.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(1, 25, 8))
    assert torch.allclose(out.view(1, 25, 8), ref, atol=1e-5)


@pytest.mark.parametrize('size', [(10, 15), (10, 16), (12, 15)])
def test_padded_window_attention_equals_full_mask(size):
    """Padded windows against a mask built here by slicing (the layer
    builds it from comparisons): values and gradients equal, with interior
    windows, both pads and batch 2."""
    from nommer_mm.models.layers.attention import window_partition

    torch.manual_seed(0)
    attn = WindowMSA(8, 2, window_size=4)
    nn.init.normal_(attn.relative_position_bias_table)
    x = torch.randn(2, *size, 8, requires_grad=True)

    def full_mask(x):
        H, W = x.shape[1:3]
        Hp, Wp = -(-H // 4) * 4, -(-W // 4) * 4
        xp = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        qkv = attn.qkv(window_partition(xp, 4)).view(-1, 16, 3, 2, 4)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        real = torch.zeros(1, Hp, Wp, 1, dtype=torch.bool)
        real[:, :H, :W] = True
        real = window_partition(real, 4)[..., 0].repeat(2, 1)
        mask = (
            attn.relative_position_bias()[None]
            + torch.zeros(real.shape).masked_fill(~real, float('-inf'))[:, None, None]
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = attn.proj(out.transpose(1, 2).reshape(-1, 16, 8))
        return window_reverse(out, 4, Hp, Wp)[:, :H, :W]

    params = [x, attn.relative_position_bias_table, attn.qkv.weight]
    out, ref = attn(x), full_mask(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    for g, r in zip(
        torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)
    ):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_frozen_stages_and_norm_eval():
    model = small_nommer(frozen_stages=1, norm_eval=True)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1], model.merges[0]]
    for m in frozen:
        assert not m.training
        assert all(not p.requires_grad for p in m.parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert all(p.requires_grad for p in model.merges[1].parameters())
    assert model.pos_embed.requires_grad
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert model.stages[2].training
    model = small_nommer(frozen_stages=3)
    model.train()
    assert not model.pos_embed.requires_grad
    assert not model.cls_token.requires_grad


@pytest.mark.parametrize('k', [-1, 0, 1, 2, 3])
def test_frozen_stages_freeze_exactly_their_parameters(k):
    """The frozen set, written out from the docstring: the stem and stages
    0..k with the merges into them and their output norms, the position
    embedding from stage 2 on, the class token at stage 3; their modules in
    eval mode after train(), every other module training."""
    model = small_nommer(frozen_stages=k)
    model.train()
    prefixes = (['stem.'] if k >= 0 else []) + [
        p
        for i in range(k + 1)
        for p in (f'stages.{i}.', f'norm{i}.', *([f'merges.{i - 1}.'] if i else []))
    ]
    expected = {n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))}
    expected |= {'pos_embed'} if k >= 2 else set()
    expected |= {'cls_token'} if k >= 3 else set()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == expected
    for name, module in model.named_modules():
        if name:
            assert module.training == (not (name + '.').startswith(tuple(prefixes))), (
                name
            )


def test_with_cp_matches_plain_gradients():
    torch.manual_seed(0)
    plain = small_nommer(drop_path_rate=0.2).train()
    ckpt = small_nommer(drop_path_rate=0.2, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)
        out = model(x)
        sum(o.square().mean() for o in out).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g1, g2 in zip(*grads):
        assert torch.allclose(g1, g2, atol=1e-5)
    # equal gradients also hold when with_cp is ignored: prove that the
    # blocks were recomputed in backward (each forward runs twice)
    calls = []
    hooks = [
        m.register_forward_hook(lambda *a, name=n: calls.append(name))
        for n, m in ckpt.named_modules()
        if n.endswith('.mixer') or n.endswith('.attn')
    ]
    out = ckpt(x.requires_grad_())
    forward_calls = len(calls)
    sum(o.square().mean() for o in out).backward()
    for h in hooks:
        h.remove()
    assert forward_calls == len(hooks)
    assert len(calls) == 2 * forward_calls


def test_syncbn_norm_cfg_is_used():
    model = small_nommer(norm_cfg=dict(type='SyncBN'))
    kinds = {type(m).__name__ for m in model.modules()}
    assert 'SyncBatchNorm' in kinds and 'BatchNorm2d' not in kinds


def test_nominator_runs_in_fp32_under_autocast(monkeypatch):
    from nommer_mm.models.layers import context

    model = small_nommer(out_indices=(0,)).train()
    seen = []
    logits = context.nominator_logits

    def recording(*args):
        seen.append(logits(*args).dtype)
        return logits(*args)

    monkeypatch.setattr(context, 'nominator_logits', recording)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert seen and set(seen) == {torch.float32}
    assert out[0].dtype == torch.bfloat16  # the rest ran in bf16


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_training_nomination_is_the_straight_through_formula(dtype):
    """The training nominator against the paper's formula written out here:
    w = hard - soft.detach() + soft, sum_p w_p * F_p."""
    from nommer_mm.models.layers import ContextNominator

    torch.manual_seed(0)
    nominator = ContextNominator(16, 3, tau=0.7).to(dtype).train()
    feats = [
        torch.randn(2, 5, 7, 16, dtype=dtype, requires_grad=True) for _ in range(3)
    ]
    probe = torch.randn(2, 5, 7, 16, dtype=dtype)
    params = [*feats, nominator.fc.weight, nominator.fc.bias]

    torch.manual_seed(1)
    out = nominator(feats)
    grads = torch.autograd.grad((out * probe).sum(), params)

    torch.manual_seed(1)  # the same Gumbel noise
    logits = F.linear(sum(feats), nominator.fc.weight, nominator.fc.bias)
    noise = -torch.empty_like(logits).exponential_().log()
    soft = ((logits + noise) / 0.7).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), 3).to(dtype)
    weights = hard - soft.detach() + soft
    expected = sum(f * weights[..., i : i + 1] for i, f in enumerate(feats))
    expected_grads = torch.autograd.grad((expected * probe).sum(), params)

    assert torch.equal(nominator.nomination, soft.argmax(-1))
    assert len(nominator.nomination.unique()) == 3  # all three chosen
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        assert got.dtype == want.dtype
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    # the nominator's weight gets a real (nonzero) gradient
    assert grads[-2].abs().sum() > 0


def test_pos_embed_resized_on_load():
    src = small_nommer(img_size=224)
    dst = small_nommer(img_size=384)
    assert dst.pos_embed.shape == (1, 24, 24, 128)
    dst.load_state_dict(src.state_dict())
    # the oracle is torch's bicubic resize itself, not the helper the load
    # hook calls: (1, h, w, C) -> (1, C, h, w) -> 24x24 -> back
    expected = torch.nn.functional.interpolate(
        src.pos_embed.data.permute(0, 3, 1, 2),
        size=(24, 24),
        mode='bicubic',
        align_corners=False,
    ).permute(0, 2, 3, 1)
    assert torch.allclose(dst.pos_embed, expected, atol=1e-6)
    assert not torch.allclose(dst.pos_embed[:, :14, :14], src.pos_embed)


def _bicubic(grid: torch.Tensor, size: tuple) -> torch.Tensor:
    """The oracle: torch's bicubic resize of a (1, C, h, w) grid."""
    return F.interpolate(grid, size=size, mode='bicubic', align_corners=False)


def _input_of(module: nn.Module, run) -> torch.Tensor:
    got = []
    hook = module.register_forward_pre_hook(lambda m, args: got.append(args[0]))
    with torch.no_grad():
        run()
    hook.remove()
    return got[0]


def test_nommer_pos_embed_interpolated_at_run_time():
    """At 96x160 the first G stage's input is the merge's output plus the
    224-grid position embedding resized bicubically to 6x10."""
    model = small_nommer(out_indices=(2,)).eval()
    nn.init.normal_(model.pos_embed)
    x = torch.randn(1, 3, 96, 160)
    merged = _input_of(model.stages[2], lambda: model(x))
    base = model.merges[1](_input_of(model.merges[1], lambda: model(x)))
    pos = _bicubic(model.pos_embed.permute(0, 3, 1, 2), (6, 10)).permute(0, 2, 3, 1)
    assert merged.shape == (1, 60, 128)  # the stage's token sequence
    torch.testing.assert_close(merged.view(1, 6, 10, 128) - base, pos)


def test_visformer_pos_embeds_interpolated_at_run_time():
    from small_archs import SMALL

    from nommer_mm import Visformer

    model = Visformer(**SMALL[Visformer]).eval()
    x = torch.randn(1, 3, 96, 160)
    for i, size in [(1, (12, 20)), (2, (6, 10)), (3, (3, 5))]:
        pos = getattr(model, f'pos_embed{i}')
        nn.init.normal_(pos)
        embedded = _input_of(getattr(model, f'stage{i}'), lambda: model(x))
        patches = getattr(model, f'patch_embed{i}')(
            _input_of(getattr(model, f'patch_embed{i}'), lambda: model(x))
        )
        assert embedded.shape[-2:] == size, i
        torch.testing.assert_close(
            embedded - patches, _bicubic(pos, size).expand_as(patches)
        )


def test_gcvit_global_query_resized_at_run_time():
    """A level built for 224 given a 96x160 input: its global query is the
    pooled map resized bicubically to the window."""
    from small_archs import SMALL

    from nommer_mm import GCViT

    model = GCViT(**SMALL[GCViT]).eval()
    gen = model.levels[1].q_global_gen
    x = torch.randn(1, 3, 96, 160)
    got = []
    hook = gen.register_forward_hook(lambda m, args, out: got.append((args[0], out)))
    with torch.no_grad():
        model(x)
    hook.remove()
    level_input, query = got[0]
    pooled = gen.to_q_global(level_input.permute(0, 3, 1, 2))
    ws = gen.window_size
    assert pooled.shape[-2:] != (ws, ws)
    expected = _bicubic(pooled, (ws, ws))
    B, C = expected.shape[:2]
    expected = expected.permute(0, 2, 3, 1).reshape(B, ws * ws, gen.num_heads, -1)
    torch.testing.assert_close(query, expected.transpose(1, 2))


def test_gcvit_layer_scale_is_the_blocks_gamma():
    """With layer scale, a block's residual branches are scaled by its own
    gamma1 / gamma2 (the checkpoint keys, no ls1.* / ls2.* keys), also after
    a load that replaces the parameters (assign=True); TorchDynamo traces
    the block in one graph."""
    import torch._dynamo as dynamo
    from small_archs import SMALL

    from nommer_mm import GCViT

    arch = dict(SMALL[GCViT]['arch'], layer_scale=0.5)
    model = GCViT(arch=arch, out_indices=(3,)).eval()
    keys = list(model.state_dict())
    assert 'levels.0.blocks.0.gamma1' in keys and 'levels.3.blocks.0.gamma2' in keys
    assert not any('.ls1.' in k or '.ls2.' in k for k in keys)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        before = model(x)[0]
        state = {
            k: v * 4 if '.gamma' in k else v for k, v in model.state_dict().items()
        }
        model.load_state_dict(state, assign=True)
        block = model.levels[0].blocks[0]
        y = torch.randn(2, 16)
        assert torch.equal(block.ls1(y), y * block.gamma1)
        assert not torch.equal(model(x)[0], before)
    assert isinstance(GCViT(**SMALL[GCViT]).levels[0].blocks[0].ls1, nn.Identity)
    dynamo.reset()
    explained = dynamo.explain(model)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0


def test_pretrained_init_cfg_with_prefix(tmp_path):
    src = small_nommer(out_indices=(3,), out_type='cls_token')
    state = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(10, 256)
    path = tmp_path / 'cls.pth'
    torch.save(dict(state_dict=state), path)
    dense = small_nommer(
        init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    )
    dense.init_weights()
    for key in (
        'stem.conv.weight',
        'pos_embed',
        'stages.1.blocks.0.mixer.nominator.fc.weight',
    ):
        assert torch.equal(dense.state_dict()[key], src.state_dict()[key])


def test_eval_with_autograd_selects_out_of_place():
    """An eval model with gradients on (e.g. for input saliency): the same
    output as under no_grad, and the input gets a gradient through the
    nominated candidates."""
    model = small_nommer(out_indices=(0, 1)).eval()
    x = torch.randn(1, 3, 61, 67)
    with torch.no_grad():
        expected = model(x)
    x.requires_grad_()
    out = model(x)
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    sum(o.sum() for o in out).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_nomination_contexts_name_the_indices():
    """Index k of nomination_maps() is nomination_contexts()[k], in the
    reference order whatever order the config gives."""
    model = NomMer(arch='tiny', contexts=('window', 'conv')).eval()
    assert model.nomination_contexts() == ('conv', 'window')
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    maps = model.nomination_maps()
    assert len(maps) == 4
    assert all(int(m.max()) < 2 for m in maps.values())


def test_nomination_margins_are_the_gaps_behind_each_nomination():
    """nomination_margins() records, per nominating block, the gap between
    the two largest nominator logits: equal to the gap recomputed here in
    float64 from the candidates each nominator received, whose argmax is
    the nomination wherever the gap is clear; the hooks go on exit."""
    from nommer_mm.analysis import nomination_margins

    torch.manual_seed(0)
    model = NomMer(arch='tiny').eval()
    x = torch.randn(1, 3, 64, 96)
    inputs = {}
    hooks = [
        nominator.register_forward_pre_hook(
            lambda m, args, name=name: inputs.update({name: args[0]})
        )
        for name, nominator in model.nominators()
    ]
    with torch.no_grad(), nomination_margins(model) as margins:
        model(x)
    for h in hooks:
        h.remove()
    maps = model.nomination_maps()
    assert margins.keys() == maps.keys() and len(margins) == 4
    for name, nominator in model.nominators():
        summed = sum(f.double() for f in inputs[name])
        logits = summed @ nominator.fc.weight.double().T + nominator.fc.bias.double()
        top2 = logits.topk(2, dim=-1)
        gap = top2.values[..., 0] - top2.values[..., 1]
        torch.testing.assert_close(margins[name].double(), gap, rtol=1e-4, atol=1e-5)
        clear = gap > 1e-4
        assert clear.float().mean() > 0.9
        assert torch.equal(maps[name][clear], top2.indices[..., 0][clear])
    assert not any(nominator._forward_pre_hooks for _, nominator in model.nominators())
