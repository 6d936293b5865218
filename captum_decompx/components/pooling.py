"""Pooling: the head reads the first token, the last non-padding token, or the mean of the
non-padding tokens; as a linear selection of rows it passes every piece unchanged."""

from __future__ import annotations

import torch
from torch import Tensor

from ..adapters.base import Adapter


def pool_weights(adapter: Adapter, real_tokens: Tensor, dtype: torch.dtype) -> Tensor:
    """(batch, seq) weights of the pooled state over the last layer's rows; for a per-position
    adapter (``pooling="each"``), where every row is an output, 1 at every non-padding position.

    Args:
        real_tokens: (batch, seq) bool, False at padding positions.
    """
    batch, seq = real_tokens.shape
    weights = torch.zeros(batch, seq, dtype=dtype, device=real_tokens.device)
    if adapter.pooling == "first":
        weights[:, 0] = 1.0
    elif adapter.pooling == "last":
        positions = torch.arange(seq, device=real_tokens.device).expand(batch, seq)
        last = torch.where(real_tokens, positions, -1).max(dim=1).values.clamp(min=0)
        weights[torch.arange(batch), last] = 1.0
    elif adapter.pooling == "each":
        weights = real_tokens.to(dtype)
    else:
        real = real_tokens.to(dtype)
        weights = real / real.sum(dim=1, keepdim=True).clamp(min=1)
    return weights


def pool(pieces: Tensor, pool_weights: Tensor) -> Tensor:
    """Pooling as a linear selection of rows.

    Args:
        pieces: (batch, rows, pieces, dim).
        pool_weights: (batch, rows).

    Returns:
        (batch, pieces, dim).
    """
    return torch.einsum("br,brkd->bkd", pool_weights, pieces)
