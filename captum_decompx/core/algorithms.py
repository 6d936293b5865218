"""The two algorithms that compute a DecompX decomposition, one strategy object each.

:class:`Exact` captures the forward pass (:func:`~captum_decompx.core.capture.capture_internals`) and
propagates one piece per input token through every component (O(N^2) memory, every option).
:class:`Fast` runs the real model once with its nonlinear coefficients frozen
(:func:`~captum_decompx.core.freezing.frozen_forward`) and differentiates it once (O(N), the bias-free
decomposition only). :func:`choose_algorithm` turns the ``algorithm=`` option (``"auto"``,
``"exact"``, ``"fast"``) into one of them, once, when :class:`~captum_decompx.DecompX` is built;
every call then asks that object for its three steps: run the forward pass (:meth:`Algorithm.forward`),
score the tokens for what the forward function returned (:meth:`Algorithm.attribute`), or
decompose every class (:meth:`Algorithm.decompose`).
"""

from __future__ import annotations

import abc
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import Tensor

from ..adapters import task_of
from . import decomposition, freezing, rows, validation
from .capture import Captured, warn_if_logits_are_capped
from .forward_contract import ExplainedOutput, decomposed_model_output, model_output_tensor, tap_model_output
from .hooked_attribution import ForwardCapture

if TYPE_CHECKING:
    from ..attribution import DecompX

#: The values of the ``algorithm=`` option.
ALGORITHM_NAMES = ("auto", "exact", "fast")


@dataclass
class DecompXOutput:
    """The result of :meth:`DecompX.decompose <captum_decompx.DecompX.decompose>`.

    Attributes:
        logits: (batch, classes), the model's own logits at the pooled position (what the forward
            function received from the model, before any post-processing it does).
            For a head applied at every position (question answering, token classification,
            masked LM, a bare encoder): (batch, seq, classes); multiple choice: (batch, choices).
        attributions: (batch, seq, classes), the contribution of every input token to every class
            logit; without the head, (batch, seq) L2 norms of the pooled token's decomposition.
            Per-position heads: (batch, positions, seq, classes), row ``p`` decomposing the output
            at position ``p``; multiple choice: (batch, choices, seq).
        bias: (batch, classes), the part of each logit not assigned to any token: zero when the
            biases are decomposed, the biases' share when they are left out. None without the head.
        pooled: (batch, seq, hidden), the pooled token's decomposition after the last layer (the
            final norm included). None on the fast path with the head, where it would cost one
            backward pass per hidden unit; computed there with ``include_head=False``.
        token_maps: with ``return_token_maps=True``, per layer the (batch, seq, seq) norms
            ``||X_l[i, k]||`` of token ``k``'s piece in token ``i``'s representation.
        algorithm: ``"exact"`` or ``"fast"``, the algorithm that produced the result.
    """

    logits: Tensor
    attributions: Tensor
    bias: Optional[Tensor]
    pooled: Optional[Tensor]
    token_maps: Optional[list[Tensor]]
    algorithm: str


@dataclass
class FrozenRun:
    """One run of the forward function with the model's nonlinear coefficients frozen (fast path).

    Attributes:
        output: what the forward function returned (computed from ``model_output``).
        model_output: the model's own output as the forward function received it: a leaf that
            requires grad, (batch, classes) or (batch, seq, classes).
        logits: (batch, classes), the model's output at the pooled position, in the frozen graph
            (its gradient with respect to ``frozen``'s leaves is the decomposition).
        pooling: (batch, seq) weights of the pooled position.
        frozen: what the frozen forward pass left for the backward pass.
        choices: for a multiple-choice model given ids (batch, choices, seq), the number of
            choices; ``logits`` is then (batch * choices, 1), one per flattened sequence.
        per_position: a head at every position: ``logits`` (batch, seq, classes).
    """

    output: Any
    model_output: Optional[Tensor]
    logits: Tensor
    pooling: Tensor
    frozen: freezing.FrozenForward
    choices: Optional[int] = None
    per_position: bool = False

    @property
    def real_tokens(self) -> Tensor:
        assert self.frozen.real_tokens is not None
        return self.frozen.real_tokens


Run = Union[ForwardCapture, FrozenRun]


@dataclass
class RowScores:
    """The head's output at several positions of one sequence, one class each, decomposed.

    Attributes:
        scores: (rows, seq) each token's share of the class logit at each position.
        bias: (rows,) the biases' share (exact path), or None (the fast path: the logit minus
            the token shares).
        model_output: the model's own output (1, seq, classes) as the forward function received it.
    """

    scores: Tensor
    bias: Optional[Tensor]
    model_output: Optional[Tensor]


class Algorithm(abc.ABC):
    """How one algorithm runs the forward pass and decomposes it (see the module docstring)."""

    name: str

    @abc.abstractmethod
    def forward(self, explainer: "DecompX", input_ids: Tensor, additional_forward_args: Any) -> Run:
        """Run the forward function once, with this algorithm's hooks."""

    @abc.abstractmethod
    def attribute(self, explainer: "DecompX", run: Run, explained: Optional[ExplainedOutput], *, show_progress: bool) -> Tensor:
        """(batch, seq) token scores: contributions to ``explained`` (its weights over the model's
        output), or, without it (``include_head=False``), norms of the pooled token's pieces.
        In the dtype of the model's output."""

    @abc.abstractmethod
    def decompose(
        self, explainer: "DecompX", input_ids: Tensor, additional_forward_args: Any, *, token_maps: bool, show_progress: bool
    ) -> DecompXOutput:
        """Every class logit of the model's own output, decomposed over the input tokens."""

    @abc.abstractmethod
    def rows(self, explainer: "DecompX", input_ids: Tensor, positions: Tensor, classes: Tensor) -> Optional[RowScores]:
        """The head's output at ``positions`` (rows,) of one sequence ``input_ids`` (1, seq), class
        ``classes[r]`` at row ``r``, from one pass (a model whose head is one linear map read at
        every position); None where the head's input is not read at every position."""


def _output(
    name: str,
    logits: Tensor,
    attributions: Tensor,
    bias: Optional[Tensor],
    pooled: Optional[Tensor],
    token_maps: Optional[list[Tensor]],
    choices: Optional[int],
) -> DecompXOutput:
    """The result in the model's output dtype; multiple choice as (batch, choices, ...)."""
    if choices is not None:  # (batch, choices, seq) and (batch, choices)
        attributions = attributions.reshape(-1, choices, attributions.shape[1])
        logits = logits.reshape(-1, choices)
        bias = None if bias is None else bias.reshape(-1, choices)
    pooled = None if pooled is None else pooled.to(logits.dtype)
    return DecompXOutput(logits, attributions.to(logits.dtype), bias, pooled, token_maps, name)


class Exact(Algorithm):
    """One piece per input token through every component of a captured forward pass."""

    name = "exact"

    def forward(self, explainer: "DecompX", input_ids: Tensor, additional_forward_args: Any) -> ForwardCapture:
        return explainer._capture_forward(input_ids, additional_forward_args)

    def attribute(self, explainer: "DecompX", run: Run, explained: Optional[ExplainedOutput], *, show_progress: bool) -> Tensor:
        assert isinstance(run, ForwardCapture)
        captured = run.captured
        if explained is None:
            pooled = self.decomposition(explainer, captured, show_progress=show_progress).pooled
            assert pooled is not None
            scores = torch.linalg.vector_norm(pooled, dim=-1)
        elif run.per_position:
            scores = self._per_position_scores(explainer, captured, explained.weights, show_progress=show_progress)
        else:
            weights = explained.weights
            if run.choices is not None:
                weights = weights.reshape(-1, 1)  # one logit per flattened (example, choice)
            contributions = self.decomposition(explainer, captured, show_progress=show_progress).contributions
            assert contributions is not None
            scores = torch.einsum("bnc,bc->bn", contributions, weights.to(contributions.dtype))
        return scores.to(captured.logits.dtype)

    def decompose(
        self, explainer: "DecompX", input_ids: Tensor, additional_forward_args: Any, *, token_maps: bool, show_progress: bool
    ) -> DecompXOutput:
        run = self.forward(explainer, input_ids, additional_forward_args)
        captured = run.captured
        result = self.decomposition(explainer, captured, token_maps=token_maps, show_progress=show_progress)
        if explainer.include_head:
            assert result.contributions is not None
            attributions = result.contributions
        else:
            assert result.pooled is not None
            attributions = torch.linalg.vector_norm(result.pooled, dim=-1)
        return _output(self.name, captured.logits, attributions, result.bias, result.pooled, result.token_maps, run.choices)

    def rows(self, explainer: "DecompX", input_ids: Tensor, positions: Tensor, classes: Tensor) -> Optional[RowScores]:
        options, dtype, model, adapter = explainer.options, explainer._compute_dtype(), explainer.model, explainer.adapter
        rows.plan_rows(
            model,
            adapter,
            options,
            batch=input_ids.shape[0],
            seq=input_ids.shape[1],
            rows=positions.numel(),
            dtype=dtype,
            max_memory=explainer.max_memory,
        )  # a DecompXMemoryError before any work when it cannot fit
        run = self.forward(explainer, input_ids, None)
        decomposed = rows.decompose_rows(
            run.captured,
            model,
            adapter,
            options,
            positions=positions,
            classes=classes,
            dtype=dtype,
            max_memory=explainer.max_memory,
        )
        assert decomposed.bias is not None
        return RowScores(decomposed.contributions[0], decomposed.bias[0], run.model_output)

    def decomposition(
        self,
        explainer: "DecompX",
        captured: Captured,
        *,
        token_maps: bool = False,
        show_progress: bool = False,
        positions: Optional[Tensor] = None,
    ) -> decomposition.Decomposition:
        """:func:`~captum_decompx.core.decomposition.decompose` on the explainer's model, adapter and options."""
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=captured.logits.shape[0], desc="DecompX", unit="example")
        try:
            return decomposition.decompose(
                captured,
                explainer.model,
                explainer.adapter,
                explainer.options,
                dtype=explainer._compute_dtype(),
                max_memory=explainer.max_memory,
                token_maps=token_maps,
                progress=bar.update if bar is not None else None,
                positions=positions,
            )
        finally:
            if bar is not None:
                bar.close()

    def _per_position_scores(self, explainer: "DecompX", captured: Captured, weights: Tensor, *, show_progress: bool) -> Tensor:
        """(batch, seq): each token's share of ``sum_{p,c} weights[b, p, c] * logits[b, p, c]``
        for a head applied at every position; only the positions with a weight are decomposed.

        Args:
            weights: (batch, positions, classes), the explained output's weights.
        """
        positions = torch.nonzero(weights.abs().sum(dim=(0, 2)) > 0).flatten()
        result = self.decomposition(explainer, captured, positions=positions, show_progress=show_progress)
        assert result.contributions is not None  # (batch, rows, seq, classes)
        rows = weights[:, positions].to(result.contributions.dtype)
        return torch.einsum("brnc,brc->bn", result.contributions, rows)


class Fast(Algorithm):
    """One forward pass of the real model with its nonlinear coefficients frozen, one backward pass.

    Args:
        per_position_decompose: the algorithm that decomposes every output of a per-position head
            (question answering, token classification, masked LM, hidden states), which the fast
            path explains one weighted sum at a time; None refuses it.
    """

    name = "fast"

    def __init__(self, per_position_decompose: Optional[Algorithm] = None) -> None:
        self.per_position_decompose = per_position_decompose

    def forward(self, explainer: "DecompX", input_ids: Tensor, additional_forward_args: Any) -> FrozenRun:
        """Run the forward function once with the model's nonlinear coefficients frozen for
        autograd (:func:`~captum_decompx.core.freezing.frozen_forward`) and its output tapped."""
        model, adapter = explainer.model, explainer.adapter
        if not explainer.include_head and adapter.pooling == "each":
            raise NotImplementedError(_no_fast_per_position(adapter.name, "with include_head=False"))
        validation.check_model(model)
        args = explainer._extra_args(additional_forward_args)
        validation.check_positional_arguments(explainer.forward_func, model, args)
        validation.check_attention_mask(explainer.forward_func, model, input_ids, args)
        if adapter.logit_softcap is not None:
            # The model returns cap * tanh(z / cap); as on the exact path, z (the head's output,
            # before the cap) is decomposed, with a warning.
            warn_if_logits_are_capped(adapter)
        settings = decomposition.fast_settings(explainer.options)
        span_tuple = task_of(model) == "question answering"
        with freezing.frozen_forward(model, adapter, settings) as frozen, ExitStack() as stack:
            model_ids = stack.enter_context(validation.recording_model_ids(model))
            tapped = tap_model_output(model, span_tuple=span_tuple, keep_graph=True, field=adapter.output_field)
            with tapped as tap, explainer._forward_precision():
                output = explainer.forward_func(input_ids, *args)
        validation.check_model_received_the_inputs(input_ids, model_ids)
        if frozen.real_tokens is None:
            raise RuntimeError(
                "The fast path saw no attention computed in the first layer's attention module, so it "
                "cannot tell the padding from the tokens. Check the adapter's attention path."
            )
        real = frozen.head_output if frozen.head_output is not None else tap.real
        real = real if real is not None else model_output_tensor(output)
        if real is None:
            raise RuntimeError(
                "The forward function's model returned no floating-point tensor: DecompX explains the "
                "model's logits (or hidden states); return them, e.g. lambda ids, mask: "
                "model(ids, attention_mask=mask).logits."
            )
        pooling = decomposition.pool_weights(adapter, frozen.real_tokens, explainer._compute_dtype(), frozen.pooling)
        per_position = adapter.pooling == "each"
        logits, choices = decomposed_model_output(real, pooling, each=per_position, adapter_name=adapter.name)
        if logits.dim() != (3 if per_position else 2):
            raise ValueError(
                f"DecompX explains a model output of shape (batch, classes); the model returned {tuple(real.shape)}."
            )
        return FrozenRun(output, tap.leaf, logits, pooling, frozen, choices=choices, per_position=per_position)

    def attribute(self, explainer: "DecompX", run: Run, explained: Optional[ExplainedOutput], *, show_progress: bool) -> Tensor:
        assert isinstance(run, FrozenRun)
        if explained is None:
            scores = torch.linalg.vector_norm(self._backward(explainer, run, include_head=False).contributions, dim=-1)
        else:
            # Per-position heads: weights (batch, seq, classes), one backward pass of their
            # weighted sum over every position's logits.
            scores = self._backward(explainer, run, weights=explained.weights.reshape(run.logits.shape)).contributions
        return scores.to(run.logits.dtype)

    def decompose(
        self, explainer: "DecompX", input_ids: Tensor, additional_forward_args: Any, *, token_maps: bool, show_progress: bool
    ) -> DecompXOutput:
        if explainer.adapter.pooling == "each":
            if self.per_position_decompose is None:
                raise NotImplementedError(_no_fast_per_position(explainer.adapter.name, "in decompose()"))
            return self.per_position_decompose.decompose(
                explainer, input_ids, additional_forward_args, token_maps=token_maps, show_progress=show_progress
            )
        maps = None
        if token_maps:  # the maps are the exact propagation's
            captured = explainer._capture_forward(input_ids, additional_forward_args).captured
            maps = EXACT.decomposition(explainer, captured, token_maps=True, show_progress=show_progress).token_maps
        run = self.forward(explainer, input_ids, additional_forward_args)
        logits = run.logits.detach()
        parameter = next(explainer.model.parameters(), None)
        if parameter is not None and parameter.dtype.is_floating_point:
            logits = logits.to(torch.promote_types(logits.dtype, parameter.dtype))
        if not explainer.include_head:
            pooled = self._backward(explainer, run, include_head=False).contributions
            return _output(self.name, logits, torch.linalg.vector_norm(pooled, dim=-1), None, pooled, maps, run.choices)
        result = self._backward(explainer, run)
        attributions = result.contributions
        assert result.outputs is not None
        # The frozen network's logits minus the token shares: what its biases carry.
        bias = (result.outputs - attributions.sum(1)).to(logits.dtype)
        return _output(self.name, logits, attributions, bias, None, maps, run.choices)

    def rows(self, explainer: "DecompX", input_ids: Tensor, positions: Tensor, classes: Tensor) -> Optional[RowScores]:
        run = self.forward(explainer, input_ids, None)
        head_input = run.frozen.head_input
        if head_input is None or head_input.dim() != 3:
            return None
        dtype = explainer._compute_dtype()
        weight = decomposition.resolve_parts(explainer.model, explainer.adapter, dtype).head[0].params.weight
        scores = rows.fast_rows(run.frozen, head_input, positions, weight[classes], dtype)[:, 0]
        return RowScores(scores, None, run.model_output)

    @staticmethod
    def _backward(
        explainer: "DecompX", run: FrozenRun, *, include_head: bool = True, weights: Optional[Tensor] = None
    ) -> decomposition.FastResult:
        """The backward pass over one frozen run (see :func:`~captum_decompx.core.decomposition.fast`)."""
        return decomposition.fast(
            run.frozen, run.logits, run.pooling, include_head=include_head, dtype=explainer._compute_dtype(), weights=weights
        )


def _no_fast_per_position(adapter_name: str, where: str) -> str:
    """The refusal of the fast path for a per-position head where it does not apply."""
    return (
        f"The fast path does not decompose the per-position head of {adapter_name!r} (question "
        f"answering, token classification, masked LM, hidden states) {where}: it decomposes one "
        "weighted sum of the outputs per backward pass, so it explains attribute(..., target=...) "
        "only. Use algorithm='exact' (with include_biases=False for the bias-free variant the fast "
        "path computes), or attribute() with a target."
    )


EXACT = Exact()
FAST = Fast()


def choose_algorithm(name: str, *, include_biases: bool, include_head: bool, per_position: bool) -> Algorithm:
    """The strategy for the ``algorithm=`` option.

    ``"auto"`` is the fast path when the biases are left out, the exact path otherwise; on a
    per-position head (``per_position``) it is the fast path for :meth:`~Algorithm.attribute` and
    the exact path for :meth:`~Algorithm.decompose` of every output, and the exact path without
    the head.
    """
    if name not in ALGORITHM_NAMES:
        raise ValueError(f"algorithm={name!r} is not valid; choose one of: {', '.join(map(repr, ALGORITHM_NAMES))}.")
    if name == "fast" and include_biases:
        raise ValueError(
            "algorithm='fast' decomposes the bias-free linearized model: pass include_biases=False, or use "
            "algorithm='exact' to decompose the biases too."
        )
    if name == "exact" or (name == "auto" and (include_biases or (per_position and not include_head))):
        return EXACT
    if name == "auto" and per_position:
        return Fast(per_position_decompose=EXACT)
    return FAST


__all__ = ["ALGORITHM_NAMES", "Algorithm", "DecompXOutput", "Exact", "Fast", "FrozenRun", "RowScores", "choose_algorithm"]
