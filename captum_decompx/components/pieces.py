"""The decomposition tensor and what every component does with biases.

A decomposition is a tensor ``pieces`` of shape ``(batch, rows, pieces, dim)``: for every row
(sequence position) one vector per input token, whose sum over the pieces axis is the real hidden
state. Biases are handled in one of four ways (:class:`BiasMode`): spread over the token pieces by
a bias rule, collected in an extra trailing "bias piece", added to the single piece of the fast
path's frozen network, or dropped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .bias_rules import bias_rule_weights


class BiasMode(enum.Enum):
    RULE = "rule"  # spread each bias over the token pieces with the bias rule
    PIECE = "piece"  # add each bias to the trailing bias piece
    ADD = "add"  # add each bias to the one piece of each row (the fast path's frozen network)
    DROP = "drop"  # leave biases out (a purely linear map)


@dataclass(frozen=True)
class Settings:
    """The decomposition's options: the bias mode, the bias rule's name, the approximations' names."""

    bias_mode: BiasMode = BiasMode.RULE
    bias_rule: str = "absdot"
    include_ffn: bool = True
    ffn_approximation: str = "zo"
    head_approximation: str = "zo"


def add_bias(pieces: Tensor, bias: Optional[Tensor], settings: Settings, *, in_place: bool = False) -> Tensor:
    """Add ``bias`` (dim,) or per row (..., rows, dim) to a decomposition, as the settings say.

    Args:
        pieces: (batch, rows, pieces, dim).
        in_place: ``pieces`` is a temporary the caller no longer needs (a matmul's output): add
            into it instead of allocating a second tensor of its size (the memory planner counts
            one such temporary per feed-forward chunk).
    """
    if bias is None or settings.bias_mode is BiasMode.DROP:
        return pieces
    if bias.dim() > 1:
        bias = bias.unsqueeze(-2)
    if settings.bias_mode is BiasMode.PIECE:
        pieces = pieces if in_place else pieces.clone()
        pieces[..., -1:, :] += bias
        return pieces
    if settings.bias_mode is BiasMode.ADD:
        return pieces.add_(bias) if in_place else pieces + bias
    weights = bias_rule_weights(pieces, bias, settings.bias_rule).unsqueeze(-1)
    if in_place:
        return pieces.addcmul_(weights, bias)
    return torch.addcmul(pieces, weights, bias)


def token_pieces(pieces: Tensor, settings: Settings) -> Tensor:
    """The pieces that belong to input tokens (all but the bias piece, if any)."""
    return pieces[..., :-1, :] if settings.bias_mode is BiasMode.PIECE else pieces


def add_to_own_pieces(values: Tensor, bias: Tensor, own_scale: Optional[Tensor], *, first_row: int = 0) -> Tensor:
    """Add a bias to the piece of each row's own token (a bias applied before any token mixing).

    With one piece per row (the fast path) that piece is the token's; ``own_scale`` (batch, seq)
    multiplies the bias so the fast path can differentiate the token's share of it.

    Args:
        values: (batch, rows, pieces, dim), rows ``first_row, first_row + 1, ...`` of the sequence.
        bias: (dim,).
    """
    batch, rows, pieces, _ = values.shape
    if pieces == 1 and own_scale is not None:
        return values + (own_scale.unsqueeze(-1) * bias).unsqueeze(-2)
    values = values.clone()
    values[:, :, first_row : first_row + rows].diagonal(dim1=1, dim2=2).add_(bias.unsqueeze(-1))
    return values
