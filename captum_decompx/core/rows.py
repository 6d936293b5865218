"""Several output positions of one pass, one class each: every step of a causal LM's generation
from one capture of the final sequence (exact path) or one frozen forward pass (fast path).

For a causal model the rows of earlier positions do not depend on later tokens, so the decomposition
of the final sequence holds every step's: :func:`decompose_rows` propagates only the rows asked for,
:func:`plan_rows` checks the memory they need before any work, :func:`fast_rows` is the batched
backward pass of the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..adapters import Adapter
from ..components import BiasMode, ModelParts, Settings, propagate_head_rows, token_pieces
from ..components.linear import Affine
from .capture import Captured
from .decomposition import FAST_GRADIENT_BYTES, Options, _shares, exact_settings, plan_exact, propagate_token_rows, resolve_parts
from .memory import DEFAULT_MAX_MEMORY, DecompXMemoryError, MemoryPlan

if TYPE_CHECKING:
    from .freezing import FrozenForward

__all__ = ["RowsDecomposition", "decompose_rows", "fast_rows", "plan_rows"]


@dataclass
class RowsDecomposition:
    """What :func:`decompose_rows` returns.

    Attributes:
        contributions: (batch, rows, seq), row ``r``: every token's share of the head's output at
            ``positions[r]`` for class ``classes[r]``.
        bias: (batch, rows), the part of those outputs given to no token (zero when the biases are
            spread over the tokens, the biases' share when they are left out).
    """

    contributions: Tensor
    bias: Tensor


def _selectable_head(parts: ModelParts, settings: Settings) -> bool:
    """Whether the head's output for one class per row can be computed from that class's weight
    row alone: a single linear step whose bias is not spread by a rule (the rule's weights read
    every class of the output)."""
    if len(parts.head) != 1 or not isinstance(parts.head[0].params, Affine):
        return False
    return parts.head[0].params.bias is None or settings.bias_mode is not BiasMode.RULE


def plan_rows(
    model: nn.Module,
    adapter: Adapter,
    options: Options,
    *,
    batch: int,
    seq: int,
    rows: int,
    dtype: torch.dtype,
    max_memory: int,
) -> tuple[MemoryPlan, int]:
    """The memory plan of :func:`decompose_rows`, checked before any work.

    Returns:
        The propagation's plan and the head's rows per chunk.

    Raises:
        DecompXMemoryError: the propagation, or the head on one row, does not fit ``max_memory``.
    """
    parts = resolve_parts(model, adapter, dtype)
    settings = exact_settings(options)
    hidden = max([layer.value.weight.shape[1] for layer in parts.layers] + [1])
    plan, sizes = plan_exact((batch, seq, hidden), parts, settings, dtype, max_memory)
    n_pieces, width, itemsize = sizes.pieces, sizes.width, sizes.itemsize
    kept = batch * rows * n_pieces * width * itemsize  # the last layer's rows, held while the head runs
    if _selectable_head(parts, settings):
        per_row = 2 * batch * n_pieces * max(rows, 1) * itemsize  # the row's pieces x the chunk's classes
    else:
        classes = next((int(s.params.weight.shape[0]) for s in reversed(parts.head) if isinstance(s.params, Affine)), width)
        per_row = 2 * batch * n_pieces * max(classes, width) * itemsize
    if kept + per_row > max_memory:
        raise DecompXMemoryError(
            f"Decomposing {rows} output positions of {seq} tokens needs {(kept + per_row) / 2**30:.2f} GiB for the "
            f"last layer's rows and the head, more than max_memory={max_memory / 2**30:.2f} GiB. Raise "
            "max_memory, explain fewer positions (a shorter target), or use algorithm='fast' "
            "(include_biases=False), which needs O(N) memory."
        )
    return plan, max(1, min(rows, (max_memory - kept) // per_row))


def decompose_rows(
    captured: Captured,
    model: nn.Module,
    adapter: Adapter,
    options: Options,
    *,
    positions: Tensor,
    classes: Tensor,
    dtype: torch.dtype,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> RowsDecomposition:
    """Decompose the head's output at several positions of one captured pass, one class per position.

    The rows of the last layer at ``positions`` are propagated as on the exact path (every row of
    the earlier layers, in chunks under ``max_memory``), then the head is applied to each row as
    at the pooled position. For a causal model the row at position ``p`` depends on tokens
    ``<= p`` only, so it equals the pooled decomposition of the prefix that ends at ``p``: one
    call explains every step of a generation. The head must read no real input of its own (a
    linear head, as causal LMs have).

    Args:
        captured: the records of the forward pass (batch, seq).
        positions: (rows,) ascending positions whose head output is decomposed.
        classes: (rows,) the class explained at each position.
        max_memory: bytes the decomposition may use; checked by :func:`plan_rows` first.

    Raises:
        DecompXMemoryError: the decomposition does not fit ``max_memory``.
        ValueError: the head reads a real input (its nonlinearity would need each row's input).
    """
    parts = resolve_parts(model, adapter, dtype)
    settings = exact_settings(options)
    if not options.include_head:
        raise ValueError("decompose_rows explains the head's outputs: keep include_head=True.")
    if any(step is not None for step in parts.head_input_steps):
        raise ValueError(
            f"The head of {adapter.name!r} reads real inputs (a nonlinearity or a norm), which the capture "
            "records at the pooled position only; decompose the positions one pass each."
        )
    embeddings = captured.layer_input
    batch, seq, _ = embeddings.shape
    positions = positions.to(embeddings.device)
    classes = classes.to(embeddings.device)
    plan, head_rows = plan_rows(
        model, adapter, options, batch=batch, seq=seq, rows=positions.numel(), dtype=dtype, max_memory=max_memory
    )
    n_pieces = seq + (1 if settings.bias_mode is BiasMode.PIECE else 0)
    selectable = _selectable_head(parts, settings)
    contributions_all, bias_all = [], []
    for start in range(0, batch, plan.examples_per_group):
        group = slice(start, min(start + plan.examples_per_group, batch))
        last = propagate_token_rows(
            embeddings, group, n_pieces, captured, parts, settings, dtype, rows_per_chunk=plan.rows_per_chunk, rows=positions
        )  # (group, rows, pieces, hidden)
        chunks = []
        for first in range(0, positions.numel(), head_rows):
            chunk = slice(first, min(first + head_rows, positions.numel()))
            wanted = classes[chunk]
            if selectable:  # only the classes of these rows: their weight rows
                used, where = torch.unique(wanted, return_inverse=True)
                affine_map = parts.head[0].params
                bias = None if affine_map.bias is None else affine_map.bias[used]
                steps = [replace(parts.head[0], params=Affine(affine_map.weight[used], bias))]
            else:
                steps, where = parts.head, wanted
            scores = propagate_head_rows(last[:, chunk], steps, [None] * len(steps), settings)  # (group, c, pieces, k)
            index = where.view(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
            chunks.append(scores.gather(3, index).squeeze(3))  # (group, c, pieces)
        scores = torch.cat(chunks, dim=1)
        contributions_all.append(token_pieces(scores.unsqueeze(-1), settings).squeeze(-1))
        bias_all.append(scores[:, :, -1] if settings.bias_mode is BiasMode.PIECE else torch.zeros_like(scores[:, :, 0]))
    return RowsDecomposition(torch.cat(contributions_all), torch.cat(bias_all))


def fast_rows(frozen: "FrozenForward", output: Tensor, positions: Tensor, vectors: Tensor, dtype: torch.dtype) -> Tensor:
    """Token shares of ``<vectors[g], output[:, positions[g]]>`` for every ``g``, from one frozen pass
    by batched backward passes (``is_grads_batched``), in groups whose gradients fit
    :data:`FAST_GRADIENT_BYTES`.

    Args:
        frozen: the state a frozen forward pass left (its leaves).
        output: (batch, seq, dim), a tensor of that pass's graph, e.g. the head's input.
        positions: (G,) the position each weighting reads.
        vectors: (G, dim) the weights, e.g. a linear head's row of each explained class.

    Returns:
        (G, batch, seq): row ``g`` holds each token's share ``<dF_g/de_k, e_k>`` of
        ``F_g = <vectors[g], output[:, positions[g]]>``, plus its share of its own biases.
    """
    embeddings = frozen.embeddings
    assert embeddings is not None
    per_output = embeddings.numel() * embeddings.element_size() + output.numel() * output.element_size()
    group = max(1, min(positions.numel(), FAST_GRADIENT_BYTES // max(per_output, 1)))
    vectors = vectors.to(output.dtype)
    shares = []
    for start in range(0, positions.numel(), group):
        rows = torch.arange(start, min(start + group, positions.numel()), device=output.device)
        grad_outputs = torch.zeros((rows.numel(),) + tuple(output.shape), dtype=output.dtype, device=output.device)
        grad_outputs[torch.arange(rows.numel(), device=output.device), :, positions[rows]] = vectors[rows].unsqueeze(1)
        last = int(rows[-1]) == positions.numel() - 1
        shares.append(_shares(output, grad_outputs, frozen, dtype, retain=not last)[0])
    return torch.cat(shares)
