"""Memory planning: how much memory a decomposition needs, and how the exact path splits its work.

The exact path holds one vector per (row, input token) in every layer: O(N^2) per example. It
runs groups of examples, and row chunks within a layer, so that its estimate stays under
``max_memory``; :func:`plan_memory` chooses both. The other estimates here (captured internals,
autograd activations) serve benchmarks that decide beforehand whether a run fits a machine.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_MEMORY = 4 * 2**30


class DecompXMemoryError(MemoryError):
    """The exact path cannot fit its decomposition into ``max_memory``, even in chunks."""


def readable_bytes(count: float) -> str:
    """``count`` bytes in the largest binary unit that keeps at least 1 before the point, with 3
    significant digits: ``"512 B"``, ``"195 KiB"``, ``"1.50 GiB"`` (never ``"0.00 GiB"``)."""
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:#.3g} {unit}"


@dataclass(frozen=True)
class ModelShape:
    """The sizes that memory depends on: layers, hidden size, attention heads, feed-forward width."""

    layers: int
    hidden: int
    heads: int
    ffn: int


@dataclass
class MemoryPlan:
    """How the exact path splits its work: examples per group, rows per chunk."""

    examples_per_group: int
    rows_per_chunk: int
    bytes_needed: int  # the peak estimate of the plan


@dataclass(frozen=True)
class PieceSizes:
    """The sizes the exact path's memory depends on, per example, besides the batch and the sequence length.

    Attributes:
        pieces: pieces per row: one per token, plus the bias piece when the biases are collected in one.
        width: the widest hidden state (the hidden size, or a wider value map).
        ffn: the feed-forward width (0 without the feed-forward networks).
        itemsize: bytes per number.
    """

    pieces: int
    width: int
    ffn: int
    itemsize: int


def exact_memory_per_example(seq: int, pieces: int, hidden: int, ffn: int, itemsize: int, rows: int) -> int:
    """Estimated peak bytes of one example: four (seq, pieces, hidden) tensors, plus the
    temporaries of ``rows`` rows (feed-forward pieces and norm/bias-rule intermediates).

    A layer holds two such tensors (its input, overwritten row chunk by row chunk with its output,
    and the attention values); the other two are headroom for the allocator, whose resident peak
    in a long-running process was measured up to one such tensor above the tensors' bytes
    (``benchmarks/speed.py``, BERT-base at N = 512). The per-row term matches the measured growth
    of the peak with the chunk size (10.7 MB per row against 11.0 MB estimated at N = 512).
    """
    state = 4 * seq * pieces * hidden
    per_row = pieces * (ffn + 3 * hidden)
    return itemsize * (state + rows * per_row)


def plan_memory(batch: int, seq: int, pieces: int, hidden: int, ffn: int, itemsize: int, max_memory: int) -> MemoryPlan:
    """The largest groups of examples, then the largest row chunks, whose estimate fits ``max_memory``.

    Args:
        batch: examples; seq: tokens per example; pieces: pieces per row (tokens, plus the bias
            piece when there is one); hidden: the widest hidden state; ffn: the feed-forward width
            (0 without the feed-forward networks); itemsize: bytes per number.

    Raises:
        DecompXMemoryError: even one example with one row per chunk does not fit.
    """
    full = exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, seq)
    if full <= max_memory:
        group = max(1, min(batch, max_memory // full))
        return MemoryPlan(group, seq, group * full)
    minimum = exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, 1)
    if minimum > max_memory:
        raise DecompXMemoryError(
            f"The exact DecompX path needs at least {readable_bytes(minimum)} for one example of "
            f"{seq} tokens (hidden {hidden}, feed-forward {ffn}), more than max_memory={max_memory:,} bytes "
            f"({readable_bytes(max_memory)}). Raise max_memory if the machine has the memory, shorten "
            "the input, or use algorithm='fast' (include_biases=False), which needs O(N) memory."
        )
    fixed = exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, 0)
    rows = int((max_memory - fixed) // (minimum - fixed))
    rows = max(1, min(seq, rows))
    return MemoryPlan(1, rows, exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, rows))


def captured_bytes(shape: ModelShape, batch: int, seq: int, itemsize: int = 4) -> int:
    """Bytes DecompX keeps from the real forward pass: per layer the attention probabilities,
    two norm inputs and the feed-forward pre-activations."""
    per_layer = shape.heads * seq**2 + seq * (2 * shape.hidden + shape.ffn)
    return itemsize * batch * shape.layers * per_layer


def autograd_bytes_per_sequence(shape: ModelShape, seq: int, itemsize: int = 4) -> int:
    """Bytes autograd keeps for one sequence of a forward pass with gradients (an upper estimate)."""
    per_token = 12 * shape.hidden + 2 * shape.ffn + 2 * shape.heads * seq
    return itemsize * shape.layers * seq * per_token


def exact_path_bytes(
    shape: ModelShape, batch: int, seq: int, max_memory: int, *, include_biases: bool = True, itemsize: int = 4
) -> int:
    """Upper estimate of the extra memory of one exact call: the captured internals plus the
    planner's peak estimate (which stays under ``max_memory``)."""
    pieces = seq + (0 if include_biases else 1)
    plan = plan_memory(batch, seq, pieces, shape.hidden, shape.ffn, itemsize, max_memory)
    return captured_bytes(shape, batch, seq, itemsize) + plan.bytes_needed


def fast_path_bytes(shape: ModelShape, batch: int, seq: int, itemsize: int = 4) -> int:
    """Upper estimate of the extra memory of one fast call: the captured internals plus one
    forward pass with gradients through the frozen network (two sequences' worth, for headroom)."""
    return captured_bytes(shape, batch, seq, itemsize) + 2 * batch * autograd_bytes_per_sequence(shape, seq, itemsize)
