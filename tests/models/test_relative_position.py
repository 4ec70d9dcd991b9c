"""The relative position bias of window attention (NomMer's window context,
GC ViT's local and global-query attention) against an index written here
as a loop over query and key positions, in Swin's convention (timm's
``gen_relative_position_index``, NVlabs/GCVit, NomMer): for a query at row
i1, column j1 and a key at i2, j2 of a w x w window, tokens numbered row by
row, the bias is row ``(i1 - i2 + w - 1) * (2w - 1) + (j1 - j2 + w - 1)`` of
the ((2w-1)^2, heads) table. Nothing here calls the layer's own index or
bias helpers to build an expected value."""

import functools
import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from small_archs import SMALL

from nommer_mm import GCViT, NomMer
from nommer_mm.models.layers import GlobalQueryWindowMSA, WindowMSA

# NomMer's window (7), GC ViT's ImageNet windows (7, 14) and its detection
# window (24, configs/det/cascade-mask-rcnn_gcvit-t_fpn_ms-3x_coco.py), and
# two small ones whose every offset is easy to read
WINDOWS = [2, 3, 7, 14, 24]


@functools.cache
def _loop_index(w: int) -> torch.Tensor:
    """(w*w, w*w): the table row of each (query, key) pair."""
    n = w * w
    index = [[0] * n for _ in range(n)]
    for i1 in range(w):
        for j1 in range(w):
            for i2 in range(w):
                for j2 in range(w):
                    dy, dx = i1 - i2, j1 - j2
                    row = (dy + w - 1) * (2 * w - 1) + (dx + w - 1)
                    index[i1 * w + j1][i2 * w + j2] = row
    return torch.tensor(index)


def loop_index(w: int) -> torch.Tensor:
    return _loop_index(w).clone()


def loop_bias(table: torch.Tensor, w: int) -> torch.Tensor:
    """(heads, w*w, w*w): the table's row for every pair, per head."""
    n = w * w
    return table[loop_index(w).view(-1)].view(n, n, -1).permute(2, 0, 1)


def test_the_archs_windows_are_covered():
    nommer = inspect.signature(NomMer).parameters['window_size'].default
    gcvit = inspect.signature(GCViT).parameters['window_size'].default
    assert {nommer, *gcvit} <= set(WINDOWS)


def test_loop_index_is_swins_convention():
    """Spot values of the convention, by hand: the same position is the
    table's centre, a key one row below the query is one table row of
    2w - 1 entries before it, one column right one entry before it."""
    w = 3
    index = loop_index(w)
    centre = (w - 1) * (2 * w - 1) + (w - 1)  # 12 of 25
    assert index.diagonal().tolist() == [centre] * 9
    assert index[0, 3] == centre - (2 * w - 1)  # key (1, 0) below query (0, 0)
    assert index[0, 1] == centre - 1  # key (0, 1) right of query (0, 0)
    assert index[8, 0] == (2 * w - 1) ** 2 - 1  # query (2, 2), key (0, 0)
    assert index[0, 8] == 0


@pytest.mark.parametrize('w', WINDOWS)
@pytest.mark.parametrize('cls', [WindowMSA, GlobalQueryWindowMSA])
def test_index_buffer_is_the_loop(cls, w):
    layer = cls(8, 2, window_size=w)
    assert layer.relative_position_bias_table.shape == ((2 * w - 1) ** 2, 2)
    assert torch.equal(layer.relative_position_index.view(w * w, w * w), loop_index(w))


def _windows_of(model: nn.Module) -> dict:
    return {
        name: module.window_size
        for name, module in model.named_modules()
        if isinstance(module, WindowMSA)
    }


def test_the_backbones_layers_hold_the_loop_index_of_their_window():
    """In NomMer and GC ViT as built (the default windows), every window
    attention has its level's window and that window's loop index."""
    nommer = NomMer(**SMALL[NomMer])
    gcvit = GCViT(**SMALL[GCViT], window_size=(7, 7, 14, 7))
    windows = {**_windows_of(nommer), **_windows_of(gcvit)}
    assert set(_windows_of(nommer).values()) == {7}
    for name, w in _windows_of(gcvit).items():
        assert w == (7, 7, 14, 7)[int(name.split('.')[1])], name
    loops = {w: loop_index(w) for w in set(windows.values())}
    for model in (nommer, gcvit):
        for name, module in model.named_modules():
            if isinstance(module, WindowMSA):
                w = module.window_size
                index = module.relative_position_index.view(w * w, w * w)
                assert torch.equal(index, loops[w]), name


def _spy_on_attention(monkeypatch) -> list:
    """The additive masks the layer hands to SDPA, as it runs."""
    masks, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        masks.append(attn_mask.detach().clone())
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    return masks


def _layer(cls, w: int, channels: int = 8, heads: int = 2) -> nn.Module:
    torch.manual_seed(w)
    layer = cls(channels, heads, window_size=w).double().eval()
    with torch.no_grad():  # a bias that matters next to q.k
        layer.relative_position_bias_table.normal_(0, 1)
    return layer


def _query(layer: nn.Module, batch: int) -> torch.Tensor | None:
    if not isinstance(layer, GlobalQueryWindowMSA):
        return None
    w, h = layer.window_size, layer.num_heads
    return torch.randn(batch, h, w * w, 8 // h, dtype=torch.float64)


@pytest.mark.parametrize('w', WINDOWS)
@pytest.mark.parametrize('cls', [WindowMSA, GlobalQueryWindowMSA])
def test_the_bias_added_is_the_loops(cls, w, monkeypatch):
    """The mask SDPA receives (windows filling the map: nothing else in
    it) is the table gathered at the loop's index."""
    layer = _layer(cls, w)
    masks = _spy_on_attention(monkeypatch)
    x = torch.randn(1, w, 2 * w, 8, dtype=torch.float64)
    with torch.no_grad():
        layer(x, _query(layer, 1))
    (mask,) = masks
    expected = loop_bias(layer.relative_position_bias_table.detach(), w)
    assert mask.shape[-3:] == expected.shape
    torch.testing.assert_close(mask.expand(1, *expected.shape)[0], expected)


def _attention_by_hand(layer: nn.Module, x: torch.Tensor, query) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v per window and head, then the
    output projection; windows cut from the map by slicing."""
    B, H, W, C = x.shape
    w, h = layer.window_size, layer.num_heads
    n, d = w * w, C // h
    bias = loop_bias(layer.relative_position_bias_table, w)
    out = torch.zeros_like(x)
    for b in range(B):
        for top in range(0, H, w):
            for left in range(0, W, w):
                tokens = x[b, top : top + w, left : left + w].reshape(n, C)
                proj = layer.qkv(tokens)
                if query is None:
                    q, k, v = proj.view(n, 3, h, d).unbind(1)  # each (n, h, d)
                else:
                    k, v = proj.view(n, 2, h, d).unbind(1)
                    q = query[b].transpose(0, 1)  # (h, n, d) -> (n, h, d)
                q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (h, n, d)
                logits = q @ k.transpose(1, 2) * d**-0.5 + bias
                y = layer.proj((logits.softmax(-1) @ v).transpose(0, 1).reshape(n, C))
                out[b, top : top + w, left : left + w] = y.view(w, w, C)
    return out


@pytest.mark.parametrize('w', WINDOWS)
@pytest.mark.parametrize('cls', [WindowMSA, GlobalQueryWindowMSA])
def test_window_attention_equals_the_written_out_formula(cls, w):
    """Two images (the global query differs per image) of 2 x 1 windows,
    one window from w = 14 on, float64."""
    layer = _layer(cls, w)
    x = torch.randn(2, (2 if w < 14 else 1) * w, w, 8, dtype=torch.float64)
    query = _query(layer, 2)
    with torch.no_grad():
        got = layer(x, query)
        expected = _attention_by_hand(layer, x, query)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
