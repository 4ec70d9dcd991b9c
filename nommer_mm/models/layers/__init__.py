from .attention import (
    GlobalQueryWindowMSA,
    MultiheadSelfAttention,
    WindowMSA,
    relative_position_index,
    window_partition,
    window_reverse,
)
from .shapes import (
    ceil_div,
    crop_padding,
    needs_padding,
    pad_to_multiple,
    same_size,
)
from .context import (
    CompressedGlobalContext,
    ContextNominator,
    ConvContext,
    LocalWindowContext,
    NomMerMixer,
    PooledGlobalContext,
    gumbel_softmax,
    nominator_logits,
)
from .cot import CoTLayer, SEConv, local_aggregation
from .dct import BlockDCT, dct_basis, dct_kronecker_basis
from .mlp import Mlp

__all__ = [
    'GlobalQueryWindowMSA',
    'MultiheadSelfAttention',
    'WindowMSA',
    'ceil_div',
    'crop_padding',
    'needs_padding',
    'pad_to_multiple',
    'same_size',
    'relative_position_index',
    'window_partition',
    'window_reverse',
    'CompressedGlobalContext',
    'ContextNominator',
    'ConvContext',
    'LocalWindowContext',
    'NomMerMixer',
    'PooledGlobalContext',
    'gumbel_softmax',
    'nominator_logits',
    'BlockDCT',
    'dct_basis',
    'dct_kronecker_basis',
    'CoTLayer',
    'SEConv',
    'local_aggregation',
    'Mlp',
]
