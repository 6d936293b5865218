"""The DecompX propagation engine, on plain captured tensors.

A decomposition is a tensor ``pieces`` of shape ``(batch, rows, pieces, dim)``: for every row
(sequence position) one vector per input token, whose sum over the pieces axis is the real hidden
state. Every function here maps pieces to pieces with the frozen coefficients of the real forward
pass (attention probabilities, normalization statistics, activation slopes). Biases are handled in
one of four ways (:class:`BiasMode`): spread over the token pieces by a bias rule, collected in an
extra trailing "bias piece", added to the single piece of the fast path's frozen network, or dropped.

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
    ADD = "add"  # add each bias to the one piece of each row (the fast path's frozen network)
    DROP = "drop"  # leave biases out (a purely linear map)


@dataclass(frozen=True)
class Settings:
    """The decomposition's options, validated by :class:`captum_decompx.DecompX`."""

    bias_mode: BiasMode = BiasMode.RULE
    bias_rule: str = "absdot"
    include_ffn: bool = True
    ffn_approximation: str = "zo"
    head_approximation: str = "zo"


NORM_KINDS = ("layer", "rms")


@dataclass(frozen=True)
class Norm:
    """A normalization's parameters: LayerNorm (``kind="layer"``) or RMSNorm (``"rms"``).

    ``weight``/``bias`` are (dim,) or None.
    """

    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float
    kind: str = "layer"


@dataclass(frozen=True)
class Affine:
    """A linear map ``x @ weight.T + bias``; ``weight`` is (out, in)."""

    weight: Tensor
    bias: Optional[Tensor]


@dataclass(frozen=True)
class LayerParams:
    """The parameters of one layer, in the compute dtype.

    ``attention_norm``/``ffn_norm`` are None where the model has no normalization there;
    ``ffn_gated`` means the feed-forward unit is ``act(gate) * ffn_in(x)``; ``pre_norm`` that the
    norms act on each block's input (pre-LN) rather than after its residual (post-LN).
    """

    value: Affine
    attention_output: Affine
    attention_norm: Optional[Norm]
    ffn_in: Affine
    ffn_activation: Callable[[Tensor], Tensor]
    ffn_out: Affine
    ffn_norm: Optional[Norm]
    ffn_gated: bool = False
    pre_norm: bool = False


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
    if settings.bias_mode is BiasMode.ADD:
        return pieces + bias
    return torch.addcmul(pieces, bias_rule_weights(pieces, bias, settings.bias_rule).unsqueeze(-1), bias)


def token_pieces(pieces: Tensor, settings: Settings) -> Tensor:
    """The pieces that belong to input tokens (all but the bias piece, if any)."""
    return pieces[..., :-1, :] if settings.bias_mode is BiasMode.PIECE else pieces


# --------------------------------------------------------------------------------------------
# Components


def linear(pieces: Tensor, affine: Affine, settings: Settings) -> Tensor:
    """``W`` on every piece, then the bias by the settings. pieces: (..., in) -> (..., out)."""
    return add_bias(pieces @ affine.weight.T, affine.bias, settings)


def normalize(
    pieces: Tensor,
    norm_input: Tensor,
    norm: Optional[Norm],
    settings: Settings,
    *,
    own_bias: bool = False,
    own_scale: Optional[Tensor] = None,
) -> Tensor:
    """LayerNorm or RMSNorm with the real statistics of its captured input.

    Args:
        pieces: (batch, rows, pieces, dim).
        norm_input: (batch, rows, dim), the real input of the normalization.
        norm: the parameters; None means no normalization (identity).
        own_bias: the norm acts before any token mixing (a pre-LN model's first norm): its bias
            belongs to each row's own token (see :func:`add_to_own_pieces`).
        own_scale: (batch, rows), fast path only.
    """
    if norm is None:
        return pieces
    if norm.kind == "rms":
        statistic = norm_input.pow(2).mean(-1, keepdim=True)
    else:
        statistic = norm_input.var(-1, unbiased=False, keepdim=True)
    factor = 1.0 / (statistic + norm.eps).sqrt().unsqueeze(-2)  # (batch, rows, 1, 1)
    if norm.weight is not None:
        factor = factor * norm.weight
    centred = pieces if norm.kind == "rms" else pieces - pieces.mean(-1, keepdim=True)
    out = centred * factor
    if norm.bias is None:
        return out
    if own_bias:
        return add_to_own_pieces(out, norm.bias, own_scale)
    return add_bias(out, norm.bias, settings)


def activation(
    pieces: Tensor,
    pre_activation: Tensor,
    function: Callable[[Tensor], Tensor],
    approximation: str,
    settings: Settings,
    *,
    inplace: bool = False,
) -> Tensor:
    """A pointwise nonlinearity frozen at the real pre-activation.

    ``"zo"``: ``theta = f(a) / (a + 1e-12)`` scales every piece; ``"la"``: the tangent line at
    ``a`` (slope ``f'(a)``; its intercept is a bias spread by the bias rule); ``"relu"``: pieces
    pass where ``a > 0``.

    Args:
        pieces: (batch, rows, pieces, dim).
        pre_activation: (batch, rows, dim), the real input of the nonlinearity.
        inplace: the zero-origin scaling may overwrite ``pieces`` (a temporary of the caller's).
    """
    a = pre_activation
    if approximation == "zo":
        theta = (function(a) / (a + ZERO_ORIGIN_EPS)).unsqueeze(-2)
        return pieces.mul_(theta) if inplace and not pieces.requires_grad else pieces * theta
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


def split_heads(values: Tensor, kv_heads: int) -> Tensor:
    """(batch, seq, pieces, kv_heads*head_dim) -> (batch, kv_heads, seq, pieces*head_dim)."""
    batch, seq, pieces, dim = values.shape
    head_dim = dim // kv_heads
    return values.view(batch, seq, pieces, kv_heads, head_dim).permute(0, 3, 1, 2, 4).reshape(
        batch, kv_heads, seq, pieces * head_dim
    )


def mix_heads(probs: Tensor, head_values: Tensor, pieces: int) -> Tensor:
    """Attention mixing of split values; query head ``h`` reads key-value head
    ``h // (heads // kv_heads)`` (grouped-query attention when ``kv_heads < heads``).

    Args:
        probs: (batch, heads, rows, seq).
        head_values: (batch, kv_heads, seq, pieces*head_dim), from :func:`split_heads`.

    Returns:
        (batch, rows, pieces, heads*head_dim).
    """
    batch, heads, rows, seq = probs.shape
    kv_heads = head_values.shape[1]
    group = heads // kv_heads
    grouped = probs.reshape(batch, kv_heads, group * rows, seq)
    mixed = grouped @ head_values
    head_dim = mixed.shape[-1] // pieces
    return mixed.view(batch, kv_heads, group, rows, pieces, head_dim).permute(0, 3, 4, 1, 2, 5).reshape(
        batch, rows, pieces, heads * head_dim
    )


def add_to_own_pieces(
    values: Tensor, bias: Tensor, own_scale: Optional[Tensor], *, first_row: int = 0
) -> Tensor:
    """Add a bias to the piece of each row's own token.

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


def layer_attention_bias(params: LayerParams, first: bool, heads: int) -> Optional[Tensor]:
    """The bias the attention block adds after mixing: ``b_O`` in the first layer (whose value
    bias belongs to the tokens), ``W_O b_v + b_O`` after it (rows of the attention probabilities
    sum to one, so the value bias passes through them unchanged; with grouped-query attention
    each key-value head's bias serves its group of query heads)."""
    out_bias = params.attention_output.bias
    value_bias = params.value.bias
    if first or value_bias is None:
        return out_bias
    head_dim = params.attention_output.weight.shape[1] // heads
    kv_heads = value_bias.shape[0] // head_dim
    value_bias = value_bias.view(kv_heads, head_dim).repeat_interleave(heads // kv_heads, dim=0).flatten()
    carried = params.attention_output.weight @ value_bias
    return carried if out_bias is None else carried + out_bias


def feed_forward(pieces: Tensor, pre_activation: Tensor, params: LayerParams, settings: Settings) -> Tensor:
    """The feed-forward network on a decomposition.

    Args:
        pieces: (batch, rows, pieces, dim).
        pre_activation: (batch, rows, ffn), the real input of the activation (for a gated unit,
            of the gate's activation, whose real value then scales the decomposed up-projection).
    """
    hidden = linear(pieces, params.ffn_in, settings)
    if params.ffn_gated:
        hidden = hidden * params.ffn_activation(pre_activation).unsqueeze(-2)
    else:
        hidden = activation(
            hidden, pre_activation, params.ffn_activation, settings.ffn_approximation, settings, inplace=True
        )
    return linear(hidden, params.ffn_out, settings)


# The exact path computes a layer's values in this many blocks of rows (bounds the transient memory).
VALUE_BLOCKS = 8


def attention_values(
    pieces: Tensor, params: LayerParams, heads: int, *, first: bool, own_scale: Optional[Tensor]
) -> Tensor:
    """Value vectors of every piece, split by key-value head: (batch, kv_heads, seq, pieces*head_dim).

    In the first layer the value bias belongs to each row's own token.
    """
    head_dim = params.attention_output.weight.shape[1] // heads
    weight, bias = params.value.weight, params.value.bias if first else None
    kv_heads = weight.shape[0] // head_dim
    batch, seq, n_pieces, _ = pieces.shape

    def split_values(rows: slice) -> Tensor:  # (batch, kv_heads, rows, pieces*head_dim)
        values = pieces[:, rows] @ weight.T
        if bias is not None:
            values = add_to_own_pieces(values, bias, own_scale, first_row=rows.start)
        return split_heads(values, kv_heads)

    if n_pieces == 1 or pieces.requires_grad:
        return split_values(slice(0, seq))
    # Many pieces: a block of rows at a time, so that the unsplit values never exist whole.
    split = pieces.new_empty(batch, kv_heads, seq, n_pieces * head_dim, dtype=torch.result_type(pieces, weight))
    block = -(-seq // VALUE_BLOCKS)
    for start in range(0, seq, block):
        rows = slice(start, min(seq, start + block))
        split[:, :, rows] = split_values(rows)
    return split


def transformer_layer(
    pieces: Tensor,
    record,
    params: LayerParams,
    settings: Settings,
    *,
    first: bool,
    row_chunks: list,
    own_scale: Optional[Tensor] = None,
) -> Tensor:
    """Propagate a decomposition through one transformer layer (post-LN or pre-LN).

    Post-LN (BERT): ``x -> h = norm1(x + attn(x)) -> norm2(h + ffn(h))``.
    Pre-LN (GPT-2, Llama, ViT): ``x -> h = x + attn(norm1(x)) -> h + ffn(norm2(h))``.

    Args:
        pieces: (batch, seq, pieces, dim), the decomposition of the layer's input. With several
            row chunks that cover every row in order, it is overwritten by the output.
        record: the layer's :class:`~captum_decompx.capture.LayerRecord` for this batch.
        row_chunks: which output rows to compute, in chunks (bounds the peak memory).
        own_scale: (batch, seq), fast path only (see :func:`add_to_own_pieces`).

    Returns:
        (batch, rows, pieces, dim) for the concatenated ``row_chunks``.
    """
    heads = record.attention_probs.shape[1]
    n_pieces = pieces.shape[2]
    attention_input = pieces
    if params.pre_norm:
        attention_input = normalize(
            pieces, record.attention_norm_input, params.attention_norm, settings, own_bias=first, own_scale=own_scale
        )
    head_values = attention_values(attention_input, params, heads, first=first, own_scale=own_scale)
    del attention_input
    attention_bias = layer_attention_bias(params, first, heads)

    def output_rows(rows) -> Tensor:
        mixed = mix_heads(record.attention_probs[:, :, rows], head_values, n_pieces)
        hidden = add_bias(torch.add(mixed @ params.attention_output.weight.T, pieces[:, rows]), attention_bias, settings)
        del mixed
        if params.pre_norm:
            if settings.include_ffn:
                normed = normalize(hidden, record.ffn_norm_input[:, rows], params.ffn_norm, settings)
                hidden = hidden + feed_forward(normed, record.ffn_pre_activation[:, rows], params, settings)
            return hidden
        hidden = normalize(hidden, record.attention_norm_input[:, rows], params.attention_norm, settings)
        if settings.include_ffn:
            hidden = hidden + feed_forward(hidden, record.ffn_pre_activation[:, rows], params, settings)
        return normalize(hidden, record.ffn_norm_input[:, rows], params.ffn_norm, settings)

    if len(row_chunks) == 1:
        return output_rows(row_chunks[0])
    # Chunks are written into one output as they come (concatenating them at the end would hold
    # the output twice). A chunk reads only its own rows of the input, so when the chunks are the
    # input's rows in order, each overwrites the rows it has consumed: the layer then holds the
    # input, the values and one chunk, not also a separate output.
    in_place = _rows_in_order(row_chunks, pieces.shape[1]) and not pieces.requires_grad
    output, done = None, 0
    for rows in row_chunks:
        chunk = output_rows(rows)
        if output is None:
            if in_place and chunk.shape[2:] == pieces.shape[2:] and chunk.dtype == pieces.dtype:
                output = pieces
            else:
                total = sum(_row_count(chunk_rows) for chunk_rows in row_chunks)
                output = chunk.new_empty((chunk.shape[0], total) + tuple(chunk.shape[2:]))
        output[:, done : done + chunk.shape[1]] = chunk
        done += chunk.shape[1]
        del chunk
    return output


def _row_count(rows) -> int:
    """The number of rows a chunk selects: a ``slice`` with explicit bounds, or an index tensor."""
    return rows.stop - rows.start if isinstance(rows, slice) else int(rows.numel())


def _rows_in_order(row_chunks: list, seq: int) -> bool:
    """Whether the chunks are the slices ``0:a, a:b, ..., z:seq``: every row once, in order."""
    done = 0
    for rows in row_chunks:
        if not isinstance(rows, slice) or rows.start != done:
            return False
        done = rows.stop
    return done == seq


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
    step_inputs: list[Optional[Tensor]],
    settings: Settings,
) -> Tensor:
    """Propagate the pooled decomposition through the classification head.

    Args:
        pooled: (batch, pieces, dim).
        steps: resolved head steps: :class:`Affine`, :class:`Norm`, or an activation function.
        step_inputs: for each activation or norm step, its real input (batch, dim); else None.

    Returns:
        (batch, pieces, classes).
    """
    pieces = pooled.unsqueeze(1)
    for step, real_input in zip(steps, step_inputs):
        if isinstance(step, Affine):
            pieces = linear(pieces, step, settings)
        elif isinstance(step, Norm):
            pieces = normalize(pieces, real_input.unsqueeze(1), step, settings)
        else:
            pieces = activation(pieces, real_input.unsqueeze(1), step, settings.head_approximation, settings)
    return pieces.squeeze(1)
