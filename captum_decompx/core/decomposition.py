"""From a forward pass to per-token contributions: the math of the exact and the fast path.

- :func:`decompose` is the exact path: it propagates one piece per input token (plus a bias piece
  when the biases are left out, :func:`exact_settings`) through every component of the network
  (:mod:`captum_decompx.components`) of a captured forward pass, and reduces the result to the
  target classes when asked.
- :func:`fast` is the fast path (biases left out, :func:`fast_settings`): the gradient, by one
  backward pass, of the one forward pass of the real model in which every nonlinear coefficient
  was frozen (:mod:`captum_decompx.core.freezing`).

Which of them runs is decided once, by the strategy objects of :mod:`captum_decompx.core.algorithms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

from ..adapters import Adapter
from ..components import BiasMode, ModelParts, Network, Settings, normalize, token_pieces, transformer_layer
from ..components.head import propagate_head, propagate_head_rows
from ..components.linear import affine
from ..components.merging import merge_patches
from ..components.network import EncoderParts, StackRecord
from ..components.norms import norm_params
from ..components.pooling import pool, pool_weights, pooled_rows, recorded_position
from ..components.probe import probe_pool
from .capture import Captured
from .memory import (
    DEFAULT_MAX_MEMORY,
    DecompXMemoryError,
    MemoryPlan,
    PieceSizes,
    exact_memory_per_example,
    plan_memory,
    readable_bytes,
)

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "Decomposition",
    "DecompXMemoryError",
    "ExactResult",
    "FastResult",
    "MemoryPlan",
    "ModelParts",
    "Options",
    "affine",
    "decompose",
    "exact",
    "exact_memory_per_example",
    "exact_settings",
    "fast",
    "fast_settings",
    "norm_params",
    "padding_mask",
    "plan_memory",
    "pool_weights",
    "pooling_of",
    "resolve_parts",
]

if TYPE_CHECKING:
    from .freezing import FrozenForward

# A stack's records and parameters: the model's, or an encoder-decoder's encoder's (the same fields).
Records = Union[Captured, StackRecord]
Parts = Union[ModelParts, EncoderParts]


def resolve_parts(model: nn.Module, adapter: Adapter, dtype: torch.dtype) -> ModelParts:
    """Read the parameters the adapter points to (the model itself is not touched)."""
    return Network.of(adapter).resolve(model, dtype)


def padding_mask(captured: Captured) -> Tensor:
    """(batch, seq) bool: True where some query attends to the token in the first layer, and at
    the token a decoder classifier pools by id (Hugging Face reads the last position when given
    embeddings, even a masked one: its own state then carries its share)."""
    real = (captured.layers[0].attention_probs != 0).any(dim=1).any(dim=1)
    if captured.pooling is not None:
        batch, seq = real.shape
        real[torch.arange(batch, device=real.device), recorded_position(captured.pooling, batch, seq, real.device)] = True
    return real


def pooling_of(captured: Captured, adapter: Adapter, dtype: torch.dtype) -> Tensor:
    """(batch, seq) pooling weights of a captured forward pass: the row(s) the model's head read.
    With patch mergings (Swin), ``seq`` is the last layer's number of tokens, all of them real."""
    if captured.merges:
        last = captured.layers[-1].attention_probs
        real = torch.ones(last.shape[0], last.shape[-1], dtype=torch.bool, device=last.device)
        return pool_weights(adapter, real, dtype, captured.pooling)
    return pool_weights(adapter, padding_mask(captured), dtype, captured.pooling)


def _head_inputs(parts: ModelParts, captured: Captured, batch: slice, dtype) -> list[Optional[Tensor]]:
    return [None if step is None else captured.head_inputs[step][batch].to(dtype) for step in parts.head_input_steps]


def _final_norm(pieces: Tensor, parts: Parts, captured: Records, batch: slice, rows, settings: Settings, dtype) -> Tensor:
    """The final norm of pre-LN models on the computed rows of the last layer."""
    if parts.final_norm is None:
        return pieces
    assert captured.final_norm_input is not None
    return normalize(pieces, captured.final_norm_input[batch][:, rows].to(dtype), parts.final_norm, settings)


def propagate_rows(
    pieces: Tensor,
    captured: Records,
    parts: Parts,
    settings: Settings,
    batch: slice,
    dtype: torch.dtype,
    *,
    rows_per_chunk: int,
    last_rows: Optional[Tensor] = None,
    own_scale: Optional[Tensor] = None,
    on_layer: Optional[Callable[[int, Tensor], None]] = None,
    encoder_pieces: Optional[Tensor] = None,
) -> Tensor:
    """Propagate a decomposition of the embeddings through every layer and the final norm (of the
    model, or of an encoder-decoder's encoder: its :class:`StackRecord` and :class:`EncoderParts`).

    Args:
        pieces: (batch, seq, pieces, hidden), the decomposition of the first layer's input.
        batch: which examples of ``captured`` these are.
        last_rows: (rows,) the rows of the last layer to compute, ascending; None: every row.
        on_layer: called with each layer's index and output decomposition (before a patch
            merging that follows the layer).
        encoder_pieces: an encoder-decoder's decoder only: the encoder's output decomposed in the
            decoder's piece layout, read by every layer's cross-attention.

    Returns:
        (batch, rows, pieces, hidden): the last layer's rows ``last_rows`` (every row for None).
    """
    seq = pieces.shape[1]
    everything = torch.arange(seq, device=pieces.device)
    rows = everything
    for index, (record, params) in enumerate(zip(captured.layers, parts.layers)):
        if index == len(parts.layers) - 1 and last_rows is not None:
            rows = last_rows.to(pieces.device)
        pieces = transformer_layer(
            pieces,
            record.select(batch, dtype),
            params,
            settings,
            first=index == 0,
            row_chunks=_chunks(rows, rows_per_chunk),
            own_scale=own_scale,
            encoder_pieces=encoder_pieces,
        )
        if on_layer is not None:
            on_layer(index, pieces)
        if index in parts.merges:  # a patch merging (Swin): a quarter of the rows, the same pieces
            pieces = merge_patches(pieces, captured.merges[index].select(batch, dtype), parts.merges[index], settings)
            rows = torch.arange(pieces.shape[1], device=pieces.device)
    return _final_norm(pieces, parts, captured, batch, rows, settings, dtype)


def propagate_and_pool(
    pieces: Tensor,
    captured: Captured,
    parts: ModelParts,
    settings: Settings,
    pooling: Tensor,
    batch: slice,
    dtype: torch.dtype,
    *,
    rows_per_chunk: int,
    all_rows: bool = False,
    own_scale: Optional[Tensor] = None,
    on_layer: Optional[Callable[[int, Tensor], None]] = None,
) -> Tensor:
    """Propagate a decomposition of the embeddings through every layer and the final norm, then
    pool it.

    Args:
        pieces: (batch, seq, pieces, hidden), the decomposition of the first layer's input.
        pooling: (batch, seq) pooling weights of these examples, or (batch, groups, seq) for a
            concatenating pooling (see :func:`~captum_decompx.components.pooling.pool`).
        batch: which examples of ``captured`` these are.
        all_rows: compute every row of the last layer too (else only the pooled rows).
        on_layer: called with each layer's index and output decomposition.

    Returns:
        (batch, pieces, hidden), the pooled decomposition.
    """
    # the pooling weights are over the last layer's rows (fewer than the input's after patch mergings)
    rows = torch.arange(pooling.shape[-1], device=pieces.device)
    if not all_rows:
        rows = pooled_rows(pooling).to(pieces.device)
    pieces = propagate_rows(
        pieces,
        captured,
        parts,
        settings,
        batch,
        dtype,
        rows_per_chunk=rows_per_chunk,
        last_rows=None if all_rows else rows,
        own_scale=own_scale,
        on_layer=on_layer,
    )
    if parts.probe is not None:  # an attention-pooling head reads every row
        assert captured.probe is not None, "the capture recorded no attention-pooling head"
        return probe_pool(pieces, captured.probe.select(batch, dtype), parts.probe, settings)
    return pool(pieces, pooling[..., rows])


def _chunks(rows: Tensor, size: int) -> list:
    if rows.numel() == 0:
        return []
    if rows.numel() == int(rows[-1]) - int(rows[0]) + 1:
        start, stop = int(rows[0]), int(rows[-1]) + 1
        return [slice(s, min(s + size, stop)) for s in range(start, stop, size)]
    return [rows[i : i + size] for i in range(0, rows.numel(), size)]


# --------------------------------------------------------------------------------------------
# The entry point


@dataclass(frozen=True)
class Options:
    """What to decompose and how (validated by :class:`captum_decompx.DecompX`).

    Attributes:
        include_biases: spread every bias over the tokens; False leaves them out (their share is
            reported separately).
        bias_rule: a registered bias rule's name (:data:`~captum_decompx.components.BIAS_RULES`).
        include_ffn: propagate through the feed-forward networks.
        ffn_approximation, head_approximation: registered approximations' names.
        include_head: propagate through the classification head.
    """

    include_biases: bool = True
    bias_rule: str = "absdot"
    include_ffn: bool = True
    ffn_approximation: str = "zo"
    include_head: bool = True
    head_approximation: str = "zo"


def _settings(options: Options, bias_mode: BiasMode) -> Settings:
    return Settings(bias_mode, options.bias_rule, options.include_ffn, options.ffn_approximation, options.head_approximation)


def exact_settings(options: Options) -> Settings:
    """The exact path's settings: the biases spread by the rule, or, left out, collected in a bias piece."""
    return _settings(options, BiasMode.RULE if options.include_biases else BiasMode.PIECE)


def fast_settings(options: Options) -> Settings:
    """The fast path's settings: the frozen network keeps the biases in its single piece (their
    share is then the frozen logits minus the token shares); it does not spread them."""
    if options.include_biases:
        raise ValueError("The fast path decomposes the bias-free network: use the exact path to decompose the biases.")
    return _settings(options, BiasMode.ADD)


@dataclass
class Decomposition:
    """What :func:`decompose` returns.

    Padding positions are not zeroed: a padding token's share is what the decomposition gives it,
    exactly zero where no row the output reads attends to it (a masked key), and its real share
    where the model itself reads it (a padding position the head pools, e.g. position 0 of a
    left-padded encoder classifier, keeps its own embedding through the residuals; a query
    row whose eager attention spreads over every key reads the padding tokens too).

    Attributes:
        contributions: (batch, seq, classes), every token's contribution to every class logit;
            None without the head, or when only the targets were computed.
        target_contributions: (batch, seq), the contributions to each example's target class,
            when targets were given.
        bias: (batch, classes), the part of each logit not given to any token: zero when the
            biases are spread over the tokens, the biases' share when they are left out. None
            without the head or when only the targets were computed.
        pooled: (batch, seq, hidden), the pooled token's decomposition after the last layer
            (final norm included); None when not asked for on the fast path with the head.
        token_maps: per layer the (batch, seq, seq) norms ``||X_l[i, k]||``, when asked for.
        positions: for a per-position adapter (``pooling="each"``), the (rows,) positions whose
            outputs were decomposed; ``contributions`` is then (batch, rows, seq, classes) (row
            ``r`` explains the model's output at ``positions[r]``) and ``bias`` (batch, rows,
            classes). None for a pooled adapter.
    """

    contributions: Optional[Tensor]
    target_contributions: Optional[Tensor]
    bias: Optional[Tensor]
    pooled: Optional[Tensor]
    token_maps: Optional[list[Tensor]]
    positions: Optional[Tensor] = None


def decompose(
    captured: Captured,
    model: nn.Module,
    adapter: Adapter,
    options: Options,
    *,
    dtype: torch.dtype,
    max_memory: int = DEFAULT_MAX_MEMORY,
    targets: Optional[Tensor] = None,
    pooled: bool = False,
    token_maps: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    positions: Optional[Tensor] = None,
) -> Decomposition:
    """Decompose a captured forward pass by the exact path (the fast path, :func:`fast`, runs a
    frozen forward pass of its own instead of decomposing a captured one).

    Args:
        captured: the records of the forward pass (:func:`~captum_decompx.core.capture.capture_internals`).
        model, adapter: the model that was captured and its adapter (for the parameters).
        dtype: the compute dtype.
        max_memory: bytes the exact path may use for its decomposition.
        targets: (batch,) one class per example: also reduce to ``target_contributions``.
        pooled: also return the pooled decomposition.
        token_maps: also return the per-layer token maps.
        progress: called with the number of examples finished.
        positions: per-position adapters (``pooling="each"``) only: the (rows,) output positions
            to decompose, ascending (None: every position). See :class:`Decomposition`.
    """
    parts = resolve_parts(model, adapter, dtype)
    settings = exact_settings(options)
    if adapter.pooling == "each":
        what = f"the per-position head of {adapter.name!r} (question answering, token classification, masked LM, hidden states)"
        if not options.include_head:
            raise ValueError(
                f"include_head=False scores the norms of the pooled token's decomposition; {what} has no pooled "
                "token. Keep include_head=True (an adapter with an empty head explains the hidden states)."
            )
        if targets is not None or pooled or token_maps:
            raise NotImplementedError(f"targets=, pooled= and token_maps= are not available for {what}.")
        return _per_position(
            captured, parts, settings, what, dtype=dtype, max_memory=max_memory, progress=progress, positions=positions
        )
    result = exact(
        captured,
        parts,
        settings,
        pooling_of(captured, adapter, dtype),
        include_head=options.include_head,
        max_memory=max_memory,
        dtype=dtype,
        token_maps=token_maps,
        progress=progress,
    )
    contributions, bias = None, None
    if options.include_head:
        assert result.contributions is not None
        contributions = result.contributions
        # zero when every bias was spread over the tokens
        bias = torch.zeros_like(captured.logits) if result.bias is None else result.bias.to(captured.logits.dtype)
    return Decomposition(
        contributions=contributions,
        target_contributions=None if contributions is None else _targets_of(contributions, targets),
        bias=bias,
        pooled=result.pooled,
        token_maps=result.token_maps,
    )


def _per_position(
    captured: Captured,
    parts: ModelParts,
    settings: Settings,
    what: str,
    *,
    dtype: torch.dtype,
    max_memory: int,
    progress: Optional[Callable[[int], None]],
    positions: Optional[Tensor],
) -> Decomposition:
    """A head applied at every position (``what``): every asked-for row of the last layer, then
    the head on each row (with that row's frozen nonlinearities)."""
    embeddings = captured.layer_input
    batch, seq, _ = embeddings.shape
    rows = torch.arange(seq, device=embeddings.device) if positions is None else positions.to(embeddings.device)
    n_pieces = seq + (1 if settings.bias_mode is BiasMode.PIECE else 0)
    classes = next(
        (step.params.weight.shape[0] for step in reversed(parts.head) if hasattr(step.params, "weight")), embeddings.shape[2]
    )
    result_bytes = batch * rows.numel() * n_pieces * int(classes) * (torch.finfo(dtype).bits // 8)
    if result_bytes > max_memory:
        raise DecompXMemoryError(
            f"Decomposing {rows.numel()} positions x {classes} outputs of {what} for {batch} example(s) "
            f"needs {readable_bytes(result_bytes)} for the result alone, more than max_memory={max_memory:,} bytes "
            f"({readable_bytes(max_memory)}). Explain one output with DecompX.attribute(..., target=(position, "
            "class)) (only the positions the target uses are decomposed), pass fewer examples, or raise max_memory."
        )
    plan, _ = plan_exact(tuple(embeddings.shape), parts, settings, dtype, max_memory)
    contributions_all, bias_all = [], []
    for group in _groups(batch, plan, progress):
        last = propagate_token_rows(
            embeddings, group, n_pieces, captured, parts, settings, dtype, rows_per_chunk=plan.rows_per_chunk, rows=rows
        )  # (group, rows, pieces, hidden)
        inputs = [None if x is None else x[:, rows] for x in _head_inputs(parts, captured, group, dtype)]
        scores = propagate_head_rows(last, parts.head, inputs, settings)  # (group, rows, pieces, classes)
        contributions_all.append(token_pieces(scores, settings))
        if settings.bias_mode is BiasMode.PIECE:
            bias_all.append(scores[:, :, -1])
    # (batch, rows, seq, classes). Not zeroed at padding tokens: a padding token gives nothing to
    # the rows of real tokens (no query attends to it), but a padding position's own output row
    # keeps its own embedding (the residual), and that share is part of the output.
    contributions = torch.cat(contributions_all)
    logits_dtype = captured.logits.dtype if captured.logits.dtype.is_floating_point else contributions.dtype
    if settings.bias_mode is BiasMode.PIECE:
        bias = torch.cat(bias_all).to(logits_dtype)
    else:  # every bias was spread over the tokens
        bias = torch.zeros(contributions.shape[:2] + contributions.shape[3:], dtype=logits_dtype, device=contributions.device)
    return Decomposition(contributions, None, bias, None, None, positions=rows)


def _targets_of(contributions: Tensor, targets: Optional[Tensor]) -> Optional[Tensor]:
    if targets is None:
        return None
    return contributions.gather(2, targets.view(-1, 1, 1).expand(-1, contributions.shape[1], 1)).squeeze(-1)


# --------------------------------------------------------------------------------------------
# Exact path


def propagate_token_rows(
    embeddings: Tensor,
    group: slice,
    n_pieces: int,
    captured: Captured,
    parts: ModelParts,
    settings: Settings,
    dtype: torch.dtype,
    *,
    rows_per_chunk: int,
    rows: Tensor,
) -> Tensor:
    """The last layer's rows ``rows`` for the examples ``group``, each token starting as its own piece.

    Args:
        embeddings: (batch, seq, hidden), the first layer's input of every example.
        n_pieces: pieces per row: one per token, plus the bias piece when the biases are collected in one.
        rows: (rows,) the rows of the last layer to compute, ascending.

    Returns:
        (group, rows, pieces, hidden).
    """
    # The initial decomposition is built in the call: no name keeps it alive while the layers run.
    return propagate_rows(
        _diagonal_pieces(embeddings[group], n_pieces, dtype),
        captured,
        parts,
        settings,
        group,
        dtype,
        rows_per_chunk=rows_per_chunk,
        last_rows=rows,
    )


def _diagonal_pieces(embeddings: Tensor, n_pieces: int, dtype: torch.dtype) -> Tensor:
    """(batch, seq, pieces, hidden): each token's embedding is its own piece, ``X0[i, k] = e_i [i == k]``."""
    batch, seq, hidden = embeddings.shape
    pieces = torch.zeros(batch, seq, n_pieces, hidden, dtype=dtype, device=embeddings.device)
    pieces[:, :, :seq].diagonal(dim1=1, dim2=2).copy_(embeddings.to(dtype).transpose(1, 2))
    return pieces


def plan_exact(
    shape: tuple[int, ...], parts: ModelParts, settings: Settings, dtype: torch.dtype, max_memory: int
) -> tuple[MemoryPlan, PieceSizes]:
    """The exact path's memory plan for embeddings of ``shape`` (batch, seq, hidden), and the sizes
    it was made from."""
    batch, seq, hidden = shape
    ffn = max(layer.ffn_in.weight.shape[0] for layer in parts.layers)
    sizes = PieceSizes(
        pieces=seq + (1 if settings.bias_mode is BiasMode.PIECE else 0),
        width=max([hidden] + [layer.value.weight.shape[0] for layer in parts.layers]),
        ffn=ffn if settings.include_ffn else 0,
        itemsize=torch.finfo(dtype).bits // 8,
    )
    return plan_memory(batch, seq, sizes.pieces, sizes.width, sizes.ffn, sizes.itemsize, max_memory), sizes


def _groups(batch: int, plan: MemoryPlan, progress: Optional[Callable[[int], None]]) -> Iterator[slice]:
    """The groups of examples the plan decomposes at once; ``progress`` hears of each finished one."""
    for start in range(0, batch, plan.examples_per_group):
        group = slice(start, min(start + plan.examples_per_group, batch))
        yield group
        if progress is not None:
            progress(group.stop - group.start)


@dataclass
class ExactResult:
    """Per example: contributions (batch, seq, classes) and the bias piece's share (batch, classes),
    or, without the head, the pooled decomposition (batch, seq, hidden)."""

    contributions: Optional[Tensor]
    bias: Optional[Tensor]
    pooled: Tensor
    token_maps: Optional[list[Tensor]]


def exact(
    captured: Captured,
    parts: ModelParts,
    settings: Settings,
    pooling: Tensor,
    *,
    include_head: bool,
    max_memory: int,
    dtype: torch.dtype,
    token_maps: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> ExactResult:
    """Propagate one piece per input token through every layer and the head.

    Args:
        pooling: (batch, seq) pooling weights over the last layer's rows.
        token_maps: also return, per layer, the (batch, seq, seq) norms ``||X_l[i, k]||`` (all
            rows of every layer are then computed).
        progress: called with the number of examples finished.
    """
    embeddings = captured.layer_input
    plan, sizes = plan_exact(tuple(embeddings.shape), parts, settings, dtype, max_memory)
    n_pieces = sizes.pieces
    pooled_all, contributions_all, bias_all = [], [], []
    maps_all: list[list[Tensor]] = [[] for _ in parts.layers]
    for group in _groups(embeddings.shape[0], plan, progress):

        def record_map(index: int, layer_pieces: Tensor) -> None:
            maps_all[index].append(torch.linalg.vector_norm(token_pieces(layer_pieces, settings), dim=-1))

        # The initial decomposition is built in the call, so that no name here keeps it alive
        # while the layers run (it is freed after the first layer).
        pooled = propagate_and_pool(
            _diagonal_pieces(embeddings[group], n_pieces, dtype),
            captured,
            parts,
            settings,
            pooling[group],
            group,
            dtype,
            rows_per_chunk=plan.rows_per_chunk,
            all_rows=token_maps,
            on_layer=record_map if token_maps else None,
        )  # (group, pieces, hidden)
        pooled_all.append(token_pieces(pooled.unsqueeze(1), settings).squeeze(1))
        if include_head:
            scores = propagate_head(pooled, parts.head, _head_inputs(parts, captured, group, dtype), settings)
            contributions_all.append(token_pieces(scores.unsqueeze(1), settings).squeeze(1))
            if settings.bias_mode is BiasMode.PIECE:
                bias_all.append(scores[:, -1])
    return ExactResult(
        contributions=torch.cat(contributions_all) if contributions_all else None,
        bias=torch.cat(bias_all) if bias_all else None,
        pooled=torch.cat(pooled_all),
        token_maps=[torch.cat(maps) for maps in maps_all] if token_maps else None,
    )


# --------------------------------------------------------------------------------------------
# Fast path

# The batched backward pass of the fast path holds one embedding-sized gradient per output it
# differentiates at once; outputs are taken in groups that keep these gradients under this size.
FAST_GRADIENT_BYTES = 2**28


@dataclass
class FastResult:
    """The fast path's result.

    Attributes:
        contributions: (batch, seq) for one class per example, (batch, seq, classes) for every
            class, or, without the head, the pooled decomposition (batch, seq, hidden).
        outputs: (batch, classes), the frozen network's logits with its biases (the real logits
            less what the decomposition leaves out: the feed-forward outputs with
            ``include_ffn=False``, what the ``"relu"`` approximation drops); minus the summed
            contributions, this is the biases' share. None for one class per example and without
            the head.
    """

    contributions: Tensor
    outputs: Optional[Tensor]


def fast(
    frozen: "FrozenForward",
    logits: Tensor,
    pooling: Optional[Tensor],
    *,
    include_head: bool,
    dtype: torch.dtype,
    classes: Optional[Tensor] = None,
    weights: Optional[Tensor] = None,
) -> FastResult:
    """The bias-free decomposition from the one frozen forward pass, by one backward pass.

    The frozen network (every nonlinear coefficient cut from the graph, see
    :mod:`captum_decompx.core.freezing`) is affine in the embeddings ``e``; its linear part gives token
    ``k`` the share ``<dF/de_k, e_k>``, plus the token's share of its own pre-mixing biases (the
    gradient of the ``own_scale`` leaf). All outputs are differentiated in one batched backward
    pass (``is_grads_batched``), in groups when their gradients would not fit
    :data:`FAST_GRADIENT_BYTES`.

    Args:
        frozen: the state the frozen forward pass left (its leaves and the head's input).
        logits: (batch, classes), the forward function's output, with the frozen graph.
        pooling: (batch, seq) pooling weights; used without the head when the head's first step
            reads every position (decoders), else ignored.
        classes: (batch,) one class per example: contributions (batch, seq) from one backward
            pass. None: every class, (batch, seq, classes). Ignored without the head.
        weights: (batch, classes), instead of ``classes``: contributions (batch, seq) to
            ``sum_c weights[:, c] * logits[:, c]`` from one backward pass (what a forward
            function that combines the logits linearly returns).
    """
    if frozen.embeddings is None:
        raise RuntimeError("The frozen forward pass did not reach the first layer.")
    if include_head:
        if not logits.requires_grad:
            raise RuntimeError(
                "The forward function's logits carry no gradient: it runs the model under torch.no_grad() "
                "or inference_mode. The fast path differentiates them; run the model with gradients enabled."
            )
        if classes is not None:
            weights = torch.zeros_like(logits).scatter_(1, classes.view(-1, 1), 1.0)
        if weights is not None:
            shares, _ = _shares(logits, weights.to(logits.dtype).unsqueeze(0), frozen, dtype, retain=False)
            return FastResult(shares[0], None)
        n_classes = logits.shape[1]
        basis = torch.eye(n_classes, dtype=logits.dtype, device=logits.device)
        grad_outputs = basis.unsqueeze(1).expand(n_classes, logits.shape[0], n_classes)
        shares, dropped = _grouped_shares(logits, grad_outputs, frozen, dtype)
        outputs = logits.detach().to(dtype) - dropped.T
        return FastResult(shares.permute(1, 2, 0), outputs)
    pooled = frozen.head_input
    if pooled is None:
        raise RuntimeError(
            "The frozen forward pass recorded no input of the classification head: it did not reach the head, or "
            "the head does not start with a Linear or Norm step (SigLIP's image tower pools by attention and "
            "has none). Use algorithm='exact' with include_head=False there."
        )
    if pooled.dim() == 3:  # the head reads every position: pool here
        assert pooling is not None
        pooled = torch.einsum("bs,bsh->bh", pooling.to(pooled.dtype), pooled)
    hidden = pooled.shape[-1]
    basis = torch.eye(hidden, dtype=pooled.dtype, device=pooled.device)
    grad_outputs = basis.unsqueeze(1).expand(hidden, pooled.shape[0], hidden)
    vectors, _ = _grouped_shares(pooled, grad_outputs, frozen, dtype)  # (hidden_out, batch, seq)
    return FastResult(vectors.permute(1, 2, 0), None)


def _grouped_shares(output: Tensor, grad_outputs: Tensor, frozen: "FrozenForward", dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`_shares` over the leading axis of ``grad_outputs`` in groups that fit the budget."""
    embeddings = frozen.embeddings
    assert embeddings is not None
    per_output = embeddings.numel() * embeddings.element_size()
    group = max(1, min(grad_outputs.shape[0], FAST_GRADIENT_BYTES // max(per_output, 1)))
    parts = []
    for start in range(0, grad_outputs.shape[0], group):
        last = start + group >= grad_outputs.shape[0]
        parts.append(_shares(output, grad_outputs[start : start + group], frozen, dtype, retain=not last))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _shares(
    output: Tensor, grad_outputs: Tensor, frozen: "FrozenForward", dtype: torch.dtype, *, retain: bool
) -> tuple[Tensor, Tensor]:
    """Token shares of ``G`` weighted outputs, by one batched backward pass.

    Args:
        grad_outputs: (G, *output.shape), one weighting of the output per row.

    Returns:
        (G, batch, seq) shares ``<dF/de_k, e_k>`` plus the own-bias shares, and (G, batch) the
        share of what the decomposition leaves out (``dropped``), in ``dtype``.
    """
    embeddings, own_scale, dropped = frozen.embeddings, frozen.own_scale, frozen.dropped
    assert embeddings is not None and own_scale is not None and dropped is not None
    groups = grad_outputs.shape[0]
    leaves = (embeddings, own_scale, dropped)
    if groups == 1:  # one weighting: a plain backward pass (no vmap)
        grads = torch.autograd.grad(output, leaves, grad_outputs=grad_outputs[0], retain_graph=retain, allow_unused=True)
        grad_e, grad_own, grad_dropped = (None if g is None else g.unsqueeze(0) for g in grads)
    else:
        grad_e, grad_own, grad_dropped = torch.autograd.grad(
            output, leaves, grad_outputs=grad_outputs, is_grads_batched=True, retain_graph=retain, allow_unused=True
        )
    assert grad_e is not None, "the output does not depend on the embeddings"
    batch, seq = embeddings.shape[:2]
    shares = torch.einsum("gbsh,bsh->gbs", grad_e.to(dtype), embeddings.detach().to(dtype))
    if grad_own is not None:
        shares = shares + grad_own.squeeze(-1).to(dtype)
    if grad_dropped is None:
        grad_dropped = torch.zeros(groups, batch, dtype=dtype, device=embeddings.device)
    return shares, grad_dropped.to(dtype)
