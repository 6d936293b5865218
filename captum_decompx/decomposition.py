"""The exact and fast DecompX paths: from captured internals to per-token contributions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

import torch
from torch import Tensor, nn

from . import engine
from .adapters import Activation, Adapter, Linear, resolve
from .adapters.base import Norm as HeadNorm
from .adapters.base import split_block, take_block
from .capture import Captured, LayerRecord
from .engine import Affine, BiasMode, LayerParams, Norm, Settings

if TYPE_CHECKING:
    from .freezing import FrozenForward

DEFAULT_MAX_MEMORY = 4 * 2**30


class DecompXMemoryError(MemoryError):
    """The exact path cannot fit its decomposition into ``max_memory``, even in chunks."""


HeadStep = Union[Affine, Norm, Callable[[Tensor], Tensor]]


@dataclass
class ModelParts:
    """The model's parameters that the engine uses, detached and in the compute dtype."""

    layers: list[LayerParams]
    final_norm: Optional[Norm]
    head: list[HeadStep]
    head_input_steps: list[Optional[int]]  # for activation and norm steps: their own index


def affine(root: nn.Module, path: str, dtype: torch.dtype) -> Affine:
    """The linear map at ``path`` (``nn.Linear`` or GPT-2's ``Conv1D``), optionally one block
    ``[i/n]`` of its output features, as ``x @ weight.T + bias``."""
    module_path, block = split_block(path)
    module = resolve(root, module_path)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"{module_path} ({type(module).__name__}) is not a linear map; check the adapter's paths.")
    if type(module).__name__ == "Conv1D":  # GPT-2 stores (in, out)
        weight = weight.T
    elif not isinstance(module, nn.Linear):
        raise TypeError(f"Expected a linear map at {module_path}, found {type(module).__name__}.")
    bias = getattr(module, "bias", None)
    weight = take_block(weight.detach(), block, dim=0).to(dtype)
    bias = None if bias is None else take_block(bias.detach(), block, dim=0).to(dtype)
    return Affine(weight, bias)


def norm_params(module: nn.Module, dtype: torch.dtype) -> Optional[Norm]:
    """A LayerNorm or RMSNorm's parameters; None for ``nn.Identity``."""
    if isinstance(module, nn.Identity):
        return None
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.LayerNorm):
        kind, eps = "layer", module.eps
    else:
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if eps is None or "rms" not in type(module).__name__.lower():
            raise TypeError(
                f"Expected nn.LayerNorm, an RMSNorm or nn.Identity, found {type(module).__name__}; "
                "DecompX does not know how this module normalizes."
            )
        kind = "rms"
    return Norm(
        None if weight is None else weight.detach().to(dtype),
        None if bias is None else bias.detach().to(dtype),
        float(eps),
        kind,
    )


def resolve_parts(model: nn.Module, adapter: Adapter, dtype: torch.dtype) -> ModelParts:
    """Read the parameters the adapter points to (the model itself is not touched)."""
    paths = adapter.layer
    layers = []
    for layer in adapter.layer_modules(model):
        activation = resolve(layer, paths.ffn_activation)
        if not callable(activation):
            raise TypeError(f"{paths.ffn_activation} is not callable; check the adapter.")
        layers.append(
            LayerParams(
                value=affine(layer, paths.value, dtype),
                attention_output=affine(layer, paths.attention_output, dtype),
                attention_norm=norm_params(resolve(layer, paths.attention_norm), dtype),
                ffn_in=affine(layer, paths.ffn_in, dtype),
                ffn_activation=activation,
                ffn_out=affine(layer, paths.ffn_out, dtype),
                ffn_norm=norm_params(resolve(layer, paths.ffn_norm), dtype),
                ffn_gated=paths.ffn_gate is not None,
                pre_norm=adapter.norm_position == "pre",
            )
        )
    final_norm = None
    if adapter.final_norm is not None:
        final_norm = norm_params(resolve(model, adapter.final_norm), dtype)
    head: list[HeadStep] = []
    inputs: list[Optional[int]] = []
    for index, step in enumerate(adapter.head):
        if isinstance(step, Linear):
            head.append(affine(model, step.path, dtype))
            inputs.append(None)
        elif isinstance(step, HeadNorm):
            head.append(norm_params(resolve(model, step.path), dtype))
            inputs.append(index)
        else:
            assert isinstance(step, Activation)
            head.append(step.function if step.function is not None else resolve(model, step.path))
            inputs.append(index)
    if not head or not isinstance(head[-1], Affine):
        raise ValueError(f"The adapter {adapter.name!r} must end its head with a Linear step.")
    return ModelParts(layers, final_norm, head, inputs)


def padding_mask(captured: Captured) -> Tensor:
    """(batch, seq) bool: True where some query attends to the token in the first layer."""
    return (captured.layers[0].attention_probs != 0).any(dim=1).any(dim=1)


def pool_weights(adapter: Adapter, real_tokens: Tensor, dtype: torch.dtype) -> Tensor:
    """(batch, seq) weights of the pooled state over the last layer's rows."""
    batch, seq = real_tokens.shape
    weights = torch.zeros(batch, seq, dtype=dtype, device=real_tokens.device)
    if adapter.pooling == "first":
        weights[:, 0] = 1.0
    elif adapter.pooling == "last":
        positions = torch.arange(seq, device=real_tokens.device).expand(batch, seq)
        last = torch.where(real_tokens, positions, -1).max(dim=1).values.clamp(min=0)
        weights[torch.arange(batch), last] = 1.0
    else:
        real = real_tokens.to(dtype)
        weights = real / real.sum(dim=1, keepdim=True).clamp(min=1)
    return weights


def _head_inputs(parts: ModelParts, captured: Captured, batch: slice, dtype) -> list[Optional[Tensor]]:
    return [
        None if step is None else captured.head_inputs[step][batch].to(dtype)
        for step in parts.head_input_steps
    ]


def _final_norm(pieces: Tensor, parts: ModelParts, captured: Captured, batch: slice, rows, settings: Settings, dtype) -> Tensor:
    """The final norm of pre-LN models on the computed rows of the last layer."""
    if parts.final_norm is None:
        return pieces
    return engine.normalize(pieces, captured.final_norm_input[batch][:, rows].to(dtype), parts.final_norm, settings)


def _slice_record(record: LayerRecord, batch: slice, dtype: torch.dtype) -> LayerRecord:
    return LayerRecord(
        attention_probs=record.attention_probs[batch].to(dtype),
        attention_norm_input=record.attention_norm_input[batch].to(dtype),
        ffn_pre_activation=record.ffn_pre_activation[batch].to(dtype),
        ffn_norm_input=record.ffn_norm_input[batch].to(dtype),
    )


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
        pieces = engine.transformer_layer(
            pieces,
            _slice_record(record, batch, dtype),
            params,
            settings,
            first=index == 0,
            row_chunks=_chunks(rows, rows_per_chunk),
            own_scale=own_scale,
        )
        if on_layer is not None:
            on_layer(index, pieces)
    pieces = _final_norm(pieces, parts, captured, batch, rows, settings, dtype)
    return engine.pool(pieces, pooling[:, rows])


# --------------------------------------------------------------------------------------------
# Exact path


@dataclass
class MemoryPlan:
    """How the exact path splits its work: examples per group, rows per chunk."""

    examples_per_group: int
    rows_per_chunk: int
    bytes_needed: int  # the peak estimate of the plan


def _diagonal_pieces(embeddings: Tensor, n_pieces: int, dtype: torch.dtype) -> Tensor:
    """(batch, seq, pieces, hidden): each token's embedding is its own piece, ``X0[i, k] = e_i [i == k]``."""
    batch, seq, hidden = embeddings.shape
    pieces = torch.zeros(batch, seq, n_pieces, hidden, dtype=dtype, device=embeddings.device)
    pieces[:, :, :seq].diagonal(dim1=1, dim2=2).copy_(embeddings.to(dtype).transpose(1, 2))
    return pieces


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
    full = exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, seq)
    if full <= max_memory:
        group = max(1, min(batch, max_memory // full))
        return MemoryPlan(group, seq, group * full)
    minimum = exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, 1)
    if minimum > max_memory:
        raise DecompXMemoryError(
            f"The exact DecompX path needs at least {minimum / 2**30:.2f} GiB for one example of "
            f"{seq} tokens (hidden {hidden}, feed-forward {ffn}), more than max_memory="
            f"{max_memory / 2**30:.2f} GiB. Raise max_memory if the machine has the memory, shorten "
            "the input, or use method='fast' (include_biases=False), which needs O(N) memory."
        )
    rows = int((max_memory - exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, 0)) // (minimum - exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, 0)))
    rows = max(1, min(seq, rows))
    return MemoryPlan(1, rows, exact_memory_per_example(seq, pieces, hidden, ffn, itemsize, rows))


def _chunks(rows: Tensor, size: int) -> list:
    if rows.numel() == 0:
        return []
    if rows.numel() == int(rows[-1]) - int(rows[0]) + 1:
        start, stop = int(rows[0]), int(rows[-1]) + 1
        return [slice(s, min(s + size, stop)) for s in range(start, stop, size)]
    return [rows[i : i + size] for i in range(0, rows.numel(), size)]


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
            maps_all[index].append(torch.linalg.vector_norm(engine.token_pieces(layer_pieces, settings), dim=-1))

        # The initial decomposition is built in the call, so that no name here keeps it alive
        # while the layers run (it is freed after the first layer).
        pooled = propagate_and_pool(
            _diagonal_pieces(embeddings[group], n_pieces, dtype), captured, parts, settings, pooling[group], group,
            dtype, rows_per_chunk=plan.rows_per_chunk, all_rows=token_maps,
            on_layer=record_map if token_maps else None,
        )  # (group, pieces, hidden)
        pooled_all.append(engine.token_pieces(pooled.unsqueeze(1), settings).squeeze(1))
        if include_head:
            scores = engine.head(pooled, parts.head, _head_inputs(parts, captured, group, dtype), settings)
            contributions_all.append(engine.token_pieces(scores.unsqueeze(1), settings).squeeze(1))
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
) -> FastResult:
    """The bias-free decomposition from the one frozen forward pass, by one backward pass.

    The frozen network (every nonlinear coefficient cut from the graph, see
    :mod:`captum_decompx.freezing`) is affine in the embeddings ``e``; its linear part gives token
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
            one_hot = torch.zeros_like(logits).scatter_(1, classes.view(-1, 1), 1.0)
            shares, _ = _shares(logits, one_hot.unsqueeze(0), frozen, dtype, retain=False)
            return FastResult(shares[0], None)
        n_classes = logits.shape[1]
        basis = torch.eye(n_classes, dtype=logits.dtype, device=logits.device)
        grad_outputs = basis.unsqueeze(1).expand(n_classes, logits.shape[0], n_classes)
        shares, dropped = _grouped_shares(logits, grad_outputs, frozen, dtype)
        outputs = logits.detach().to(dtype) - dropped.T
        return FastResult(shares.permute(1, 2, 0), outputs)
    pooled = frozen.head_input
    if pooled is None:
        raise RuntimeError("The frozen forward pass did not reach the classification head.")
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


def _shares(output: Tensor, grad_outputs: Tensor, frozen: "FrozenForward", dtype: torch.dtype, *, retain: bool) -> tuple[Tensor, Tensor]:
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
