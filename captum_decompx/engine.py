"""The DecompX propagation engine, on plain captured tensors.

A decomposition is a tensor ``pieces`` of shape ``(batch, rows, pieces, dim)``: for every row
(sequence position) one vector per input token, whose sum over the pieces axis is the real hidden
state. Every function here maps pieces to pieces with the frozen coefficients of the real forward
pass (attention probabilities, normalization statistics, activation slopes). Biases are handled in
one of three ways (:class:`BiasMode`): spread over the token pieces by a bias rule, collected in an
extra trailing "bias piece", or dropped (the linear map of the fast path).

The same functions serve the exact path (one piece per input token) and the fast path (a single
piece per row, differentiated afterwards).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

BIAS_RULES = ("absdot", "abssim", "norm", "equal", "cls")
FFN_APPROXIMATIONS = ("zo", "la", "relu")
HEAD_APPROXIMATIONS = ("zo", "la")
ZERO_ORIGIN_EPS = 1e-12
RULE_EPS = 1e-12


class BiasMode(enum.Enum):
    RULE = "rule"  # spread each bias over the token pieces with the bias rule
    PIECE = "piece"  # add each bias to the trailing bias piece
    DROP = "drop"  # leave biases out (a purely linear map)


@dataclass(frozen=True)
class Settings:
    """The decomposition's options, validated by :class:`captum_decompx.DecompX`."""

    bias_mode: BiasMode = BiasMode.RULE
    bias_rule: str = "absdot"
    include_ffn: bool = True
    ffn_approximation: str = "zo"
    head_approximation: str = "zo"


@dataclass(frozen=True)
class Norm:
    """A LayerNorm's parameters; ``weight``/``bias`` are (dim,)."""

    weight: Tensor
    bias: Optional[Tensor]
    eps: float


@dataclass(frozen=True)
class Affine:
    """A linear map ``x @ weight.T + bias``; ``weight`` is (out, in)."""

    weight: Tensor
    bias: Optional[Tensor]


@dataclass(frozen=True)
class LayerParams:
    """The parameters of one post-LN encoder layer, in the compute dtype."""

    value: Affine
    attention_output: Affine
    attention_norm: Norm
    ffn_in: Affine
    ffn_activation: Callable[[Tensor], Tensor]
    ffn_out: Affine
    ffn_norm: Norm


# --------------------------------------------------------------------------------------------
# Bias rules


def bias_rule_weights(pieces: Tensor, bias: Tensor, rule: str) -> Tensor:
    """Share of a bias that goes to each piece.

    Args:
        pieces: (..., pieces, dim).
        bias: (dim,), or (..., 1, dim) for a bias that differs per row.
        rule: one of :data:`BIAS_RULES`.

    Returns:
        (..., pieces), summing to one over the pieces axis (up to the ``1e-12`` guard).
    """
    if rule == "absdot":
        if bias.dim() == 1:
            scores = (pieces @ bias).abs()
        else:
            scores = (pieces @ bias.transpose(-1, -2)).squeeze(-1).abs()
    elif rule == "abssim":
        nonzero = torch.linalg.vector_norm(pieces, dim=-1) != 0
        scores = torch.nn.functional.cosine_similarity(pieces, bias, dim=-1).abs() * nonzero
    elif rule == "norm":
        scores = torch.linalg.vector_norm(pieces, dim=-1)
    elif rule == "equal":
        scores = (torch.linalg.vector_norm(pieces, dim=-1) != 0).to(pieces.dtype)
    elif rule == "cls":
        scores = torch.zeros(pieces.shape[:-1], dtype=pieces.dtype, device=pieces.device)
        scores[..., 0] = 1.0
    else:
        raise ValueError(f"Unknown bias rule {rule!r}; valid rules: {', '.join(BIAS_RULES)}.")
    return scores / (scores.sum(-1, keepdim=True) + RULE_EPS)


def add_bias(pieces: Tensor, bias: Optional[Tensor], settings: Settings) -> Tensor:
    """Add ``bias`` (dim,) or per row (..., rows, dim) to a decomposition, as the settings say.

    Args:
        pieces: (batch, rows, pieces, dim).
    """
    if bias is None or settings.bias_mode is BiasMode.DROP:
        return pieces
    if bias.dim() > 1:
        bias = bias.unsqueeze(-2)
    if settings.bias_mode is BiasMode.PIECE:
        pieces = pieces.clone()
        pieces[..., -1:, :] += bias
        return pieces
    return pieces + bias_rule_weights(pieces, bias, settings.bias_rule).unsqueeze(-1) * bias


def token_pieces(pieces: Tensor, settings: Settings) -> Tensor:
    """The pieces that belong to input tokens (all but the bias piece, if any)."""
    return pieces[..., :-1, :] if settings.bias_mode is BiasMode.PIECE else pieces


# --------------------------------------------------------------------------------------------
# Components


def linear(pieces: Tensor, affine: Affine, settings: Settings) -> Tensor:
    """``W`` on every piece, then the bias by the settings. pieces: (..., in) -> (..., out)."""
    return add_bias(pieces @ affine.weight.T, affine.bias, settings)


def layer_norm(pieces: Tensor, norm_input: Tensor, norm: Norm, settings: Settings) -> Tensor:
    """LayerNorm with the real statistics of its captured input.

    Args:
        pieces: (batch, rows, pieces, dim).
        norm_input: (batch, rows, dim), the real input of the normalization.
    """
    variance = norm_input.var(-1, unbiased=False, keepdim=True)
    scale = (variance + norm.eps).sqrt().unsqueeze(-2)
    centred = pieces - pieces.mean(-1, keepdim=True)
    out = centred / scale
    if norm.weight is not None:
        out = out * norm.weight
    return add_bias(out, norm.bias, settings)


def activation(
    pieces: Tensor,
    pre_activation: Tensor,
    function: Callable[[Tensor], Tensor],
    approximation: str,
    settings: Settings,
) -> Tensor:
    """A pointwise nonlinearity frozen at the real pre-activation.

    ``"zo"``: ``theta = f(a) / (a + 1e-12)`` scales every piece; ``"la"``: the tangent line at
    ``a`` (slope ``f'(a)``; its intercept is a bias spread by the bias rule); ``"relu"``: pieces
    pass where ``a > 0``.

    Args:
        pieces: (batch, rows, pieces, dim).
        pre_activation: (batch, rows, dim), the real input of the nonlinearity.
    """
    a = pre_activation
    if approximation == "zo":
        return pieces * (function(a) / (a + ZERO_ORIGIN_EPS)).unsqueeze(-2)
    if approximation == "relu":
        return pieces * (a > 0).to(pieces.dtype).unsqueeze(-2)
    if approximation == "la":
        with torch.enable_grad():
            point = a.detach().requires_grad_(True)
            value = function(point)
            (slope,) = torch.autograd.grad(value.sum(), point)
        intercept = value.detach() - slope * a
        return add_bias(pieces * slope.unsqueeze(-2), intercept, settings)
    raise ValueError(f"Unknown approximation {approximation!r}.")


def split_heads(values: Tensor, heads: int) -> Tensor:
    """(batch, seq, pieces, heads*head_dim) -> (batch, heads, seq, pieces*head_dim)."""
    batch, seq, pieces, dim = values.shape
    head_dim = dim // heads
    return values.view(batch, seq, pieces, heads, head_dim).permute(0, 3, 1, 2, 4).reshape(
        batch, heads, seq, pieces * head_dim
    )


def mix_heads(probs: Tensor, head_values: Tensor, pieces: int) -> Tensor:
    """Attention mixing of split values.

    Args:
        probs: (batch, heads, rows, seq).
        head_values: (batch, heads, seq, pieces*head_dim), from :func:`split_heads`.

    Returns:
        (batch, rows, pieces, heads*head_dim).
    """
    batch, heads, rows, _ = probs.shape
    mixed = probs @ head_values
    head_dim = mixed.shape[-1] // pieces
    return mixed.view(batch, heads, rows, pieces, head_dim).permute(0, 2, 3, 1, 4).reshape(
        batch, rows, pieces, heads * head_dim
    )


def add_to_own_pieces(values: Tensor, bias: Tensor, own_scale: Optional[Tensor]) -> Tensor:
    """Add a bias to the piece of each row's own token.

    With one piece per row (the fast path) that piece is the token's; ``own_scale`` (batch, seq)
    multiplies the bias so the fast path can differentiate the token's share of it.

    Args:
        values: (batch, seq, pieces, dim).
        bias: (dim,).
    """
    batch, seq, pieces, _ = values.shape
    if pieces == 1 and own_scale is not None:
        return values + (own_scale.unsqueeze(-1) * bias).unsqueeze(-2)
    values = values.clone()
    values[:, :, :seq].diagonal(dim1=1, dim2=2).add_(bias.unsqueeze(-1))
    return values


def layer_attention_bias(params: LayerParams, first: bool) -> Optional[Tensor]:
    """The bias the attention block adds after mixing: ``b_O`` in the first layer (whose value
    bias belongs to the tokens), ``W_O b_v + b_O`` after it."""
    out_bias = params.attention_output.bias
    value_bias = params.value.bias
    if first or value_bias is None:
        return out_bias
    carried = params.attention_output.weight @ value_bias
    return carried if out_bias is None else carried + out_bias


def post_ln_layer(
    pieces: Tensor,
    record,
    params: LayerParams,
    settings: Settings,
    *,
    first: bool,
    row_chunks: list[slice],
    own_scale: Optional[Tensor] = None,
) -> Tensor:
    """Propagate a decomposition through one post-LN encoder layer.

    Args:
        pieces: (batch, seq, pieces, dim), the decomposition of the layer's input.
        record: the layer's :class:`~captum_decompx.capture.LayerRecord`, already sliced to the batch.
        row_chunks: which output rows to compute, in chunks (bounds the peak memory).
        own_scale: (batch, seq), fast path only (see :func:`add_to_own_pieces`).

    Returns:
        (batch, rows, pieces, dim) for the concatenated ``row_chunks``.
    """
    heads = record.attention_probs.shape[1]
    n_pieces = pieces.shape[2]
    values = pieces @ params.value.weight.T
    if first and params.value.bias is not None:
        values = add_to_own_pieces(values, params.value.bias, own_scale)
    head_values = split_heads(values, heads)
    del values
    attention_bias = layer_attention_bias(params, first)
    outputs = []
    for rows in row_chunks:
        mixed = mix_heads(record.attention_probs[:, :, rows], head_values, n_pieces)
        residual = mixed @ params.attention_output.weight.T + pieces[:, rows]
        del mixed
        residual = add_bias(residual, attention_bias, settings)
        normed = layer_norm(residual, record.attention_norm_input[:, rows], params.attention_norm, settings)
        del residual
        if settings.include_ffn:
            hidden = linear(normed, params.ffn_in, settings)
            hidden = activation(
                hidden,
                record.ffn_pre_activation[:, rows],
                params.ffn_activation,
                settings.ffn_approximation,
                settings,
            )
            ffn_out = linear(hidden, params.ffn_out, settings)
            del hidden
            normed = normed + ffn_out
            del ffn_out
        outputs.append(layer_norm(normed, record.ffn_norm_input[:, rows], params.ffn_norm, settings))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def pool(pieces: Tensor, pool_weights: Tensor) -> Tensor:
    """Pooling as a linear selection of rows.

    Args:
        pieces: (batch, rows, pieces, dim).
        pool_weights: (batch, rows).

    Returns:
        (batch, pieces, dim).
    """
    return torch.einsum("br,brkd->bkd", pool_weights, pieces)


def head(
    pooled: Tensor,
    steps: list,
    pre_activations: list[Optional[Tensor]],
    settings: Settings,
) -> Tensor:
    """Propagate the pooled decomposition through the classification head.

    Args:
        pooled: (batch, pieces, dim).
        steps: resolved head steps: :class:`Affine` or an activation function.
        pre_activations: for each activation step, its real input (batch, dim); None otherwise.

    Returns:
        (batch, pieces, classes).
    """
    pieces = pooled.unsqueeze(1)
    for step, pre_activation in zip(steps, pre_activations):
        if isinstance(step, Affine):
            pieces = linear(pieces, step, settings)
        else:
            pieces = activation(
                pieces, pre_activation.unsqueeze(1), step, settings.head_approximation, settings
            )
    return pieces.squeeze(1)
