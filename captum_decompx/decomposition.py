"""From a captured forward pass to per-token contributions: the exact and the fast path.

:func:`decompose` is the one entry point. It chooses the path's :class:`BiasMode` itself, runs the
path, and reduces the result to the target classes when asked:

- the exact path propagates one piece per input token (plus a bias piece when the biases are left
  out) through every component of the network (:mod:`captum_decompx.components`);
- the fast path (biases left out) differentiates the network frozen at the real forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from . import engine  # the fast path's propagation functions under their old names
from .adapters import Adapter
from .capture import Captured
from .components import BiasMode, ModelParts, Network, Settings, normalize, propagate_head, token_pieces, transformer_layer
from .components.linear import affine
from .components.norms import norm_params
from .components.pooling import last_non_pad_token, pool, pool_weights
from .memory import DEFAULT_MAX_MEMORY, DecompXMemoryError, MemoryPlan, exact_memory_per_example, plan_memory

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
    "bias_mode_for",
    "decompose",
    "exact",
    "exact_memory_per_example",
    "fast",
    "norm_params",
    "padding_mask",
    "plan_memory",
    "pool_weights",
    "pooling_of",
    "resolve_parts",
]

PATHS = ("exact", "fast")


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
        real[torch.arange(batch, device=real.device), last_non_pad_token(captured.pooling, batch, seq, real.device)] = True
    return real


def pooling_of(captured: Captured, adapter: Adapter, dtype: torch.dtype) -> Tensor:
    """(batch, seq) pooling weights of a captured forward pass: the row(s) the model's head read."""
    return pool_weights(adapter, padding_mask(captured), dtype, captured.pooling)


def _head_inputs(parts: ModelParts, captured: Captured, batch: slice, dtype) -> list[Optional[Tensor]]:
    return [None if step is None else captured.head_inputs[step][batch].to(dtype) for step in parts.head_input_steps]


def _final_norm(pieces: Tensor, parts: ModelParts, captured: Captured, batch: slice, rows, settings: Settings, dtype) -> Tensor:
    """The final norm of pre-LN models on the computed rows of the last layer."""
    if parts.final_norm is None:
        return pieces
    assert captured.final_norm_input is not None
    return normalize(pieces, captured.final_norm_input[batch][:, rows].to(dtype), parts.final_norm, settings)


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
        pooling: (batch, seq) pooling weights of these examples.
        batch: which examples of ``captured`` these are.
        all_rows: compute every row of the last layer too (else only the pooled rows).
        on_layer: called with each layer's index and output decomposition.

    Returns:
        (batch, pieces, hidden), the pooled decomposition.
    """
    seq = pieces.shape[1]
    everything = torch.arange(seq, device=pieces.device)
    pooled_rows = torch.nonzero(pooling.abs().sum(0) > 0).flatten()
    rows = everything
    for index, (record, params) in enumerate(zip(captured.layers, parts.layers)):
        if index == len(parts.layers) - 1 and not all_rows:
            rows = pooled_rows
        pieces = transformer_layer(
            pieces,
            record.select(batch, dtype),
            params,
            settings,
            first=index == 0,
            row_chunks=_chunks(rows, rows_per_chunk),
            own_scale=own_scale,
        )
        if on_layer is not None:
            on_layer(index, pieces)
    pieces = _final_norm(pieces, parts, captured, batch, rows, settings, dtype)
    return pool(pieces, pooling[:, rows])


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


def bias_mode_for(include_biases: bool, path: str) -> BiasMode:
    """How a path treats the biases: spread by the rule when they are included; left out, the
    exact path collects them in a bias piece and the fast path's frozen network keeps them in its
    single piece (its share is then the frozen logits minus the token shares)."""
    if include_biases:
        if path == "fast":
            raise ValueError("The fast path decomposes the bias-free network: use the exact path to decompose the biases.")
        return BiasMode.RULE
    return BiasMode.PIECE if path == "exact" else BiasMode.ADD


def settings_for(options: Options, path: str) -> Settings:
    """The propagation settings of ``path`` (``"exact"`` or ``"fast"``) for these options."""
    return Settings(
        bias_mode=bias_mode_for(options.include_biases, path),
        bias_rule=options.bias_rule,
        include_ffn=options.include_ffn,
        ffn_approximation=options.ffn_approximation,
        head_approximation=options.head_approximation,
    )


@dataclass
class Decomposition:
    """What :func:`decompose` returns. Contributions of padding positions are exactly zero.

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
        path: ``"exact"`` or ``"fast"``.
    """

    contributions: Optional[Tensor]
    target_contributions: Optional[Tensor]
    bias: Optional[Tensor]
    pooled: Optional[Tensor]
    token_maps: Optional[list[Tensor]]
    path: str


def decompose(
    captured: Captured,
    model: nn.Module,
    adapter: Adapter,
    options: Options,
    *,
    path: str,
    dtype: torch.dtype,
    max_memory: int = DEFAULT_MAX_MEMORY,
    targets: Optional[Tensor] = None,
    pooled: bool = False,
    token_maps: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> Decomposition:
    """Decompose a captured forward pass: the one entry point of the decomposition.

    Args:
        captured: the records of the forward pass (:func:`~captum_decompx.capture.capture_internals`).
        model, adapter: the model that was captured and its adapter (for the parameters).
        path: ``"exact"`` or ``"fast"`` (which needs ``options.include_biases=False``).
        dtype: the compute dtype.
        max_memory: bytes the exact path may use for its decomposition.
        targets: (batch,) one class per example: also reduce to ``target_contributions``; the
            fast path then computes those classes only.
        pooled: also return the pooled decomposition (on the fast path with the head this costs
            one backward pass per hidden unit).
        token_maps: also return the per-layer token maps (computed by the exact path).
        progress: called with the number of examples finished (exact path).
    """
    if path not in PATHS:
        raise ValueError(f"path={path!r} is not one of {PATHS}.")
    parts = resolve_parts(model, adapter, dtype)
    pooling = pooling_of(captured, adapter, dtype)
    run = _exact_path if path == "exact" else _fast_path
    result = run(
        captured,
        parts,
        pooling,
        options,
        dtype=dtype,
        max_memory=max_memory,
        targets=targets,
        pooled=pooled,
        token_maps=token_maps,
        progress=progress,
    )
    if token_maps and result.token_maps is None:  # token maps come from the exact path
        maps = _exact_path(
            captured,
            parts,
            pooling,
            options,
            dtype=dtype,
            max_memory=max_memory,
            targets=None,
            pooled=True,
            token_maps=True,
            progress=progress,
        )
        result.token_maps = maps.token_maps
        result.pooled = maps.pooled if result.pooled is None else result.pooled
    return result


def _zero_padding(scores: Tensor, captured: Captured) -> Tensor:
    """``scores`` (batch, seq, ...) with the padding positions set to zero."""
    real = padding_mask(captured)
    return scores * real.view(real.shape + (1,) * (scores.dim() - 2)).to(scores.dtype)


def _targets_of(contributions: Tensor, targets: Optional[Tensor]) -> Optional[Tensor]:
    if targets is None:
        return None
    return contributions.gather(2, targets.view(-1, 1, 1).expand(-1, contributions.shape[1], 1)).squeeze(-1)


def _exact_path(
    captured, parts, pooling, options: Options, *, dtype, max_memory, targets, pooled, token_maps, progress
) -> Decomposition:
    result = exact(
        captured,
        parts,
        settings_for(options, "exact"),
        pooling,
        include_head=options.include_head,
        max_memory=max_memory,
        dtype=dtype,
        token_maps=token_maps,
        progress=progress,
    )
    contributions, bias = None, None
    if options.include_head:
        assert result.contributions is not None
        contributions = _zero_padding(result.contributions, captured)
        logits = captured.logits
        if options.include_biases:
            bias = torch.zeros_like(logits)  # every bias was spread over the tokens
        else:
            assert result.bias is not None
            bias = result.bias.to(logits.dtype)
    return Decomposition(
        contributions=contributions,
        target_contributions=None if contributions is None else _targets_of(contributions, targets),
        bias=bias,
        pooled=result.pooled,
        token_maps=result.token_maps,
        path="exact",
    )


def _fast_path(
    captured, parts, pooling, options: Options, *, dtype, max_memory, targets, pooled, token_maps, progress
) -> Decomposition:
    settings = settings_for(options, "fast")
    pooled_pieces = None
    if pooled or not options.include_head:
        pooled_pieces = fast(captured, parts, settings, pooling, include_head=False, dtype=dtype).contributions
    if not options.include_head:
        return Decomposition(None, None, None, pooled_pieces, None, "fast")
    result = fast(captured, parts, settings, pooling, include_head=True, dtype=dtype, classes=targets)
    contributions = _zero_padding(result.contributions, captured)
    if targets is not None:
        return Decomposition(None, contributions, None, pooled_pieces, None, "fast")
    assert result.outputs is not None
    # The frozen network's logits minus the token shares: what its biases carry.
    bias = (result.outputs - contributions.sum(1)).to(captured.logits.dtype)
    return Decomposition(contributions, None, bias, pooled_pieces, None, "fast")


# --------------------------------------------------------------------------------------------
# Exact path


def _diagonal_pieces(embeddings: Tensor, n_pieces: int, dtype: torch.dtype) -> Tensor:
    """(batch, seq, pieces, hidden): each token's embedding is its own piece, ``X0[i, k] = e_i [i == k]``."""
    batch, seq, hidden = embeddings.shape
    pieces = torch.zeros(batch, seq, n_pieces, hidden, dtype=dtype, device=embeddings.device)
    pieces[:, :, :seq].diagonal(dim1=1, dim2=2).copy_(embeddings.to(dtype).transpose(1, 2))
    return pieces


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
    batch, seq, hidden = embeddings.shape
    n_pieces = seq + (1 if settings.bias_mode is BiasMode.PIECE else 0)
    ffn = max(layer.ffn_in.weight.shape[0] for layer in parts.layers)
    width = max([hidden] + [layer.value.weight.shape[0] for layer in parts.layers])
    itemsize = torch.finfo(dtype).bits // 8
    plan = plan_memory(batch, seq, n_pieces, width, ffn if settings.include_ffn else 0, itemsize, max_memory)

    pooled_all, contributions_all, bias_all = [], [], []
    maps_all: list[list[Tensor]] = [[] for _ in parts.layers]
    for start in range(0, batch, plan.examples_per_group):
        group = slice(start, min(start + plan.examples_per_group, batch))
        size = group.stop - group.start

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
        if progress is not None:
            progress(size)
    return ExactResult(
        contributions=torch.cat(contributions_all) if contributions_all else None,
        bias=torch.cat(bias_all) if bias_all else None,
        pooled=torch.cat(pooled_all),
        token_maps=[torch.cat(maps) for maps in maps_all] if token_maps else None,
    )


# --------------------------------------------------------------------------------------------
# Fast path


def _linearized_forward(
    captured: Captured,
    parts: ModelParts,
    settings: Settings,
    pooling: Tensor,
    embeddings: Tensor,
    own_scale: Tensor,
    dtype: torch.dtype,
) -> Tensor:
    """The frozen model applied to the embeddings: (batch, hidden) pooled state."""
    pooled = propagate_and_pool(
        embeddings.unsqueeze(2), captured, parts, settings, pooling, slice(None), dtype,
        rows_per_chunk=embeddings.shape[1], own_scale=own_scale,
    )
    return pooled.squeeze(1)


@dataclass
class FastResult:
    """The fast path's result.

    Attributes:
        contributions: (batch, seq) for one class per example, (batch, seq, classes) for every
            class, or, without the head, the pooled decomposition (batch, seq, hidden).
        outputs: (batch, classes), the frozen network's logits with its biases; minus the summed
            contributions, this is the biases' share. None without the head.
    """

    contributions: Tensor
    outputs: Optional[Tensor]


def fast(
    captured: Captured,
    parts: ModelParts,
    settings: Settings,
    pooling: Tensor,
    *,
    include_head: bool,
    dtype: torch.dtype,
    classes: Optional[Tensor] = None,
) -> FastResult:
    """The bias-free decomposition by one linearized forward and one backward per output.

    The frozen network (every nonlinearity at its real value) is affine in the embeddings ``e``;
    its linear part gives token ``k`` the share ``<dF/de_k, e_k>``, plus the token's share of its
    own pre-mixing biases (the first layer's value bias; a pre-LN model's first norm bias),
    obtained through a unit scale on those biases. Its biases are added to the single piece
    (``BiasMode.ADD``), so the frozen logits minus the shares is the biases' share.

    Args:
        classes: (batch,) one class per example: contributions (batch, seq). None: every class,
            (batch, seq, classes). Ignored without the head.
    """
    assert settings.bias_mode is BiasMode.ADD
    embeddings_real = captured.layer_input
    batch, seq, hidden = embeddings_real.shape
    with torch.enable_grad():
        embeddings = embeddings_real.detach().to(dtype).requires_grad_(True)
        own_scale = torch.ones(batch, seq, dtype=dtype, device=embeddings.device, requires_grad=True)
        pooled = _linearized_forward(captured, parts, settings, pooling, embeddings, own_scale, dtype)
        if include_head:
            pre = _head_inputs(parts, captured, slice(None), dtype)
            outputs = engine.head(pooled.unsqueeze(1), parts.head, pre, settings).squeeze(1)  # (batch, classes)
            if classes is not None:
                selected = outputs.gather(1, classes.view(-1, 1)).sum()
                return FastResult(_token_shares(selected, embeddings, own_scale, retain=False), outputs.detach())
            columns = [
                _token_shares(outputs[:, c].sum(), embeddings, own_scale, retain=c < outputs.shape[1] - 1)
                for c in range(outputs.shape[1])
            ]
            return FastResult(torch.stack(columns, dim=-1), outputs.detach())
        # Without the head: the pooled vector's decomposition, one backward per hidden unit.
        basis = torch.eye(hidden, dtype=dtype, device=embeddings.device)
        grads_e, grads_scale = torch.autograd.grad(
            pooled,
            (embeddings, own_scale),
            grad_outputs=basis.unsqueeze(1).expand(hidden, batch, hidden),
            is_grads_batched=True,
            allow_unused=True,
        )
        if grads_scale is None:  # the model has no bias that belongs to a token
            grads_scale = torch.zeros(hidden, batch, seq, dtype=dtype, device=embeddings.device)
        # grads_e: (hidden_out, batch, seq, hidden_in); grads_scale: (hidden_out, batch, seq)
        vectors = torch.einsum("obsi,bsi->bso", grads_e, embeddings.detach()) + grads_scale.permute(1, 2, 0)
        return FastResult(vectors, None)


def _token_shares(score: Tensor, embeddings: Tensor, own_scale: Tensor, *, retain: bool) -> Tensor:
    grad_e, grad_scale = torch.autograd.grad(score, (embeddings, own_scale), retain_graph=retain, allow_unused=True)
    shares = (grad_e * embeddings.detach()).sum(-1)
    return shares if grad_scale is None else shares + grad_scale
