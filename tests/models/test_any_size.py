"""Any-size semantics, against oracles written here from the statement in
docs/backbones.md ("Padding and rounding at any input size").

Every layer that pads to a block or window, rounds a size up or crops, and
every backbone, runs in float64 at sizes that need padding (odd, prime, one
over a multiple) and is compared with an oracle that pads explicitly with
``F.pad``, runs the plain computation at the padded size (attention masks
built here from the statement) and crops. The oracles call the modules'
parameters, standard torch ops, and submodules that neither pad to a block
nor change the size (norms, MLPs, the same-size 3x3 convolutions, global
attention); never the plugin's padding, mask or index helpers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from small_archs import SMALL

from nommer_mm import CoTNet, GCViT, NomMer, Visformer
from nommer_mm.models.backbones.cotnet import CoTBottleneck
from nommer_mm.models.backbones.gcvit import GlobalQueryGen
from nommer_mm.models.backbones.nommer import ConvStem, TokenMerge
from nommer_mm.models.backbones.visformer import PatchEmbed
from nommer_mm.models.layers import (
    CompressedGlobalContext,
    GlobalQueryWindowMSA,
    LocalWindowContext,
    PooledGlobalContext,
    SEConv,
    WindowMSA,
)

# (H, W) of the layer inputs: odd, prime, one over a multiple, smaller than
# one block
MAP_SIZES = [(5, 9), (11, 13), (15, 8), (17, 29)]
# image sizes of the whole backbones: 1 over 32 and 96, primes, odd
IMAGE_SIZES = [(33, 97), (57, 61), (29, 37)]


def _ids(size: tuple) -> str:
    return f'{size[0]}x{size[1]}'


@pytest.fixture(autouse=True)
def float64():
    """Modules built and run in float64 (the DCT bases too), so that only
    rounding separates product and oracle, far too little to flip the
    nominator's argmax."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def close(got: torch.Tensor, expect: torch.Tensor, tol: float = 1e-10) -> None:
    """Equal up to float64 rounding, relative to the largest value."""
    assert got.shape == expect.shape, (got.shape, expect.shape)
    scale = expect.abs().max().item()
    assert scale > 1e-3, 'a trivially small output proves nothing'
    off = (got - expect).abs().max().item() / scale
    assert off <= tol, f'{off:.3g} (relative) off the oracle'


def randomize_(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Random values everywhere (biases, bias tables, norm affines and BN
    statistics included), so that nothing starts at zero or one."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            # weights by 1 / sqrt(fan-in), as trained ones roughly are;
            # position embeddings, class token and bias tables by ``std``
            fan_in = p[0].numel() if p.dim() > 1 and 'weight' in name else 1
            p.copy_(torch.randn(p.shape, generator=g) * min(std, fan_in**-0.5))
        for m in module.modules():
            is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
            if is_bn or isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.weight.add_(1.0)  # scales around 1
            if is_bn:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module


def pad_br(
    x: torch.Tensor, multiple: int, value: float = 0.0, last: bool = False
) -> torch.Tensor:
    """Pad the two spatial dims at the bottom and right to a multiple:
    dims (-2, -1) of NCHW, or (1, 2) of NHWC with ``last``."""
    H, W = x.shape[1:3] if last else x.shape[-2:]
    ph, pw = -H % multiple, -W % multiple
    pads = (0, 0, 0, pw, 0, ph) if last else (0, pw, 0, ph)
    return F.pad(x, pads, value=value)


def conv_explicit(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A convolution with its zero padding written out: symmetric."""
    ph, pw = conv.padding
    x = F.pad(x, (pw, pw, ph, ph))
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, 1, conv.groups)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


# ------------------------------------------------------------ the oracles
def window_oracle(
    attn: WindowMSA, x: torch.Tensor, query: torch.Tensor | None = None
) -> torch.Tensor:
    """Window attention at any size: zero tokens appended at the bottom and
    right up to whole w x w windows laid from the top-left, each window
    attending on its own with the relative bias of in-window offsets; padded
    keys get -inf, padded queries are dropped with the crop. With ``query``
    (B, heads, w*w, d): every window of image b takes ``query[b]``, keys and
    values from the window."""
    B, H, W, C = x.shape
    w, h = attn.window_size, attn.num_heads
    d, n = C // h, w * w
    xp = pad_br(x, w, last=True)
    Hp, Wp = xp.shape[1:3]
    real = torch.zeros(Hp, Wp, dtype=torch.bool)
    real[:H, :W] = True
    # relative bias: key j seen from query i at offset (yi - yj, xi - xj)
    ys, xs = [
        t.flatten() for t in torch.meshgrid(*[torch.arange(w)] * 2, indexing='ij')
    ]
    dy = ys[:, None] - ys[None, :] + w - 1
    dx = xs[:, None] - xs[None, :] + w - 1
    bias = attn.relative_position_bias_table[dy * (2 * w - 1) + dx]  # (n, n, h)
    bias = bias.permute(2, 0, 1)
    out = torch.zeros(B, Hp, Wp, C)
    for r in range(0, Hp, w):
        for c in range(0, Wp, w):
            tokens = xp[:, r : r + w, c : c + w].reshape(B, n, C)
            proj = F.linear(tokens, attn.qkv.weight, attn.qkv.bias)
            if query is None:
                q, k, v = proj.view(B, n, 3, h, d).permute(2, 0, 3, 1, 4)
            else:
                k, v = proj.view(B, n, 2, h, d).permute(2, 0, 3, 1, 4)
                q = query
            scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
            key_real = real[r : r + w, c : c + w].reshape(n)
            scores = scores.masked_fill(~key_real, float('-inf'))
            y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, n, C)
            y = F.linear(y, attn.proj.weight, attn.proj.bias)
            out[:, r : r + w, c : c + w] = y.view(B, w, w, C)
    return out[:, :H, :W]


def dct_matrix(N: int) -> torch.Tensor:
    """Orthonormal DCT-II, (N, N): row u, column x."""
    D = torch.zeros(N, N)
    for u in range(N):
        for x in range(N):
            a = math.sqrt((1 if u == 0 else 2) / N)
            D[u, x] = a * math.cos((2 * x + 1) * u * math.pi / (2 * N))
    return D


def attention_plain(attn: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Global MHSA over (B, L, C) with every token a key, no mask."""
    B, L, C = tokens.shape
    h = attn.num_heads
    qkv = F.linear(tokens, attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.view(B, L, 3, h, C // h).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-1, -2) / math.sqrt(C // h)).softmax(-1)
    y = (a @ v).transpose(1, 2).reshape(B, L, C)
    return F.linear(y, attn.proj.weight, attn.proj.bias)


def global_oracle(ctx: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The global contexts at any size: zero tokens appended at the bottom
    and right up to whole N x N blocks from the top-left; every block,
    partly padded ones included, is one token for the BatchNorm and for the
    attention (none masked); the map spread back is cropped. DCT: the
    l x l lowest frequencies of each block (l = ceil(N/2)); pooled: the
    mean over all N*N pixels of a block, padding included."""
    B, H, W, C = x.shape
    N = ctx.block_size
    xp = pad_br(x, N, last=True)
    h, w = xp.shape[1] // N, xp.shape[2] // N
    blocks = xp.view(B, h, N, w, N, C)
    if isinstance(ctx, CompressedGlobalContext):
        l = (N + 1) // 2
        D = dct_matrix(N)[:l]
        # coefficient (v, u) of block (i, j), channel c -> c*l*l + v*l + u
        coeffs = torch.einsum('vy,biyjxc,ux->bcvuij', D, blocks, D)
        coeffs = coeffs.reshape(B, C * l * l, h, w)
        groups = ctx.compress.groups
        tokens = F.conv2d(coeffs, ctx.compress.weight, groups=groups)
    else:
        tokens = nchw(blocks.mean((2, 4)))
    tokens = ctx.norm(tokens)  # BN over all block tokens
    tokens = attention_plain(ctx.attn, tokens.flatten(2).transpose(1, 2))
    tokens = tokens.transpose(1, 2).reshape(B, C, h, w)
    if isinstance(ctx, CompressedGlobalContext):
        coeffs = F.conv2d(tokens, ctx.expand.weight, groups=groups)
        coeffs = coeffs.view(B, C, l, l, h, w)
        out = torch.einsum('vy,bcvuij,ux->biyjxc', D, coeffs, D)
    else:
        out = tokens.permute(0, 2, 3, 1)[:, :, None, :, None].expand(B, h, N, w, N, C)
    return out.reshape(B, h * N, w * N, C)[:, :H, :W]


def stem_oracle(stem: ConvStem, x: torch.Tensor) -> torch.Tensor:
    """NomMer's stem: zero pixels appended at the bottom and right to a
    multiple of 4, conv 4x4/4, BN over every output, ReLU."""
    y = F.conv2d(pad_br(x, 4), stem.conv.weight, stride=4)
    return nhwc(F.relu(stem.norm(y)))


def merge_oracle(merge: TokenMerge, x: torch.Tensor) -> torch.Tensor:
    """conv 3x3 (zero padding on every side), max-pool 2x2 whose last
    window of an odd map holds the last row / column alone (appended -inf,
    never the max), LayerNorm."""
    y = conv_explicit(merge.conv, nchw(x))
    y = F.max_pool2d(pad_br(y, 2, value=float('-inf')), 2)
    return merge.norm(nhwc(y))


def pos_oracle(pos: torch.Tensor, size: tuple) -> torch.Tensor:
    """(1, C, h, w) grid bicubic-resized to the rounded-up stage grid."""
    if tuple(pos.shape[-2:]) == tuple(size):
        return pos
    return F.interpolate(pos, size=size, mode='bicubic', align_corners=False)


def mixer_oracle(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An S-NomMer mixer in eval: candidates, then the nominated one."""
    feats = []
    for name in mixer.contexts:
        module = getattr(mixer, f'{name}_context')
        if name == 'conv':  # same-size 3x3 convolutions, no block padding
            feats.append(module(x))
        elif name == 'window':
            feats.append(window_oracle(module, x))
        else:
            feats.append(global_oracle(module, x))
    total = sum(feats)
    if mixer.nominator is None:
        return total
    fc = mixer.nominator.fc
    choice = F.linear(total, fc.weight, fc.bias).argmax(-1)
    onehot = F.one_hot(choice, len(feats)).to(x.dtype)
    return sum(onehot[..., p, None] * f for p, f in enumerate(feats))


def nommer_oracle(model: NomMer, x: torch.Tensor) -> tuple:
    outs = []
    x = stem_oracle(model.stem, x)
    for i, stage in enumerate(model.stages):
        if i > 0:
            x = merge_oracle(model.merges[i - 1], x)
        if i < model.num_local_stages:
            for block in stage.blocks:
                x = x + mixer_oracle(block.mixer, block.norm1(x))
                x = x + block.mlp(block.norm2(x))
        else:
            B, H, W, C = x.shape
            if i == model.num_local_stages:
                pos = pos_oracle(nchw(model.pos_embed), (H, W))
                x = x + nhwc(pos)
            tokens = x.reshape(B, H * W, C)
            if i == 3:
                tokens = torch.cat([model.cls_token.expand(B, -1, -1), tokens], 1)
            for block in stage.blocks:  # global attention, nothing padded
                tokens = block(tokens)
            x = tokens[:, -H * W :].reshape(B, H, W, C)
        outs.append(nchw(getattr(model, f'norm{i}')(x)))
    return tuple(outs)


def query_oracle(gen: GlobalQueryGen, x: torch.Tensor) -> torch.Tensor:
    """GC ViT's global query: FeatExtract blocks whose max-pool 3x3/2 pads
    -inf on every side (ceil(h/2) out), then a bicubic resize to w x w when
    the map is not w x w already; (B, heads, w*w, C/heads)."""
    q = nchw(x)
    for feat in gen.to_q_global:
        q = q + feat.conv(q)  # same-size convolutions
        if isinstance(feat.pool, nn.MaxPool2d):
            q = F.max_pool2d(F.pad(q, (1, 1, 1, 1), value=float('-inf')), 3, 2)
    w, h = gen.window_size, gen.num_heads
    if q.shape[-2:] != (w, w):
        q = F.interpolate(q, size=(w, w), mode='bicubic', align_corners=False)
    B, C = q.shape[:2]
    return nhwc(q).reshape(B, w * w, h, C // h).transpose(1, 2)


def reduce_oracle(reduce: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GC ViT's ReduceSize: conv 3x3/2 with zero padding on every side."""
    y = nchw(reduce.norm1(x))
    y = conv_explicit(reduce.reduction, y + reduce.conv(y))
    return reduce.norm2(nhwc(y))


def gcvit_oracle(model: GCViT, x: torch.Tensor) -> tuple:
    outs = []
    x = nhwc(conv_explicit(model.patch_embed.proj, x))
    x = reduce_oracle(model.patch_embed.conv_down, x)
    for i, level in enumerate(model.levels):
        query = query_oracle(level.q_global_gen, x) if len(level.blocks) > 1 else None
        for block in level.blocks:
            y = window_oracle(
                block.attn, block.norm1(x), query if block.global_query else None
            )
            x = x + (y if block.gamma1 is None else y * block.gamma1)
            y = block.mlp(block.norm2(x))
            x = x + (y if block.gamma2 is None else y * block.gamma2)
        outs.append(nchw(getattr(model, f'norm{i}')(x)))
        if i < 3:
            x = reduce_oracle(level.downsample, x)
    return tuple(outs)


def patch_embed_oracle(embed: PatchEmbed, x: torch.Tensor) -> torch.Tensor:
    """Visformer's patch embedding: zero pixels appended at the bottom and
    right to a multiple of k, conv k x k / k, BN over every output."""
    k = embed.patch
    y = F.conv2d(pad_br(x, k), embed.proj.weight, embed.proj.bias, stride=k)
    return embed.norm(y)


def visformer_oracle(model: Visformer, x: torch.Tensor) -> tuple:
    outs = []
    h4, w4 = math.ceil(x.shape[-2] / 4), math.ceil(x.shape[-1] / 4)
    x = conv_explicit(model.stem[0], x)
    x = F.relu(model.stem[1](x))
    for i in range(1, 4):
        x = patch_embed_oracle(getattr(model, f'patch_embed{i}'), x)
        x = x + pos_oracle(getattr(model, f'pos_embed{i}'), x.shape[-2:])
        x = getattr(model, f'stage{i}')(x)  # same-size convs, global attention
        if i == 1 and 0 in model.out_indices:
            # transposed conv to 2 * ceil(H/8), BN and GELU on all of it,
            # then the first ceil(H/4) rows and columns
            up = model.upsample0
            y = F.conv_transpose2d(x, up[0].weight, up[0].bias, stride=2)
            outs.append(F.gelu(up[1](y))[..., :h4, :w4])
        if i in model.out_indices:
            outs.append(getattr(model, f'norm{i}')(x))
    return tuple(outs)


def aggregate_oracle(x: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """CoT's local aggregation: k x k taps over a map zero-padded by k // 2
    on every side; channel c weighted by weight channel c % Cw."""
    N, C, H, W = x.shape
    Cw, r = weight.shape[1], k // 2
    cols = F.unfold(F.pad(x, (r, r, r, r)), k)  # (N, C*k*k, H*W)
    cols = cols.view(N, C // Cw, Cw, k * k, H, W)
    return (cols * weight.unsqueeze(1)).sum(3).reshape(N, C, H, W)


def cot_oracle(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    g, k = layer.groups, layer.kernel_size
    key = layer.key_embed(x)  # same-size conv
    if g == 1:
        qk = torch.cat([x, key], 1)
    else:
        qk = torch.stack([x, key], 2).view(B, 2 * C, H, W)
    weight = layer.embed(qk).view(B * g, -1, k * k, H, W)
    value = layer.conv1x1(x).view(B * g, C // g, H, W)
    value = aggregate_oracle(value, weight, k).view(B, C, H, W)
    value = F.silu(layer.bn(value))
    attn = layer.se((value + key).mean((2, 3), keepdim=True))
    attn = attn.view(B, C, 2).softmax(2)
    return value * attn[..., 0, None, None] + key * attn[..., 1, None, None]


def avg_down_oracle(x: torch.Tensor) -> torch.Tensor:
    """2x2/2 average whose last window of an odd map averages its real
    pixels only."""
    total = F.avg_pool2d(pad_br(x, 2), 2) * 4
    count = F.avg_pool2d(pad_br(torch.ones_like(x[:1, :1]), 2), 2) * 4
    return total / count


def bottleneck_oracle(block: CoTBottleneck, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(block.bn1(block.conv1(x)))
    if block.avd is not None:  # 3x3/2, zero padding counted (divisor 9)
        y = F.avg_pool2d(F.pad(y, (1, 1, 1, 1)), 3, 2)
    if isinstance(block.conv2, SEConv):
        se = block.conv2
        y = F.silu(se.bn0(conv_explicit(se.conv, y)))
        gate = F.silu(se.bn1(se.fc1(y.mean((2, 3), keepdim=True))))
        y = y * torch.sigmoid(se.fc2(gate))
    else:
        y = cot_oracle(block.conv2, y)
    y = block.bn3(block.conv3(y))
    shortcut = x
    if block.downsample is not None:
        *pool, conv, norm = block.downsample
        if pool and isinstance(pool[0], nn.AvgPool2d):
            shortcut = avg_down_oracle(x)
        s = conv.stride[0]  # 1x1/s: every s-th position from the first
        shortcut = norm(F.conv2d(shortcut[..., ::s, ::s], conv.weight))
    return F.relu(y + shortcut)


def cotnet_oracle(model: CoTNet, x: torch.Tensor) -> tuple:
    stem = model.conv1 if isinstance(model.conv1, nn.Sequential) else [model.conv1]
    for m in stem:
        x = conv_explicit(m, x) if isinstance(m, nn.Conv2d) else m(x)
    x = F.relu(model.bn1(x))
    if model.maxpool is not None:  # 3x3/2, -inf on every side
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1), value=float('-inf')), 3, 2)
    outs = []
    for i in range(4):
        for block in getattr(model, f'layer{i + 1}'):
            x = bottleneck_oracle(block, x)
        outs.append(x)
    return tuple(outs)


# ------------------------------------------------------- the layer tests
@pytest.mark.parametrize('size', MAP_SIZES, ids=_ids)
@pytest.mark.parametrize('window', [4, 7])
def test_window_attention(size, window):
    attn = randomize_(LocalWindowContext(16, 2, window_size=window))
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        close(attn(x), window_oracle(attn, x))


@pytest.mark.parametrize('size', MAP_SIZES, ids=_ids)
def test_global_query_window_attention(size):
    attn = randomize_(GlobalQueryWindowMSA(16, 2, window_size=4))
    x = torch.randn(2, *size, 16)
    query = torch.randn(2, 2, 16, 8)  # per image: two different queries
    with torch.no_grad():
        close(attn(x, query), window_oracle(attn, x, query))


@pytest.mark.parametrize('size', MAP_SIZES, ids=_ids)
@pytest.mark.parametrize('cls', [CompressedGlobalContext, PooledGlobalContext])
@pytest.mark.parametrize('block', [8, 4])
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_global_context(size, cls, block, training):
    """In training the BatchNorm's batch statistics are those of every
    block token, the partly padded ones included."""
    ctx = randomize_(cls(16, 2, block, norm_cfg=dict(type='BN')))
    ctx = ctx.train(training)
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        close(ctx(x), global_oracle(ctx, x))


@pytest.mark.parametrize('size', [(57, 61), (29, 38), (33, 9)], ids=_ids)
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_nommer_stem(size, training):
    stem = randomize_(ConvStem(3, 16, dict(type='BN'))).train(training)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        close(stem(x), stem_oracle(stem, x))


@pytest.mark.parametrize('size', MAP_SIZES, ids=_ids)
def test_token_merge(size):
    merge = randomize_(TokenMerge(8, 16))
    x = torch.randn(2, *size, 8) - 1  # mostly negative: a zero pad would win
    with torch.no_grad():
        close(merge(x), merge_oracle(merge, x))


@pytest.mark.parametrize('size', MAP_SIZES, ids=_ids)
@pytest.mark.parametrize('patch', [4, 2])
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_visformer_patch_embed(size, patch, training):
    embed = randomize_(PatchEmbed(8, 16, patch, dict(type='BN'))).train(training)
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        close(embed(x), patch_embed_oracle(embed, x))


@pytest.mark.parametrize('size', MAP_SIZES + [(7, 7), (3, 2)], ids=_ids)
@pytest.mark.parametrize('pools', [0, 1, 3])
def test_gcvit_global_query(size, pools):
    gen = randomize_(GlobalQueryGen(16, 2, 7, pools))
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        close(gen(x), query_oracle(gen, x))


@pytest.mark.parametrize('size', MAP_SIZES, ids=_ids)
@pytest.mark.parametrize('avg_down', [True, False])
@pytest.mark.parametrize('se_conv', [False, True])
def test_cotnet_strided_block(size, avg_down, se_conv):
    block = CoTBottleneck(
        in_channels=32,
        planes=16,
        stride=2,
        cardinality=1,
        base_width=64,
        se_conv=se_conv,
        avg_down=avg_down,
        drop_path=0.0,
        norm_cfg=dict(type='BN'),
    )
    block = randomize_(block).eval()
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        close(block(x), bottleneck_oracle(block, x))


# ---------------------------------------------------- the whole backbones
def _resnet_stem_cotnet() -> dict:
    arch = dict(SMALL[CoTNet]['arch'], stem='resnet', avg_down=False)
    return dict(arch=dict(arch, cardinality=2, base_width=16))


# the CoTNets are the widest (256 to 2048 channels): fewer sizes
BACKBONES = {
    'nommer': (NomMer, SMALL[NomMer], nommer_oracle, IMAGE_SIZES),
    'gcvit': (GCViT, SMALL[GCViT], gcvit_oracle, IMAGE_SIZES),
    'visformer': (Visformer, SMALL[Visformer], visformer_oracle, IMAGE_SIZES),
    'cotnet': (CoTNet, SMALL[CoTNet], cotnet_oracle, IMAGE_SIZES[1:]),
    'cotnext-resnet-stem': (
        CoTNet,
        _resnet_stem_cotnet(),
        cotnet_oracle,
        IMAGE_SIZES[:1],
    ),
}


CASES = [(n, s) for n, (*_, sizes) in sorted(BACKBONES.items()) for s in sizes]


@pytest.mark.parametrize('name,size', CASES, ids=[f'{n}-{_ids(s)}' for n, s in CASES])
def test_backbone(name, size):
    """All four outputs, eval mode, against the backbone composed of the
    layer oracles above."""
    cls, kwargs, oracle, _ = BACKBONES[name]
    model = randomize_(cls(**kwargs)).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        got, expect = model(x), oracle(model, x)
    assert len(got) == len(expect) == 4
    for i, (g, e) in enumerate(zip(got, expect)):
        H, W = (math.ceil(s / 2 ** (i + 2)) for s in size)
        assert g.shape[-2:] == (H, W), (i, g.shape)
        close(g, e, tol=1e-9)


@pytest.mark.parametrize('name', ['visformer', 'cotnet'])
def test_backbone_training_batch_statistics(name):
    """In training, every BatchNorm sees what the statement says: padded
    patches, the uncropped upsampled map of Visformer's output 0."""
    cls, kwargs, oracle, _ = BACKBONES[name]
    model = randomize_(cls(**kwargs)).train()
    x = torch.randn(2, 3, 29, 37)
    with torch.no_grad():
        got, expect = model(x), oracle(model, x)
    for g, e in zip(got, expect):
        close(g, e, tol=1e-9)


# ------------------------------------------ the reference-layout NomMer
REFERENCE_ARCH = dict(
    embed_dims=16, depths=[1, 2, 1, 1], num_heads=[2, 2, 2, 2], bottleneck_ratios=[2, 2]
)


@pytest.mark.parametrize('size', [(33, 97), (29, 37), (225, 47)], ids=_ids)
def test_converted_reference_layout(size):
    """The converted classifier against tests/reference_layout.py, which
    pads as the statement says in its own code, on its randomised weights."""
    pytest.importorskip('mmpretrain', reason='the classifier comes from mmpretrain')
    from mmengine.registry import init_default_scope
    from mmpretrain.models import ImageClassifier

    from nommer_mm.converters import convert_reference
    from reference_layout import ReferenceLayoutNomMer, randomize_ as randomize_ref

    ref = ReferenceLayoutNomMer(num_classes=5, **REFERENCE_ARCH)
    ref = randomize_ref(ref).eval()
    state, info = convert_reference({'model': ref.state_dict()}, arch=REFERENCE_ARCH)
    init_default_scope('mmpretrain')  # other tests may leave another
    model = ImageClassifier(
        backbone=dict(type='NomMer', out_type='cls_token', out_indices=(3,), **info),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=128),
    ).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        close(model(x, mode='tensor'), ref(x), tol=1e-9)
