"""Old name of the propagation functions, kept importable.

The functions now live with their component kinds in :mod:`captum_decompx.components`
(``engine.Norm`` is :class:`~captum_decompx.components.NormParams`).
"""

from typing import Optional

from torch import Tensor

from .components import attention as _attention
from .components.activations import FFN_APPROXIMATIONS, HEAD_APPROXIMATIONS, ZERO_ORIGIN_EPS, activation
from .components.attention import VALUE_BLOCKS, mix_heads, split_heads
from .components.bias_rules import BIAS_RULES, RULE_EPS, bias_rule_weights
from .components.feed_forward import feed_forward
from .components.head import head
from .components.layer import LayerParams, layer_attention_bias, transformer_layer
from .components.linear import Affine, linear
from .components.norms import NormParams, normalize
from .components.pieces import BiasMode, Settings, add_bias, add_to_own_pieces, token_pieces
from .components.pooling import pool

Norm = NormParams


def attention_values(pieces: Tensor, params: LayerParams, heads: int, *, first: bool, own_scale: Optional[Tensor]) -> Tensor:
    """:func:`captum_decompx.components.attention.attention_values` with a layer's parameters."""
    return _attention.attention_values(pieces, params.value, params.attention_output, heads, first=first, own_scale=own_scale)


__all__ = [
    "BIAS_RULES",
    "FFN_APPROXIMATIONS",
    "HEAD_APPROXIMATIONS",
    "RULE_EPS",
    "VALUE_BLOCKS",
    "ZERO_ORIGIN_EPS",
    "Affine",
    "BiasMode",
    "LayerParams",
    "Norm",
    "NormParams",
    "Settings",
    "activation",
    "add_bias",
    "add_to_own_pieces",
    "attention_values",
    "bias_rule_weights",
    "feed_forward",
    "head",
    "layer_attention_bias",
    "linear",
    "mix_heads",
    "normalize",
    "pool",
    "split_heads",
    "token_pieces",
    "transformer_layer",
]
