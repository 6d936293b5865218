"""``DecompX``: the Captum-facing attribution class.

A call reads as one descent: validate the arguments, capture the forward pass (with the model's
output tapped, :mod:`captum_decompx.forward_contract`), decompose the model's output per class,
and reduce the decomposition to what the forward function returned for the target.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence, Union, overload

import torch
from torch import Tensor, nn

from . import decomposition, freezing, validation
from .adapters import Adapter, task_of
from .capture import Captured, warn_if_logits_are_capped
from .components import BIAS_RULES, FFN_APPROXIMATIONS, HEAD_APPROXIMATIONS
from .forward_contract import (
    ExplainedOutput,
    decomposed_model_output,
    explain_output,
    forward_output_tensor,
    model_output_tensor,
    select,
    tap_model_output,
    target_index,
)
from .hooked_attribution import ForwardCapture, HookedModelAttribution, captum_entry_point, in_call_modes
from .memory import DEFAULT_MAX_MEMORY

#: The algorithms that compute the decomposition (the ``algorithm=`` / ``method=`` option).
ALGORITHMS = ("auto", "exact", "fast")
METHODS = ALGORITHMS  # the former name, kept
TargetType = Union[None, int, tuple, Sequence[Any], Tensor]


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
    """

    output: Any
    model_output: Optional[Tensor]
    logits: Tensor
    pooling: Tensor
    frozen: freezing.FrozenForward
    choices: Optional[int] = None
    per_position: bool = False  # a head at every position: logits (batch, seq, classes)

    @property
    def real_tokens(self) -> Tensor:
        assert self.frozen.real_tokens is not None
        return self.frozen.real_tokens


@dataclass
class DecompXOutput:
    """The result of :meth:`DecompX.decompose`.

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
        method: ``"exact"`` or ``"fast"``, the algorithm that produced the result (also
            readable as ``algorithm``).
    """

    logits: Tensor
    attributions: Tensor
    bias: Optional[Tensor]
    pooled: Optional[Tensor]
    token_maps: Optional[list[Tensor]]
    method: str

    @property
    def algorithm(self) -> str:
        """``"exact"`` or ``"fast"``: the algorithm that produced the result."""
        return self.method


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(repr, choices))}.")


def _algorithm_option(algorithm: Optional[str], method: Optional[str]) -> str:
    """The ``algorithm=`` option, also accepted under its former name ``method=``."""
    if algorithm is not None and method is not None and algorithm != method:
        raise ValueError(
            f"algorithm={algorithm!r} and method={method!r} disagree; `method` is the former name of "
            "`algorithm`: pass only algorithm=."
        )
    chosen = algorithm if algorithm is not None else (method if method is not None else "auto")
    _check_choice("algorithm" if algorithm is not None else "method", chosen, ALGORITHMS)
    return chosen


class DecompX(HookedModelAttribution):
    """DecompX (Modarressi et al., ACL 2023) as a Captum attribution method.

    Every token representation is decomposed into one vector per input token and propagated
    through attention, residuals, normalizations, feed-forward networks and the classification
    head, with each nonlinearity frozen at its value in the real forward pass. For each class the
    contributions of the tokens, plus the biases' share, sum to the class logit.

    What :meth:`attribute` explains is what the forward function returns for the target: where
    the forward function's work after the model (selecting, reordering or scaling classes, taking
    a position, sums and differences, masked mean pooling, dot products with fixed vectors) is
    linear at the input, the attributions plus the biases' share sum to that output exactly. A
    softmax, sigmoid or log-softmax output is explained by the logit of the class it refers to,
    with a warning; other non-linear outputs are refused (:mod:`captum_decompx.forward_contract`).

    Args:
        forward_func: the model, or any callable ``forward_func(input_ids, *additional_forward_args)``
            that calls the model once and returns a tensor computed from its output (or the
            output object itself).
        model: the Hugging Face model whose modules are hooked; defaults to ``forward_func`` when
            that is an ``nn.Module``.
        include_biases: decompose every bias over the tokens (the paper's default). False gives the
            paper's "w/o bias" ablation; the biases' share is then reported in ``DecompXOutput.bias``.
        bias_decomposition: how a bias is spread over the tokens: ``"absdot"``, ``"abssim"``,
            ``"norm"``, ``"equal"`` or ``"cls"``.
        include_ffn: propagate through the feed-forward networks (False: "w/o FFN").
        ffn_approximation: how the FFN activation is frozen: ``"zo"`` (zero-origin, the paper's),
            ``"la"`` (tangent line) or ``"relu"``.
        include_head: propagate through the classification head (False: "w/o classification head";
            the attribution is then the L2 norm of each token's piece of the pooled representation).
        head_approximation: how the head's activation is frozen: ``"zo"`` or ``"la"``.
        method: the former name of ``algorithm``, still accepted.
        max_memory: bytes the exact algorithm may use for its decomposition; it works in chunks to
            stay under it and raises before starting when even that cannot fit.
        adapter: the architecture adapter; looked up by ``model.config.model_type`` when omitted.
        algorithm: ``"exact"`` propagates one vector per token (O(N^2) memory); ``"fast"`` needs
            ``include_biases=False`` and takes one forward pass of the real model with its
            nonlinear coefficients frozen and one backward pass (all classes at once in
            :meth:`decompose`); ``"auto"`` (default) picks fast when biases are excluded, exact
            otherwise. Per-position heads (question answering, token classification, masked LM,
            bare encoders): fast explains :meth:`attribute`'s target by one backward pass;
            :meth:`decompose` of every output there runs exact under ``"auto"`` and is refused
            under ``"fast"``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        model: Optional[nn.Module] = None,
        *,
        include_biases: bool = True,
        bias_decomposition: str = "absdot",
        include_ffn: bool = True,
        ffn_approximation: str = "zo",
        include_head: bool = True,
        head_approximation: str = "zo",
        method: Optional[str] = None,
        max_memory: Optional[int] = None,
        adapter: Optional[Adapter] = None,
        algorithm: Optional[str] = None,
    ) -> None:
        super().__init__(forward_func, model, adapter=adapter)
        _check_choice("bias_decomposition", bias_decomposition, BIAS_RULES)
        _check_choice("ffn_approximation", ffn_approximation, FFN_APPROXIMATIONS)
        _check_choice("head_approximation", head_approximation, HEAD_APPROXIMATIONS)
        chosen = _algorithm_option(algorithm, method)
        for name, flag in (("include_biases", include_biases), ("include_ffn", include_ffn), ("include_head", include_head)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}.")
        if chosen == "fast" and include_biases:
            raise ValueError(
                "algorithm='fast' (method='fast') decomposes the bias-free linearized model: pass "
                "include_biases=False, or use algorithm='exact' to decompose the biases too."
            )
        if max_memory is not None:
            validation.check_max_memory(max_memory)
        self.include_biases = include_biases
        self.bias_decomposition = bias_decomposition
        self.include_ffn = include_ffn
        self.ffn_approximation = ffn_approximation
        self.include_head = include_head
        self.head_approximation = head_approximation
        self.algorithm = chosen if chosen != "auto" else ("exact" if include_biases else "fast")
        if chosen == "auto" and self.adapter.pooling == "each" and not include_head:
            self.algorithm = "exact"  # the fast path decomposes per-position heads with the head only
        self.max_memory = int(max_memory) if max_memory is not None else DEFAULT_MAX_MEMORY
        # "auto" on a per-position head: attribute() runs fast, decompose() (every output) exact.
        self._auto_per_position = chosen == "auto" and self.adapter.pooling == "each"

    @property
    def method(self) -> str:
        """The former name of :attr:`algorithm`: ``"exact"`` or ``"fast"``."""
        return self.algorithm

    @method.setter
    def method(self, value: str) -> None:
        self.algorithm = value

    # ----------------------------------------------------------------------------------------
    # Captum contract

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    @classmethod
    def get_name(cls) -> str:
        return "DecompX"

    @overload
    def attribute(
        self,
        inputs: Union[Tensor, tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: Literal[False] = False,
        show_progress: bool = False,
        baselines: Any = None,
    ) -> Union[Tensor, tuple[Tensor]]: ...

    @overload
    def attribute(
        self,
        inputs: Union[Tensor, tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: Literal[True],
        show_progress: bool = False,
        baselines: Any = None,
    ) -> tuple[Union[Tensor, tuple[Tensor]], Tensor]: ...

    @captum_entry_point
    def attribute(
        self,
        inputs: Union[Tensor, tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        show_progress: bool = False,
        baselines: Any = None,
    ):
        """Attribute what the forward function returns for the target to the input tokens.

        Args:
            inputs: input ids (batch, seq) (or embeddings, pixels), or a 1-tuple of them.
            target: which value of the forward function's output to explain, in any form Captum
                accepts: None for a (batch,) output or a single class; an int or a 1-tuple
                ``(class,)`` for every example; one class per example (list, 1-D tensor); for
                outputs (batch, positions, classes) a tuple ``(position, class)``, a list of such
                tuples or a (batch, 2) tensor.
            additional_forward_args: passed to the forward function after the inputs.
            return_convergence_delta: also return ``attributions.sum(-1) - explained`` (batch,),
                where ``explained`` is the forward function's output for the target (or, for a
                softmax-like output, the logit it refers to). Zero up to float error when the
                biases are decomposed; minus the biases' share when they are left out.
            show_progress: show a progress bar over the examples (exact algorithm).
            baselines: accepted so that a call written for Captum's gradient methods (e.g.
                ``LayerIntegratedGradients.attribute(inputs, baselines=..., ...)``) runs as it
                is; DecompX decomposes the forward pass at the input itself and uses no baseline,
                so given baselines are ignored, with a warning.

        Returns:
            (batch, seq) contributions to the explained output (the inputs' format: a 1-tuple in,
            a 1-tuple out); without the head, the L2 norms of each token's piece of the pooled state.
            Multiple-choice ids (batch, choices, seq) give (batch, choices, seq).
        """
        if baselines is not None:
            warnings.warn(
                "DecompX decomposes the forward pass at the input itself and takes no baselines: the "
                "baselines passed are ignored (the attributions sum to the explained output, not to "
                "its difference from a baseline's).",
                UserWarning,
                stacklevel=3,  # the caller of attribute, past the entry-point wrapper
            )
        with self._call_modes():
            input_ids, as_tuple = self._input_ids(inputs)
            if return_convergence_delta and not self.include_head:
                raise ValueError(
                    "The convergence delta compares attributions with a logit; with include_head=False the "
                    "attributions are norms of hidden-state pieces, not logit shares."
                )
            explained: Optional[ExplainedOutput] = None
            if self.method == "fast":  # one frozen forward pass, one backward pass
                if not self.include_head and self.adapter.pooling == "each":
                    raise NotImplementedError(self._no_fast_per_position("with include_head=False"))
                frozen_run = self._frozen_run(input_ids, additional_forward_args)
                choices, out_dtype = frozen_run.choices, frozen_run.logits.dtype
                if not self.include_head:
                    pooled = self._fast(frozen_run, include_head=False).contributions
                    scores = torch.linalg.vector_norm(pooled, dim=-1)
                else:
                    explained = self._explained_output(frozen_run, target)
                    # Per-position heads: weights (batch, seq, classes), one backward pass of their
                    # weighted sum over every position's logits.
                    scores = self._fast(frozen_run, weights=explained.weights.reshape(frozen_run.logits.shape)).contributions
                if not frozen_run.per_position:  # as on the exact path: a padding position's own output keeps its share
                    scores = self._zero_padding(scores, frozen_run.real_tokens)
            else:
                run = self._capture_forward(input_ids, additional_forward_args)
                captured = run.captured
                choices, out_dtype = run.choices, captured.logits.dtype
                if not self.include_head:
                    scores = self._pooled_norms(captured, show_progress=show_progress)
                else:
                    explained = self._explained_output(run, target)
                    weights = explained.weights
                    if run.choices is not None:
                        weights = weights.reshape(-1, 1)  # one logit per flattened (example, choice)
                    if run.per_position:
                        scores = self._per_position_scores(captured, weights, show_progress=show_progress)
                    else:
                        contributions = self._exact(captured, show_progress=show_progress).contributions
                        scores = torch.einsum("bnc,bc->bn", contributions, weights.to(contributions.dtype))
                if not run.per_position:  # a padding position's own output keeps its own share
                    scores = self._zero_padding(scores, captured)
            scores = scores.to(out_dtype)
            if choices is not None:
                scores = scores.view(-1, choices, scores.shape[-1])  # the inputs' shape
        attributions = (scores,) if as_tuple else scores
        if return_convergence_delta:
            assert explained is not None
            return attributions, scores.flatten(1).sum(-1) - explained.value.to(scores.dtype)
        return attributions

    def compute_convergence_delta(
        self,
        attributions: Union[Tensor, tuple[Tensor]],
        start_point: Any = None,
        end_point: Union[None, Tensor, tuple[Tensor]] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        inputs: Union[None, Tensor, tuple[Tensor]] = None,
    ) -> Tensor:
        """``attributions.sum(-1) - explained`` per example, running the forward function.

        Captum's signature: ``compute_convergence_delta(attributions, start_point, end_point,
        target, additional_forward_args)``. DecompX decomposes ``f(inputs)`` itself, with no
        baseline: the inputs are ``end_point`` and ``start_point`` must be None. The former call
        ``compute_convergence_delta(attributions, inputs, target=...)`` (inputs second) also works.

        Returns:
            (batch,): the sum of the attributions minus the explained output for the target (see
            :meth:`attribute`).
        """
        if inputs is None:
            if end_point is not None:
                if start_point is not None:
                    raise ValueError(
                        "DecompX decomposes the forward function's output itself, with no baseline: "
                        "pass start_point=None and the inputs as end_point."
                    )
                inputs = end_point
            elif start_point is not None:
                inputs = start_point  # the former signature: (attributions, inputs, ...)
            else:
                raise ValueError("compute_convergence_delta needs the inputs (end_point=inputs).")
        with self._call_modes():
            input_ids, _ = self._input_ids(inputs)
            explained = self._explained_output(self._capture_forward(input_ids, additional_forward_args), target)
        if isinstance(attributions, tuple):
            (attributions,) = attributions
        return attributions.flatten(1).sum(-1) - explained.value.to(attributions.dtype)

    # ----------------------------------------------------------------------------------------
    # Full decomposition

    @in_call_modes
    def decompose(
        self,
        inputs: Union[Tensor, tuple[Tensor]],
        additional_forward_args: Any = None,
        *,
        return_token_maps: bool = False,
        show_progress: bool = False,
    ) -> DecompXOutput:
        """Decompose every class logit of the model's own output over the input tokens.

        The model's output is decomposed as the model returns it, before anything the forward
        function does after the model (``out.logits`` are the model's logits at the pooled
        position); :meth:`attribute` carries it through the forward function.

        Args:
            inputs: input ids (batch, seq), or a 1-tuple of them.
            additional_forward_args: passed to the forward function after the inputs.
            return_token_maps: also return per layer the (batch, seq, seq) norms of the
                propagated decomposition (exact path; computes every row of every layer).
            show_progress: show a progress bar over the examples (exact path).
        """
        input_ids, _ = self._input_ids(inputs)
        if self.method == "fast" and not getattr(self, "_auto_per_position", False):
            return self._decompose_fast(input_ids, additional_forward_args, return_token_maps, show_progress)
        run = self._capture_forward(input_ids, additional_forward_args)
        captured = run.captured
        logits = captured.logits
        result = self._decompose(captured, token_maps=return_token_maps, show_progress=show_progress)
        bias = result.bias
        if self.include_head:
            assert result.contributions is not None
            attributions = result.contributions
        else:
            assert result.pooled is not None
            attributions = self._zero_padding(torch.linalg.vector_norm(result.pooled, dim=-1), captured)
        if run.choices is not None:  # (batch, choices, seq) and (batch, choices)
            attributions = attributions.reshape(-1, run.choices, attributions.shape[1])
            logits = logits.reshape(-1, run.choices)
            bias = None if bias is None else bias.reshape(-1, run.choices)
        out_dtype = logits.dtype
        return DecompXOutput(
            logits=logits,
            attributions=attributions.to(out_dtype),
            bias=bias,
            pooled=None if result.pooled is None else result.pooled.to(out_dtype),
            token_maps=result.token_maps,
            method=self.method,
        )

    # ----------------------------------------------------------------------------------------
    # Internals

    def _settings(self) -> decomposition.Options:
        """The decomposition's options; the decomposition chooses each path's bias mode itself."""
        return decomposition.Options(
            include_biases=self.include_biases,
            bias_rule=self.bias_decomposition,
            include_ffn=self.include_ffn,
            ffn_approximation=self.ffn_approximation,
            include_head=self.include_head,
            head_approximation=self.head_approximation,
        )

    def _capture(self, input_ids: Tensor, additional_forward_args: Any) -> Captured:
        """The internals of one forward pass; ``logits`` is the model's output at the pooled position."""
        return self._capture_forward(input_ids, additional_forward_args).captured

    def _explained_output(self, run: Union[ForwardCapture, FrozenRun], target: TargetType) -> ExplainedOutput:
        """Which combination of the model's logits the forward function returned for the target."""
        batch = run.pooling.shape[0] // (run.choices or 1)
        output = forward_output_tensor(run.output, batch)
        model_output = run.model_output
        if model_output is None and validation.is_the_model_itself(self.forward_func, self.model):
            # model.forward called directly runs no module hook; its output is the model's output.
            model_output = output = output.detach().clone().requires_grad_(True)
        if model_output is None:
            raise RuntimeError(
                "DecompX reads the model's output where the model returns it, but the forward "
                "function did not call `model` (the module passed as model=) itself, or the model "
                "returned no floating-point tensor. Make the forward function call model(...) once and "
                "return a tensor computed from its output, e.g. lambda ids, mask: "
                "model(ids, attention_mask=mask).logits."
            )
        classes = output.shape[1] if output.dim() == 2 and run.choices is None else 0
        labels = validation.class_labels(self.model, classes) if classes else ""
        index = target_index(target, output.shape, output.device, labels)
        return explain_output(select(output, index), model_output, run.pooling, per_position=run.per_position)

    def _per_position_scores(self, captured: Captured, weights: Tensor, *, show_progress: bool) -> Tensor:
        """(batch, seq): each token's share of ``sum_{p,c} weights[b, p, c] * logits[b, p, c]``
        for a head applied at every position; only the positions with a weight are decomposed.

        Args:
            weights: (batch, positions, classes), from :meth:`_explained_output`.
        """
        positions = torch.nonzero(weights.abs().sum(dim=(0, 2)) > 0).flatten()
        result = self._decompose(captured, positions=positions, show_progress=show_progress)
        assert result.contributions is not None  # (batch, rows, seq, classes)
        rows = weights[:, positions].to(result.contributions.dtype)
        return torch.einsum("brnc,brc->bn", result.contributions, rows)

    def _decompose(
        self,
        captured: Captured,
        *,
        path: Optional[str] = None,
        targets: Optional[Tensor] = None,
        token_maps: bool = False,
        show_progress: bool = False,
        positions: Optional[Tensor] = None,
    ) -> decomposition.Decomposition:
        """The decomposition's one entry point on this object's model, adapter and options."""
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=captured.logits.shape[0], desc="DecompX", unit="example")
        try:
            return decomposition.decompose(
                captured,
                self.model,
                self.adapter,
                self._settings(),
                path=path or "exact",
                dtype=self._compute_dtype(),
                max_memory=self.max_memory,
                targets=targets,
                token_maps=token_maps,
                progress=bar.update if bar is not None else None,
                positions=positions,
            )
        finally:
            if bar is not None:
                bar.close()

    def _exact(self, captured: Captured, *, show_progress: bool, token_maps: bool = False):
        """The exact path, whatever ``method`` says (contributions (batch, seq, classes))."""
        return self._decompose(captured, path="exact", token_maps=token_maps, show_progress=show_progress)

    def _pooled_norms(self, captured: Captured, *, show_progress: bool) -> Tensor:
        """(batch, seq) norms of each token's piece of the pooled state (exact path)."""
        pooled = self._decompose(captured, path="exact", show_progress=show_progress).pooled
        assert pooled is not None
        return torch.linalg.vector_norm(pooled, dim=-1)

    def _frozen_run(self, input_ids: Tensor, additional_forward_args: Any) -> FrozenRun:
        """Run the forward function once with the model's nonlinear coefficients frozen for
        autograd (:func:`~captum_decompx.freezing.frozen_forward`) and its output tapped."""
        validation.check_model(self.model)
        args = self._extra_args(additional_forward_args)
        validation.check_attention_mask(self.forward_func, self.model, input_ids, args)
        settings = decomposition.settings_for(self._settings(), "fast")
        if self.adapter.logit_softcap is not None:
            # The model returns cap * tanh(z / cap); as on the exact path, z (the head's output,
            # before the cap) is decomposed, with a warning.
            warn_if_logits_are_capped(self.adapter)
        span_tuple = task_of(self.model) == "question answering"
        with freezing.frozen_forward(self.model, self.adapter, settings) as frozen:
            with tap_model_output(self.model, span_tuple=span_tuple, keep_graph=True) as tap, self._forward_precision():
                output = self.forward_func(input_ids, *args)
        if frozen.real_tokens is None:
            raise RuntimeError(
                "The fast path saw no attention computed in the first layer's attention module, so it "
                "cannot tell the padding from the tokens. Check the adapter's attention path."
            )
        real = tap.real if tap.real is not None else model_output_tensor(output)
        if frozen.head_output is not None:
            real = frozen.head_output
        if real is None:
            raise RuntimeError(
                "The forward function's model returned no floating-point tensor: DecompX explains the "
                "model's logits (or hidden states); return them, e.g. lambda ids, mask: "
                "model(ids, attention_mask=mask).logits."
            )
        pooling = decomposition.pool_weights(self.adapter, frozen.real_tokens, self._compute_dtype(), frozen.pooling)
        per_position = self.adapter.pooling == "each"
        logits, choices = decomposed_model_output(real, pooling, each=per_position, adapter_name=self.adapter.name)
        if logits.dim() != (3 if per_position else 2):
            raise ValueError(
                f"DecompX explains a model output of shape (batch, classes); the model returned {tuple(real.shape)}."
            )
        return FrozenRun(output, tap.leaf, logits, pooling, frozen, choices=choices, per_position=per_position)

    def _fast(
        self,
        run: FrozenRun,
        *,
        include_head: bool = True,
        weights: Optional[Tensor] = None,
    ) -> decomposition.FastResult:
        """The fast path's backward pass over one frozen run.

        Args:
            weights: (batch, classes): contributions (batch, seq) to ``sum_c weights[:, c] *
                logits[:, c]``. None: every class, (batch, seq, classes), and the frozen logits.
        """
        return decomposition.fast(
            run.frozen, run.logits, run.pooling, include_head=include_head, dtype=self._compute_dtype(), weights=weights
        )

    def _decompose_fast(
        self, input_ids: Tensor, additional_forward_args: Any, return_token_maps: bool, show_progress: bool
    ) -> DecompXOutput:
        if self.adapter.pooling == "each":
            raise NotImplementedError(self._no_fast_per_position("in decompose()"))
        token_maps = None
        if return_token_maps:  # the maps are the exact propagation's
            captured = self._capture(input_ids, additional_forward_args)
            token_maps = self._decompose(captured, path="exact", token_maps=True, show_progress=show_progress).token_maps
        run = self._frozen_run(input_ids, additional_forward_args)
        logits = run.logits.detach()
        parameter = next(self.model.parameters(), None)
        if parameter is not None and parameter.dtype.is_floating_point:
            logits = logits.to(torch.promote_types(logits.dtype, parameter.dtype))
        bias: Optional[Tensor] = None
        pooled: Optional[Tensor] = None
        if self.include_head:
            result = self._fast(run)
            attributions = self._zero_padding(result.contributions, run.real_tokens)
            assert result.outputs is not None
            # The frozen network's logits minus the token shares: what its biases carry.
            bias = (result.outputs - attributions.sum(1)).to(logits.dtype)
        else:
            pooled = self._zero_padding(self._fast(run, include_head=False).contributions, run.real_tokens)
            attributions = torch.linalg.vector_norm(pooled, dim=-1)
        if run.choices is not None:  # (batch, choices, seq) and (batch, choices)
            attributions = attributions.reshape(-1, run.choices, attributions.shape[1])
            logits = logits.reshape(-1, run.choices)
            bias = None if bias is None else bias.reshape(-1, run.choices)
        return DecompXOutput(
            logits=logits,
            attributions=attributions.to(logits.dtype),
            bias=bias,
            pooled=None if pooled is None else pooled.to(logits.dtype),
            token_maps=token_maps,
            method=self.method,
        )

    def _no_fast_per_position(self, where: str) -> str:
        """The refusal of the fast path for a per-position head where it does not apply."""
        return (
            f"The fast path does not decompose the per-position head of {self.adapter.name!r} (question "
            f"answering, token classification, masked LM, hidden states) {where}: it decomposes one "
            "weighted sum of the outputs per backward pass, so it explains attribute(..., target=...) "
            "only. Use algorithm='exact' (with include_biases=False for the bias-free variant the fast "
            "path computes), or attribute() with a target."
        )

    @staticmethod
    def _zero_padding(scores: Tensor, captured: Union[Captured, Tensor]) -> Tensor:
        """``scores`` (batch, seq, ...) with padding positions zeroed; ``captured`` or a (batch, seq) mask."""
        real = captured if isinstance(captured, Tensor) else decomposition.padding_mask(captured)
        shape = real.shape + (1,) * (scores.dim() - 2)
        return scores * real.view(shape).to(scores.dtype)
