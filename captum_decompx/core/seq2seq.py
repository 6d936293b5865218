"""Encoder-decoders: a target token's logit decomposed over the source tokens and the target prefix.

The encoder is decomposed first, one piece per source token, as any encoder (every row). A
decoder representation is then decomposed over ``T + S`` pieces, in this order: the ``T``
target-prefix tokens (row ``t`` starts as its own embedding, piece ``t``), then the ``S`` source
tokens (they enter through each decoder layer's cross-attention, see
:mod:`~captum_decompx.components.cross_attention`), then the bias piece when the biases are left
out. The LM head is read at the decoder rows asked for, so every target position of a sequence is
explained by one decomposition (exact) or one frozen forward pass and one batched backward pass
(fast), not one pass per position.

Both algorithms read the same forward function ``f(source_ids, target_ids, *args)`` that returns
the model's logits ``(batch, target, vocab)`` (or a linear function of them).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from ..components import BiasMode, ModelParts, Settings, propagate_head_rows
from ..components.linear import Affine, LinearMap
from . import freezing, validation
from .capture import capture_internals
from .decomposition import Options, _diagonal_pieces, exact_settings, fast_settings, propagate_rows, resolve_parts
from .forward_contract import ExplainedOutput, explain_output, forward_output_tensor, select, tap_model_output, target_index
from .memory import DecompXMemoryError, plan_memory, readable_bytes

if TYPE_CHECKING:
    from ..attribution import DecompX
    from .capture import Captured

__all__ = ["Seq2SeqDecomposition", "attribute", "check_inputs", "decompose_target"]


@dataclass
class Seq2SeqDecomposition:
    """Every target position's logit of one token, decomposed (:meth:`DecompX.decompose_target
    <captum_decompx.DecompX.decompose_target>`).

    Attributes:
        source: (batch, target, source), row ``t``: each source token's share of the logit of
            ``token_ids[:, t]`` at target position ``t``.
        target: (batch, target, target), row ``t``: each target-prefix token's share (zero after ``t``).
        bias: (batch, target), the biases' share (zero when they are decomposed).
        logits: (batch, target), the explained logits (the model's, at each position).
        token_ids: (batch, target), the token explained at each position.
        algorithm: ``"exact"`` or ``"fast"``.
    """

    source: Tensor
    target: Tensor
    bias: Tensor
    logits: Tensor
    token_ids: Tensor
    algorithm: str


# --------------------------------------------------------------------------------------------
# Inputs


def check_inputs(inputs: Any, adapter_name: str, source_kind: str = "tokens") -> tuple[Tensor, Tensor]:
    """The ``(source_ids, target_ids)`` of an encoder-decoder call, checked; for an encoder that
    reads features (``source_kind="features"``, Whisper), the source is a float tensor
    (batch, features, frames).

    Raises:
        ValueError: not two tensors (no decoder inputs), not 2-D, different batch sizes.
        TypeError: floating-point ids (embeddings), or integer features.
    """
    features = source_kind == "features"
    form = (
        "inputs=(input_features, target_ids), features (batch, mel bins, frames) and ids (batch, target)"
        if features
        else "inputs=(source_ids, target_ids), ids (batch, source) and (batch, target)"
    )
    if isinstance(inputs, Tensor) or not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
        found = (
            "one tensor"
            if isinstance(inputs, Tensor)
            else f"{type(inputs).__name__} of {len(inputs)}"
            if isinstance(inputs, (tuple, list))
            else type(inputs).__name__
        )
        raise ValueError(
            f"The {adapter_name} model is an encoder-decoder: DecompX explains a target token's logit given the "
            f"source and the target prefix, so it needs the decoder's inputs too. Pass {form}, with a forward "
            "function f(source_ids, target_ids, *additional_forward_args) that calls model(input_ids=source_ids, "
            f"decoder_input_ids=target_ids, ...); got {found}."
        )
    source, target = inputs
    if features:
        if not isinstance(source, Tensor) or not source.dtype.is_floating_point or source.dim() != 3:
            found = f"{source.dtype} {tuple(source.shape)}" if isinstance(source, Tensor) else type(source).__name__
            raise TypeError(
                f"The {adapter_name} encoder reads features: pass input_features as a float tensor (batch, mel bins, "
                f"frames) first, got {found}."
            )
    checked = (("target_ids", target),) if features else (("source_ids", source), ("target_ids", target))
    for name, tensor in checked:
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a tensor of token ids, got {type(tensor).__name__}.")
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
            raise TypeError(
                f"{name} is a floating-point tensor {tuple(tensor.shape)}: DecompX decomposes over the tokens of "
                "both sides and takes token ids for each (inputs_embeds / decoder_inputs_embeds are not supported "
                "for encoder-decoders). Pass the ids and let the model embed them."
            )
        if tensor.dim() != 2 or tensor.shape[1] == 0:
            raise ValueError(f"{name} must be (batch, length) ids with at least one token, got shape {tuple(tensor.shape)}.")
    if source.shape[0] != target.shape[0]:
        raise ValueError(
            f"{'input_features' if features else 'source_ids'} has {source.shape[0]} example(s) and target_ids "
            f"{target.shape[0]}: pass one target prefix per source (the same batch size)."
        )
    return source, target


def _check_target_position(target: Any, length: int) -> None:
    """A missing target, or a ``(position, token_id)`` whose position lies outside the target prefix, is refused."""
    if target is None:
        raise ValueError(
            "An encoder-decoder's output is (batch, target, vocab): pass target=(position, token_id), the "
            "logit of token_id at that target position."
        )
    pairs = target if isinstance(target, list) else [target]
    for pair in pairs:
        if isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], int) and not isinstance(pair[0], bool):
            if not -length <= pair[0] < length:
                raise ValueError(
                    f"target position {pair[0]} is beyond the target prefix of {length} token(s): the decoder "
                    f"computes logits at positions 0..{length - 1} (position t predicts the token after "
                    "target_ids[:, t]). Pass target=(position, token_id) with a position in that range."
                )


# --------------------------------------------------------------------------------------------
# Exact path


def source_pieces(
    captured: "Captured",
    parts: ModelParts,
    settings: Settings,
    group: slice,
    dtype: torch.dtype,
    n_target: int,
    *,
    rows_per_chunk: int,
) -> Tensor:
    """The encoder's output decomposed in the decoder's piece layout.

    Returns:
        (group, source, target + source [+ 1], hidden): pieces ``target .. target + source - 1``
        are the source tokens', the last the bias piece (when the biases are collected in one),
        the target pieces zero.
    """
    assert captured.encoder is not None and parts.encoder is not None
    record = captured.encoder
    embeddings = record.layer_input[group]
    n_source = embeddings.shape[1]
    extra = 1 if settings.bias_mode is BiasMode.PIECE else 0
    encoded = propagate_rows(
        _diagonal_pieces(embeddings, n_source + extra, dtype),
        record,
        parts.encoder,
        settings,
        group,
        dtype,
        rows_per_chunk=rows_per_chunk,
    )
    layout = encoded.new_zeros(encoded.shape[0], n_source, n_target + n_source + extra, encoded.shape[-1])
    layout[:, :, n_target : n_target + n_source] = encoded[:, :, :n_source]
    if extra:
        layout[:, :, -1] = encoded[:, :, -1]
    return layout


def _head_steps(parts: ModelParts, settings: Settings, classes: Tensor) -> tuple[list, Optional[Tensor]]:
    """The head restricted to ``classes`` where it is one linear map whose bias no rule spreads (the
    rule reads every class), else the whole head and the columns to take."""
    head = parts.head
    if len(head) == 1 and isinstance(head[0].params, Affine):
        affine_map = head[0].params
        if affine_map.bias is None or settings.bias_mode is not BiasMode.RULE:
            bias = None if affine_map.bias is None else affine_map.bias[classes]
            return [replace(head[0], params=Affine(affine_map.weight[classes], bias))], None
    return list(head), classes


def _widths(layers: list) -> tuple[int, int]:
    """The widest hidden state (or value map) and feed-forward width of these layers."""
    width = max(max(layer.value.weight.shape[0], layer.value.weight.shape[1]) for layer in layers)
    return width, max(layer.ffn_in.weight.shape[0] for layer in layers)


def plan_rows(parts: ModelParts, settings: Settings, source: int, target: int, batch: int, dtype: torch.dtype, max_memory: int):
    """The exact path's memory plan: row chunks of the encoder and of the decoder, and examples per
    group, from the planner of the other families; the decoder's plan leaves room for the encoder's
    pieces (and their cross-attention values) that every decoder layer reads.

    Returns:
        (encoder rows per chunk, decoder rows per chunk, examples per group).

    Raises:
        DecompXMemoryError: one example does not fit ``max_memory`` even one row at a time.
    """
    assert parts.encoder is not None
    itemsize = torch.finfo(dtype).bits // 8
    extra = 1 if settings.bias_mode is BiasMode.PIECE else 0
    pieces = source + target + extra
    encoder_width, encoder_ffn = _widths(parts.encoder.layers)
    decoder_width, decoder_ffn = _widths(parts.layers)
    include_ffn = settings.include_ffn
    encoder = plan_memory(1, source, source + extra, encoder_width, encoder_ffn if include_ffn else 0, itemsize, max_memory)
    held = 2 * source * pieces * decoder_width * itemsize  # the encoder's pieces and their values
    if held >= max_memory:
        raise DecompXMemoryError(
            f"The encoder's output decomposed over {pieces} pieces needs {readable_bytes(held)} for one example, more "
            f"than max_memory={max_memory:,} bytes. Raise max_memory, shorten the inputs, or use algorithm='fast' "
            "(include_biases=False), which needs O(N) memory."
        )
    decoder = plan_memory(1, target, pieces, decoder_width, decoder_ffn if include_ffn else 0, itemsize, max_memory - held)
    per_example = max(encoder.bytes_needed, decoder.bytes_needed + held)
    return encoder.rows_per_chunk, decoder.rows_per_chunk, max(1, min(batch, max_memory // per_example))


def exact_rows(
    captured: "Captured",
    parts: ModelParts,
    options: Options,
    positions: Tensor,
    classes: Tensor,
    dtype: torch.dtype,
    max_memory: int,
) -> tuple[Tensor, Tensor]:
    """The logits of ``classes`` at the target ``positions``, decomposed by the exact path.

    Args:
        positions: (rows,) ascending target positions.
        classes: (n,) the vocabulary entries to decompose at every row.

    Returns:
        (batch, rows, target + source, n) token shares (target-prefix tokens first) and
        (batch, rows, n) the biases' share.
    """
    settings = exact_settings(options)
    if not options.include_head:
        raise ValueError("An encoder-decoder's target tokens are explained through the LM head: keep include_head=True.")
    batch, n_target = captured.layer_input.shape[:2]
    assert captured.encoder is not None
    n_source = captured.encoder.layer_input.shape[1]
    encoder_rows, decoder_rows, examples = plan_rows(parts, settings, n_source, n_target, batch, dtype, max_memory)
    steps, columns = _head_steps(parts, settings, classes)
    extra = 1 if settings.bias_mode is BiasMode.PIECE else 0
    shares, biases = [], []
    for start in range(0, batch, examples):
        group = slice(start, min(start + examples, batch))
        encoder_pieces = source_pieces(captured, parts, settings, group, dtype, n_target, rows_per_chunk=encoder_rows)
        decoded = propagate_rows(
            _diagonal_pieces(captured.layer_input[group], n_target + n_source + extra, dtype),
            captured,
            parts,
            settings,
            group,
            dtype,
            rows_per_chunk=decoder_rows,
            last_rows=positions,
            encoder_pieces=encoder_pieces,
        )
        del encoder_pieces
        scores = propagate_head_rows(decoded, steps, [None] * len(steps), settings)  # (group, rows, pieces, n or vocab)
        if columns is not None:
            scores = scores[..., columns]
        shares.append(scores[:, :, : n_target + n_source])
        biases.append(scores[:, :, -1] if extra else torch.zeros_like(scores[:, :, 0]))
    return torch.cat(shares), torch.cat(biases)


# --------------------------------------------------------------------------------------------
# Both paths: the run of the forward function and the explained output


@dataclass
class _Run:
    """One run of the forward function: its output, the model's output as the function got it
    (a leaf), and, on the fast path, the model's real output with its frozen graph."""

    output: Any
    model_output: Tensor
    captured: Optional["Captured"] = None
    frozen: Optional[freezing.FrozenForward] = None
    real_output: Optional[Tensor] = None


def _run(explainer: "DecompX", source: Tensor, target: Tensor, additional_forward_args: Any) -> _Run:
    """Run ``f(source, target, *args)`` once with the chosen algorithm's hooks."""
    model, adapter = explainer.model, explainer.adapter
    validation.check_model(model)
    args = explainer._extra_args(additional_forward_args)
    with ExitStack() as stack:
        if explainer.strategy.name == "fast":
            frozen = stack.enter_context(freezing.frozen_forward(model, adapter, fast_settings(explainer.options)))
            tap = stack.enter_context(tap_model_output(model, keep_graph=True))
            stack.enter_context(explainer._forward_precision())
            output = explainer.forward_func(source, target, *args)
            stack.close()
            return _Run(output, _model_output(tap.leaf), frozen=frozen, real_output=tap.real)
        capture = stack.enter_context(capture_internals(model, adapter))
        tap = stack.enter_context(tap_model_output(model))
        with torch.no_grad(), explainer._forward_precision():
            output = explainer.forward_func(source, target, *args)
        leaf = _model_output(tap.leaf)
        captured = capture.result(output, leaf.detach())
    _check_shapes(captured, source, target)
    return _Run(output, leaf, captured=captured)


def _model_output(leaf: Optional[Tensor]) -> Tensor:
    if leaf is None or leaf.dim() != 3:
        raise RuntimeError(
            "The forward function did not call the encoder-decoder model itself, or the model returned no logits "
            "(batch, target, vocab). Make it call model(input_ids=source_ids, decoder_input_ids=target_ids, ...) "
            "once and return its .logits (or a tensor computed from them)."
        )
    return leaf


def _check_shapes(captured: "Captured", source: Tensor, target: Tensor) -> None:
    """The model's stacks received the given source and target (not, say, two swapped tensors);
    features (3-D) are checked by their batch (the encoder's frames are the stem's output)."""
    assert captured.encoder is not None
    got = (tuple(captured.encoder.layer_input.shape[:2]), tuple(captured.layer_input.shape[:2]))
    expected_source = tuple(source.shape) if source.dim() == 2 else (source.shape[0], got[0][1])
    if got != (expected_source, tuple(target.shape)):
        raise RuntimeError(
            f"The encoder ran on {got[0]} tokens and the decoder on {got[1]}, but the inputs are source "
            f"{tuple(source.shape)} and target {tuple(target.shape)}. The forward function must pass the first "
            "input as input_ids and the second as decoder_input_ids."
        )


def _explained(run: _Run, target: Any, batch: int) -> ExplainedOutput:
    output = forward_output_tensor(run.output, batch)
    index = target_index(target, output.shape, output.device)
    pooling = torch.ones(batch, run.model_output.shape[1], device=output.device)
    return explain_output(select(output, index), run.model_output, pooling, per_position=True)


def _fast_shares(
    run: _Run, grad_outputs: Tensor, dtype: torch.dtype, output: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Source and target shares of ``G`` weightings of the model's output by one (batched) backward pass.

    Args:
        grad_outputs: (G, batch, target, vocab), or weightings of ``output``.
        output: a tensor of the frozen graph to weigh instead of the model's output (the LM
            head's input: (batch, target, hidden)).

    Returns:
        (G, batch, source), (G, batch, target) and (G, batch), the share of what the decomposition
        leaves out (``include_ffn=False``).
    """
    frozen, real = run.frozen, run.real_output if output is None else output
    assert frozen is not None and real is not None
    found = (frozen.source_embeddings, frozen.source_own_scale, frozen.embeddings, frozen.own_scale, frozen.dropped)
    leaves = tuple(leaf for leaf in found if leaf is not None)
    if len(leaves) != len(found):
        raise RuntimeError("The frozen forward pass did not reach the first layer of both stacks.")
    if grad_outputs.shape[0] == 1:
        grads = torch.autograd.grad(real, leaves, grad_outputs=grad_outputs[0].to(real.dtype), allow_unused=True)
        grads = tuple(None if g is None else g.unsqueeze(0) for g in grads)
    else:
        grads = torch.autograd.grad(
            real, leaves, grad_outputs=grad_outputs.to(real.dtype), is_grads_batched=True, allow_unused=True
        )
    groups = grad_outputs.shape[0]

    def shares(grad_e: Optional[Tensor], grad_own: Optional[Tensor], leaf: Tensor) -> Tensor:
        if grad_e is None:
            return torch.zeros((groups,) + tuple(leaf.shape[:2]), dtype=dtype, device=leaf.device)
        result = torch.einsum("gbsh,bsh->gbs", grad_e.to(dtype), leaf.detach().to(dtype))
        return result if grad_own is None else result + grad_own.squeeze(-1).to(dtype)

    source = shares(grads[0], grads[1], leaves[0])
    target = shares(grads[2], grads[3], leaves[2])
    dropped = grads[4]
    left_out = torch.zeros(source.shape[:2], dtype=dtype, device=source.device) if dropped is None else dropped.to(dtype)
    return source, target, left_out


def _check_reproduced(shares: Tensor, biases: Tensor, logits: Tensor, adapter_name: str, options: Options) -> None:
    """The exact decomposition's pieces (and bias piece) add up to the model's own logits; refuse,
    rather than explain another quantity, when they do not (an adapter that misses a step of the
    model, e.g. a rescale before the LM head that this model version does not apply). Checked with
    the default feed-forward rule (options that leave a part out do not add up by design).

    Args:
        shares: (batch, rows, pieces, n); biases: (batch, rows, n); logits: (batch, rows, n).
    """
    if not options.include_ffn or options.ffn_approximation != "zo":
        return
    total = shares.sum(2) + biases
    reference = logits.to(total.dtype)
    tolerance = {torch.float64: 1e-6, torch.float32: 1e-3}.get(logits.dtype, 5e-2) * max(1.0, float(reference.abs().max()))
    difference = float((total - reference).abs().max()) if total.numel() else 0.0
    if not difference <= tolerance:
        raise RuntimeError(
            f"The decomposition of this {adapter_name} model does not add up to its own logits (off by "
            f"{difference:.3g}): the model computes something its adapter does not describe (a different "
            "transformers version, or a modified model). Describe it with captum_decompx.Adapter(...) and "
            "pass adapter=, or report the model class."
        )


# --------------------------------------------------------------------------------------------
# The two entry points


def _source_kind(explainer: "DecompX") -> str:
    assert explainer.adapter.encoder is not None
    return explainer.adapter.encoder.input_kind


def attribute(explainer: "DecompX", inputs: Any, target: Any, additional_forward_args: Any) -> tuple[Tensor, Tensor, Tensor]:
    """:meth:`DecompX.attribute <captum_decompx.DecompX.attribute>` for an encoder-decoder.

    Returns:
        (batch, source) and (batch, target) attributions and the explained value (batch,).
    """
    source, target_ids = check_inputs(inputs, explainer.adapter.name, _source_kind(explainer))
    _check_target_position(target, target_ids.shape[1])
    run = _run(explainer, source, target_ids, additional_forward_args)
    explained = _explained(run, target, source.shape[0])
    weights = explained.weights  # (batch, target, vocab)
    dtype = explainer._compute_dtype()
    if run.frozen is not None:
        src, tgt, _ = _fast_shares(run, weights.unsqueeze(0), dtype)
        src, tgt = src[0], tgt[0]
    else:
        assert run.captured is not None
        positions = torch.nonzero(weights.abs().sum(dim=(0, 2)) > 0).flatten()
        classes = torch.nonzero(weights.abs().sum(dim=(0, 1)) > 0).flatten()
        parts = resolve_parts(explainer.model, explainer.adapter, dtype)
        shares, biases = exact_rows(run.captured, parts, explainer.options, positions, classes, dtype, explainer.max_memory)
        _check_reproduced(
            shares, biases, run.model_output.detach()[:, positions][:, :, classes], explainer.adapter.name, explainer.options
        )
        used = weights[:, positions][:, :, classes].to(dtype)  # (batch, rows, n)
        scores = torch.einsum("brkn,brn->bk", shares, used)
        tgt, src = scores[:, : target_ids.shape[1]], scores[:, target_ids.shape[1] :]
    out_dtype = run.model_output.dtype
    return src.to(out_dtype), tgt.to(out_dtype), explained.value


def decompose_target(
    explainer: "DecompX", inputs: Any, token_ids: Optional[Tensor], additional_forward_args: Any
) -> Seq2SeqDecomposition:
    """:meth:`DecompX.decompose_target <captum_decompx.DecompX.decompose_target>`: every target
    position at once (one exact decomposition, or one frozen pass and one batched backward pass)."""
    source, target_ids = check_inputs(inputs, explainer.adapter.name, _source_kind(explainer))
    run = _run(explainer, source, target_ids, additional_forward_args)
    logits = run.model_output.detach()  # (batch, target, vocab)
    batch, n_target, vocab = logits.shape
    if token_ids is None:
        token_ids = logits.argmax(-1)
    if not isinstance(token_ids, Tensor) or tuple(token_ids.shape) != (batch, n_target):
        raise ValueError(f"token_ids must be a (batch, target) = ({batch}, {n_target}) tensor of token ids.")
    token_ids = token_ids.to(logits.device).long()
    if bool(((token_ids < 0) | (token_ids >= vocab)).any()):
        raise ValueError(f"token_ids must lie in 0..{vocab - 1} (the model's vocabulary).")
    explained_logits = logits.gather(2, token_ids.unsqueeze(-1)).squeeze(-1)
    dtype = explainer._compute_dtype()
    if run.frozen is not None:
        head_input = run.frozen.head_input
        rows = torch.arange(n_target, device=logits.device)
        if head_input is not None and head_input.dim() == 3 and len(explainer.adapter.head) == 1:
            # the logit of a token is its row of the one linear head times the head's input: weigh
            # that input (batch, target, hidden), not the vocabulary-wide output
            (step,) = explainer.adapter.head
            weight = LinearMap.at(getattr(step, "path")).resolve(explainer.model, head_input.dtype).weight  # noqa: B009
            grad_outputs = head_input.new_zeros((n_target,) + tuple(head_input.shape))
            grad_outputs[rows, :, rows] = weight[token_ids.T.to(weight.device)]
            src, tgt, left_out = _fast_shares(run, grad_outputs, dtype, head_input)  # (target, batch, ...)
        else:
            grad_outputs = torch.zeros((n_target,) + tuple(logits.shape), dtype=logits.dtype, device=logits.device)
            grad_outputs[rows, :, rows] = torch.nn.functional.one_hot(token_ids.T, vocab).to(logits.dtype)
            src, tgt, left_out = _fast_shares(run, grad_outputs, dtype)  # (target, batch, ...)
        src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
        bias = explained_logits.to(dtype) - left_out.T - src.sum(-1) - tgt.sum(-1)
    else:
        assert run.captured is not None
        parts = resolve_parts(explainer.model, explainer.adapter, dtype)
        classes, where = torch.unique(token_ids, return_inverse=True)
        positions = torch.arange(n_target, device=logits.device)
        shares, biases = exact_rows(run.captured, parts, explainer.options, positions, classes, dtype, explainer.max_memory)
        _check_reproduced(shares, biases, logits[:, positions][:, :, classes], explainer.adapter.name, explainer.options)
        index = where.view(batch, n_target, 1, 1).expand(-1, -1, shares.shape[2], 1)
        chosen = shares.gather(3, index).squeeze(3)  # (batch, target, target + source)
        tgt, src = chosen[:, :, :n_target], chosen[:, :, n_target:]
        bias = biases.gather(2, where.view(batch, n_target, 1)).squeeze(2)
    out = logits.dtype
    return Seq2SeqDecomposition(src.to(out), tgt.to(out), bias.to(out), explained_logits, token_ids, explainer.strategy.name)
