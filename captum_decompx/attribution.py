"""``DecompX``: the Captum-facing attribution class.

A call reads as one descent: validate the arguments, run the forward pass with the chosen
algorithm's hooks (the model's output tapped, :mod:`captum_decompx.core.forward_contract`), let that
algorithm decompose what the forward function returned for the target, and give the scores the
inputs' shape. The algorithm is a strategy object (:mod:`captum_decompx.core.algorithms`) chosen once,
when the object is built, from ``algorithm=``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Literal, Optional, Sequence, Union, overload

from torch import Tensor, nn

from .adapters import Activation, Adapter
from .components import BIAS_RULES, FFN_APPROXIMATIONS, HEAD_APPROXIMATIONS
from .components.activations import check_fast_path_rule
from .core import decomposition, seq2seq, validation
from .core.algorithms import ALGORITHM_NAMES, DecompXOutput, FrozenRun, choose_algorithm
from .core.forward_contract import ExplainedOutput, explain_output, forward_output_tensor, select, target_index
from .core.hooked_attribution import ForwardCapture, HookedModelAttribution, Inputs, captum_entry_point, in_call_modes
from .core.memory import DEFAULT_MAX_MEMORY

#: The algorithms that compute the decomposition (the ``algorithm=`` option).
ALGORITHMS = ALGORITHM_NAMES
TargetType = Union[None, int, tuple, Sequence[Any], Tensor]


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(repr, choices))}.")


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
    with a warning; other non-linear outputs are refused (:mod:`captum_decompx.core.forward_contract`).

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

    _scores_multiply_inputs = True
    _gives_convergence_delta = True

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
        max_memory: Optional[int] = None,
        adapter: Optional[Adapter] = None,
        algorithm: str = "auto",
        **removed: Any,
    ) -> None:
        if "method" in removed:
            raise TypeError(
                f"DecompX(method={removed['method']!r}): the option is called algorithm= now, e.g. "
                f"DecompX(model, algorithm={removed['method']!r})."
            )
        if removed:
            raise TypeError(f"DecompX() got unexpected keyword argument(s): {', '.join(removed)}.")
        super().__init__(forward_func, model, adapter=adapter)
        _check_choice("bias_decomposition", bias_decomposition, BIAS_RULES)
        _check_choice("ffn_approximation", ffn_approximation, FFN_APPROXIMATIONS)
        _check_choice("head_approximation", head_approximation, HEAD_APPROXIMATIONS)
        for name, flag in (("include_biases", include_biases), ("include_ffn", include_ffn), ("include_head", include_head)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}.")
        self.strategy = choose_algorithm(
            algorithm, include_biases=include_biases, include_head=include_head, per_position=self.adapter.pooling == "each"
        )
        if self.strategy.name == "fast":  # refuse now what the frozen forward pass could not freeze
            if include_ffn and self.adapter.layer.ffn_gate is None:  # a gate is frozen whole, not by an approximation
                check_fast_path_rule("ffn_approximation", ffn_approximation)
            if include_head and any(isinstance(step, Activation) for step in self.adapter.head):
                check_fast_path_rule("head_approximation", head_approximation)
        if max_memory is not None:
            validation.check_max_memory(max_memory)
        self.include_biases = include_biases
        self.bias_decomposition = bias_decomposition
        self.include_ffn = include_ffn
        self.ffn_approximation = ffn_approximation
        self.include_head = include_head
        self.head_approximation = head_approximation
        self.max_memory = int(max_memory) if max_memory is not None else DEFAULT_MAX_MEMORY

    @property
    def algorithm(self) -> str:
        """``"exact"`` or ``"fast"``: the algorithm ``"auto"`` resolved to, or the one chosen."""
        return self.strategy.name

    @property
    def options(self) -> decomposition.Options:
        """What to decompose and how (each algorithm chooses its bias mode itself)."""
        return decomposition.Options(
            include_biases=self.include_biases,
            bias_rule=self.bias_decomposition,
            include_ffn=self.include_ffn,
            ffn_approximation=self.ffn_approximation,
            include_head=self.include_head,
            head_approximation=self.head_approximation,
        )

    # ----------------------------------------------------------------------------------------
    # Captum contract

    @classmethod
    def get_name(cls) -> str:
        return "DecompX"

    @overload
    def attribute(
        self,
        inputs: Inputs,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: Literal[False] = False,
        show_progress: bool = False,
        baselines: Any = None,
    ) -> Inputs: ...

    @overload
    def attribute(
        self,
        inputs: Inputs,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: Literal[True],
        show_progress: bool = False,
        baselines: Any = None,
    ) -> tuple[Inputs, Tensor]: ...

    @captum_entry_point
    def attribute(
        self,
        inputs: Inputs,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        show_progress: bool = False,
        baselines: Any = None,
    ):
        """Attribute what the forward function returns for the target to the input tokens.

        Args:
            inputs: input ids (batch, seq) (or embeddings, pixels), or a 1-tuple of them; an
                encoder-decoder's ``(source_ids, target_ids)`` (see below).
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

        Encoder-decoders (T5, the BART family) take ``inputs=(source_ids, target_ids)``, a forward
        function ``f(source_ids, target_ids, *additional_forward_args)`` that returns the model's
        logits (batch, target, vocab), and ``target=(position, token_id)``; they return
        ``(attr_source (batch, source), attr_target (batch, target))``, which with the biases'
        share sum to the explained logit (see ``docs/encoder_decoders.md``).
        """
        _warn_if_baselines(baselines)
        if self.adapter.encoder is not None:
            return self._attribute_seq2seq(inputs, target, additional_forward_args, return_convergence_delta)
        with self._call_modes():
            input_ids, as_tuple = self._input_ids(inputs)
            if return_convergence_delta and not self.include_head:
                raise ValueError(
                    "The convergence delta compares attributions with a logit; with include_head=False the "
                    "attributions are norms of hidden-state pieces, not logit shares."
                )
            run = self.strategy.forward(self, input_ids, additional_forward_args)
            explained = self._explained_output(run, target) if self.include_head else None
            scores = self.strategy.attribute(self, run, explained, show_progress=show_progress)
            if run.choices is not None:
                scores = scores.view(-1, run.choices, scores.shape[-1])  # the inputs' shape
        attributions = (scores,) if as_tuple else scores
        if return_convergence_delta:
            assert explained is not None
            return attributions, scores.flatten(1).sum(-1) - explained.value.to(scores.dtype)
        return attributions

    def _attribute_seq2seq(self, inputs: Any, target: TargetType, additional_forward_args: Any, return_convergence_delta: bool):
        """:meth:`attribute` for an encoder-decoder: a pair of attributions (source, target prefix)."""
        if not self.include_head:
            raise ValueError("An encoder-decoder's target token is explained through its LM head: keep include_head=True.")
        with self._call_modes():
            source, target_prefix, explained = seq2seq.attribute(self, inputs, target, additional_forward_args)
        attributions = (source, target_prefix)
        if return_convergence_delta:
            return attributions, source.sum(-1) + target_prefix.sum(-1) - explained.to(source.dtype)
        return attributions

    @in_call_modes
    def decompose_target(
        self,
        inputs: tuple[Tensor, Tensor],
        token_ids: Optional[Tensor] = None,
        additional_forward_args: Any = None,
    ) -> seq2seq.Seq2SeqDecomposition:
        """An encoder-decoder's logit at every target position decomposed, all positions at once.

        Row ``t`` explains the logit of ``token_ids[:, t]`` at target position ``t`` (the token
        that follows ``target_ids[:, t]``, teacher-forced) over the source tokens and the target
        prefix. One exact decomposition computes every row; the fast path runs one frozen forward
        pass and one batched backward pass.

        Args:
            inputs: ``(source_ids (batch, source), target_ids (batch, target))``.
            token_ids: (batch, target) the token explained at each position; None: the model's
                most likely token there (greedy decoding).
            additional_forward_args: passed to the forward function after the inputs.
        """
        if self.adapter.encoder is None:
            raise ValueError(
                f"decompose_target explains an encoder-decoder's target positions; the {self.adapter.name} model "
                "is not one. Use attribute() or decompose()."
            )
        if not self.include_head:
            raise ValueError("An encoder-decoder's target tokens are explained through its LM head: keep include_head=True.")
        return seq2seq.decompose_target(self, inputs, token_ids, additional_forward_args)

    def compute_convergence_delta(
        self,
        attributions: Inputs,
        start_point: Any = None,
        end_point: Optional[Inputs] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        inputs: Optional[Inputs] = None,
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
        self, inputs: Inputs, additional_forward_args: Any = None, *, return_token_maps: bool = False, show_progress: bool = False
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
        if self.adapter.encoder is not None:
            raise NotImplementedError(
                f"decompose() decomposes every class of the output; for the {self.adapter.name} encoder-decoder "
                "(a vocabulary at every target position) use decompose_target((source_ids, target_ids), token_ids), "
                "or attribute((source_ids, target_ids), target=(position, token_id))."
            )
        input_ids, _ = self._input_ids(inputs)
        return self.strategy.decompose(
            self, input_ids, additional_forward_args, token_maps=return_token_maps, show_progress=show_progress
        )

    # ----------------------------------------------------------------------------------------
    # Internals

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
        explained = explain_output(select(output, index), model_output, run.pooling, per_position=run.per_position)
        if self.adapter.logit_softcap is not None:
            # The forward function's output is a function of the capped logits; what is explained
            # is the same combination of the logits before the cap (warned at the capture).
            logits = run.captured.logits if isinstance(run, ForwardCapture) else run.logits
            explained.value = (explained.weights * logits.detach().to(explained.weights.dtype)).sum(-1)
        return explained


def _warn_if_baselines(baselines: Any) -> None:
    """DecompX takes no baselines; a call written for Captum's gradient methods still runs."""
    if baselines is not None:
        warnings.warn(
            "DecompX decomposes the forward pass at the input itself and takes no baselines: the "
            "baselines passed are ignored (the attributions sum to the explained output, not to "
            "its difference from a baseline's).",
            UserWarning,
            stacklevel=4,  # the caller of attribute, past the entry-point wrapper
        )


__all__ = ["ALGORITHMS", "DecompX", "DecompXOutput", "TargetType"]
