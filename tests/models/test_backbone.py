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
    torch.manual_seed(0)
    model = small_nommer(out_indices=(0,)).train()
    x = torch.randn(2, 3, 64, 64)
    model(x)
    first = model.nomination_maps()['stages.0.blocks.0'].clone()
    model(x)
    second = model.nomination_maps()['stages.0.blocks.0']
    assert first.shape == (2, 16, 16)
    assert set(first.unique().tolist()) <= {0, 1, 2}
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


@pytest.mark.parametrize(
    'arch,expected', [('tiny', 22.46e6), ('small', 41.53e6), ('base', 73.40e6)]
)
def test_classifier_params_match_reference(arch, expected):
    from mmengine.registry import init_default_scope
    from mmpretrain.models import ImageClassifier

    init_default_scope('mmpretrain')  # earlier tests may leave another
    C = NomMer.arch_zoo[arch]['embed_dims']
    model = ImageClassifier(
        backbone=dict(type='NomMer', arch=arch, out_indices=(3,), out_type='cls_token'),
        head=dict(type='LinearClsHead', num_classes=1000, in_channels=8 * C),
    )
    n = count_params(model)
    assert abs(n - expected) / expected < 0.005, n


class _Classifier(nn.Module):
    def __init__(self, arch):
        super().__init__()
        C = NomMer.arch_zoo[arch]['embed_dims']
        self.backbone = NomMer(arch, out_indices=(3,), out_type='cls_token')
        self.fc = nn.Linear(8 * C, 1000)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1])


@pytest.mark.parametrize(
    'arch,expected', [('tiny', 5.49e9), ('small', 10.09e9), ('base', 17.53e9)]
)
def test_classifier_flops_match_reference(arch, expected):
    flops = count_flops(_Classifier(arch), torch.randn(1, 3, 224, 224))
    assert abs(flops - expected) / expected < 0.02, flops


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
    """Only the padded border windows get a padding mask (the rest run
    with the bias alone): values and gradients equal one mask over every
    window, with interior windows, both pads and batch 2."""
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
    with torch.no_grad():  # the in-place path
        torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size', [(23, 15), (21, 16)])
def test_window_attention_in_strips_equals_whole_map(size, monkeypatch):
    """Inference on a large map runs strips of window rows: the same
    result as the whole map at once (the last strip partial and padded)."""
    from nommer_mm.models.fast import strips as strips_mod
    from nommer_mm.models.layers import attention as attention_mod

    torch.manual_seed(0)
    attn = WindowMSA(8, 2, window_size=4).eval()
    x = torch.randn(2, *size, 8)
    with torch.no_grad():
        whole = attn(x)  # under STRIP_BYTES: one pass
        calls = []
        monkeypatch.setattr(strips_mod, 'STRIP_BYTES', 1000)
        forward = attn._forward
        monkeypatch.setattr(
            attn, '_forward', lambda *a: calls.append(a[0].shape[1]) or forward(*a)
        )
        strips = attn(x)
    assert len(calls) > 1 and sum(calls) == size[0]
    assert all(rows % 4 == 0 for rows in calls[:-1])
    torch.testing.assert_close(strips, whole, rtol=1e-6, atol=1e-6)
    # Off the CPU (here the meta device, as a GPU would be) the whole map
    # runs at once: the strips are a CPU allocator's trick.
    calls.clear()
    with torch.no_grad():
        attn.to('meta')(x.to('meta'))
    assert calls == [size[0]]
    # GC ViT's global-query window attention: one query map per image
    gq = attention_mod.GlobalQueryWindowMSA(8, 2, window_size=4).eval()
    query = torch.randn(2, 2, 16, 4)
    with torch.no_grad():
        strips = gq(x, query)
        monkeypatch.setattr(strips_mod, 'STRIP_BYTES', 1 << 30)
        torch.testing.assert_close(strips, gq(x, query), rtol=1e-6, atol=1e-6)


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
def test_fused_nomination_equals_straight_through_formula(dtype):
    """The training nominator (one autograd function) against the unfused
    formula it replaces: w = hard - soft.detach() + soft, sum_p w_p * F_p."""
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


def test_pos_embed_resized_on_load_and_interpolated_at_run_time():
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


def test_memory_saving_mlp_has_plain_values_and_gradients():
    """Mlp recomputes its GELU in backward instead of saving it: outputs and
    all gradients equal the plain fc2(gelu(fc1(x))), and it saves one
    hidden-width tensor less."""
    from nommer_mm.models.layers import Mlp

    torch.manual_seed(0)
    mlp = Mlp(6, 12).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    out = mlp(x)
    out.square().sum().backward()
    got = [x.grad] + [p.grad for p in mlp.parameters()]
    x2 = x.detach().clone().requires_grad_(True)
    mlp.zero_grad()
    ref = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x2)))
    ref.square().sum().backward()
    want = [x2.grad] + [p.grad for p in mlp.parameters()]
    torch.testing.assert_close(out, ref)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)

    def saved_bytes(fn):
        total = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: total.append(t.numel()) or t, lambda t: t
        ):
            fn()
        return sum(total)

    xf = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    plain = saved_bytes(lambda: mlp.fc2(torch.nn.functional.gelu(mlp.fc1(xf))))
    ours = saved_bytes(lambda: mlp(xf))
    assert ours <= plain - 4 * 12  # one (4, 12) hidden tensor fewer


def test_eval_selection_keeps_type_promotion():
    """The eval selection writes into a candidate's buffer only when that
    gives what the out-of-place chain gives, mixed dtypes (autocast) too."""
    from nommer_mm.models.layers.context import select_nominated

    torch.manual_seed(0)
    index = torch.randint(0, 3, (2, 5, 4))
    for dtypes in [
        (torch.float32,) * 3,
        (torch.float32, torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.bfloat16, torch.float32),
    ]:
        feats = [torch.randn(2, 5, 4, 6).to(d) for d in dtypes]
        expect = feats[-1]
        for i in (1, 0):
            expect = torch.where(index.unsqueeze(-1) == i, feats[i], expect)
        with torch.no_grad():  # the in-place path
            got = select_nominated([f.clone() for f in feats], index)
        assert got.dtype == expect.dtype
        assert torch.equal(got, expect)
    from nommer_mm.models.fast import add_into

    a, b = torch.randn(3, 4), torch.randn(3, 4).bfloat16()
    assert add_into(b.clone(), a).dtype == torch.float32  # promoted, new
    torch.testing.assert_close(add_into(b.clone(), a), b + a)
    fresh = a.clone()
    assert add_into(fresh, b) is fresh and torch.equal(fresh, a + b)


@pytest.mark.parametrize('size', [(56, 56), (57, 55)])
def test_merge_max_pool_keeps_indices_only_with_equal_gradients(size):
    from nommer_mm.models.fast import MaxPool2x2

    x = torch.randn(2, 8, *size).to(memory_format=torch.channels_last)
    x.requires_grad_()
    expected = F.max_pool2d(x, 2, ceil_mode=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t) or t, lambda t: t
    ):
        got = MaxPool2x2.apply(x)
    assert [t.dtype for t in saved] == [torch.int64]  # not the input
    probe = torch.randn_like(expected)
    assert torch.equal(got, expected)
    assert torch.equal(
        torch.autograd.grad((got * probe).sum(), x)[0],
        torch.autograd.grad((expected * probe).sum(), x)[0],
    )


def test_eval_with_autograd_selects_out_of_place():
    """An eval model with gradients on (e.g. for input saliency): the same
    output as under no_grad, and the input gets a gradient."""
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
    model = NomMer('tiny', contexts=('window', 'conv')).eval()
    assert model.nomination_contexts() == ('conv', 'window')
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    maps = model.nomination_maps()
    assert len(maps) == 4
    assert all(int(m.max()) < 2 for m in maps.values())


def test_nomination_margins_are_the_gaps_behind_each_nomination():
    """nomination_margins() records, per nominating block, the gap between
    the two largest nominator logits, computed from the candidates before
    the fast eval path overwrites one of them: fast and plain give the same
    margins, positive where they nominate, and the hooks go on exit."""
    from nommer_mm import fast_paths
    from nommer_mm.analysis import nomination_margins

    torch.manual_seed(0)
    model = NomMer('tiny').eval()
    x = torch.randn(1, 3, 64, 96)
    got = []
    for enabled in (True, False):
        with torch.no_grad(), fast_paths(enabled), nomination_margins(model) as m:
            model(x)
        got.append(m)
        maps = model.nomination_maps()
        assert m.keys() == maps.keys() and len(m) == 4
        for key in m:
            assert m[key].shape == maps[key].shape
            assert (m[key] >= 0).all()
    for key in got[0]:
        torch.testing.assert_close(got[0][key], got[1][key], rtol=1e-4, atol=1e-5)
    assert not any(
        blk.mixer.nominator._forward_pre_hooks
        for s in model.stages[: model.num_local_stages]
        for blk in s.blocks
    )
