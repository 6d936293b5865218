"""Attention: values of every piece, mixed by the real attention probabilities, then ``W_O``.

Recorded: the attention module's probabilities (batch, heads, seq, seq), post-softmax, read from
its output ``(output, attention_probs)`` under eager attention. Grouped-query attention (fewer
key-value heads than query heads) is read from the value map's width.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import resolve
from ..recording import Reader, Recorder
from .base import Component
from .linear import Affine, LinearMap
from .pieces import add_to_own_pieces

# The exact path computes a layer's values in this many blocks of rows (bounds the transient memory).
VALUE_BLOCKS = 8


def split_heads(values: Tensor, kv_heads: int) -> Tensor:
    """(batch, seq, pieces, kv_heads*head_dim) -> (batch, kv_heads, seq, pieces*head_dim)."""
    batch, seq, pieces, dim = values.shape
    head_dim = dim // kv_heads
    return (
        values.view(batch, seq, pieces, kv_heads, head_dim)
        .permute(0, 3, 1, 2, 4)
        .reshape(batch, kv_heads, seq, pieces * head_dim)
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
    return (
        mixed.view(batch, kv_heads, group, rows, pieces, head_dim)
        .permute(0, 3, 4, 1, 2, 5)
        .reshape(batch, rows, pieces, heads * head_dim)
    )


def attention_bias(value: Affine, output: Affine, first: bool, heads: int) -> Optional[Tensor]:
    """The bias the attention block adds after mixing: ``b_O`` in the first layer (whose value
    bias belongs to the tokens), ``W_O b_v + b_O`` after it (rows of the attention probabilities
    sum to one, so the value bias passes through them unchanged; with grouped-query attention
    each key-value head's bias serves its group of query heads)."""
    out_bias = output.bias
    value_bias = value.bias
    if first or value_bias is None:
        return out_bias
    head_dim = output.weight.shape[1] // heads
    kv_heads = value_bias.shape[0] // head_dim
    value_bias = value_bias.view(kv_heads, head_dim).repeat_interleave(heads // kv_heads, dim=0).flatten()
    carried = output.weight @ value_bias
    return carried if out_bias is None else carried + out_bias


def attention_values(
    pieces: Tensor, value: Affine, output: Affine, heads: int, *, first: bool, own_scale: Optional[Tensor]
) -> Tensor:
    """Value vectors of every piece, split by key-value head: (batch, kv_heads, seq, pieces*head_dim).

    In the first layer the value bias belongs to each row's own token.
    """
    head_dim = output.weight.shape[1] // heads
    weight, bias = value.weight, value.bias if first else None
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


def _attention_probs(output: Any) -> Optional[Tensor]:
    if isinstance(output, tuple) and len(output) > 1:
        return output[1]
    return None


def _output_attentions_parameter(module: nn.Module) -> Optional[tuple[int, str]]:
    """``(position, "output_attentions")`` when the module's forward takes that argument.

    transformers 4.x builds BERT-family attention modules for ``sdpa`` at load time; switching the
    config to eager afterwards does not change their class, and they return their probabilities
    only when called with ``output_attentions=True`` (they then fall back to the eager code).
    """
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    if "output_attentions" not in names:
        return None
    return names.index("output_attentions"), "output_attentions"


@dataclass(frozen=True)
class AttentionParams:
    """The value map (all key-value heads) and ``W_O``."""

    value: Affine
    output: Affine


@dataclass(frozen=True)
class Attention(Component):
    """Attention at ``path`` with its value map and output map (``W_O``).

    Attributes:
        force_output_attentions: ``(position, name)`` of an argument that must be True for the
            module to return its probabilities; found from the signature when None.
    """

    path: str
    value: LinearMap
    output: LinearMap
    force_output_attentions: Optional[tuple[int, str]] = None

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        module = resolve(root, self.path)
        recorder.record_output(module, "probs", _attention_probs)
        force = self.force_output_attentions or _output_attentions_parameter(module)
        if force is not None:
            recorder.set_argument(module, "force", force[0], force[1], True)

    def read(self, reader: Reader, root: nn.Module, where: str) -> Tensor:
        """(batch, heads, seq, seq), the real attention probabilities."""
        probs = reader.take(resolve(root, self.path), "probs", where)
        if probs is None:
            raise RuntimeError(
                f"{where[0].upper()}{where[1:]} ({self.path}) returned no attention probabilities even "
                "with eager attention. Its adapter must name a module whose output is "
                "(output, attention_probs), or set force_output_attentions."
            )
        return probs

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> AttentionParams:
        return AttentionParams(self.value.resolve(root, dtype), self.output.resolve(root, dtype))
