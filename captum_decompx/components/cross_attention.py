"""Cross-attention: an encoder-decoder's decoder reads the encoder's output.

A decoder row is decomposed over the target-prefix tokens and the source tokens (see
:mod:`captum_decompx.core.seq2seq`). The source pieces enter here: the value vectors of the pieces of the
encoder's output, mixed by the real cross-attention probabilities ``(batch, heads, target,
source)``, then ``W_O``. The encoder's output is already a mixture of tokens, so the whole bias
of the block (``W_O b_v + b_O``) goes to the bias rule, in every layer.

Recorded (exact path): the probabilities, as for self-attention. Frozen (fast path): the same
rule as self-attention (the probabilities are constants), never with a token-owned bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn

from .attention import Attention, attention_bias, attention_values, mix_heads
from .linear import Affine
from .norms import NormParams, normalize
from .pieces import Settings, add_bias

if TYPE_CHECKING:
    from ..core.freezing import Freezer

__all__ = ["CrossAttention", "CrossAttentionParams", "cross_attention_block", "cross_values"]


@dataclass(frozen=True)
class CrossAttentionParams:
    """The cross-attention's value map, output map and its block's norm (placed before the block
    in pre-LN models, after its residual in post-LN ones)."""

    value: Affine
    output: Affine
    norm: Optional[NormParams]
    pre_norm: bool


@dataclass(frozen=True)
class CrossAttention(Attention):
    """A decoder layer's cross-attention at ``path``; its value map reads the encoder's output."""

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        """Freeze the probabilities; the values are of the encoder's (mixed) output, so no bias
        belongs to a token and the padding is not read here."""
        super().freeze(freezer, root, first=False)


def cross_values(encoder_pieces: Tensor, params: CrossAttentionParams, heads: int) -> Tensor:
    """The value vectors of the encoder output's pieces, split by head.

    Args:
        encoder_pieces: (batch, source, pieces, hidden), the encoder's output decomposed in the
            decoder's piece layout.

    Returns:
        (batch, kv_heads, source, pieces*head_dim).
    """
    return attention_values(encoder_pieces, params.value, params.output, heads, first=False, own_scale=None)


def cross_attention_block(
    hidden: Tensor,
    head_values: Tensor,
    probs: Tensor,
    norm_input: Optional[Tensor],
    params: CrossAttentionParams,
    settings: Settings,
) -> Tensor:
    """The cross-attention block on some rows: ``x + cross(before(x))`` (pre-LN) or
    ``after(x + cross(x))`` (post-LN), the values read from the encoder's output.

    Args:
        hidden: (batch, rows, pieces, hidden), the decomposition of the block's input at these rows.
        head_values: from :func:`cross_values`.
        probs: (batch, heads, rows, source), the real cross-attention probabilities of these rows.
        norm_input: (batch, rows, hidden), the real input of the block's norm at these rows.

    Returns:
        (batch, rows, pieces, hidden).
    """
    heads, n_pieces = probs.shape[1], hidden.shape[2]
    bias = attention_bias(params.value, params.output, False, heads)
    # A pre-LN norm before the block feeds the queries only (the values are the encoder's), and
    # the queries act through the real probabilities: only a post-LN norm after the residual acts here.
    mixed = mix_heads(probs, head_values, n_pieces)
    output = add_bias(torch.add(mixed @ params.output.weight.T, hidden), bias, settings)
    return normalize(output, norm_input, None if params.pre_norm else params.norm, settings)
