"""``DecompX``: the Captum-facing attribution class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence, Union, overload

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from . import decomposition, freezing, validation
from .adapters import Adapter, adapter_for
from .capture import Captured, capture_internals
from .decomposition import DEFAULT_MAX_MEMORY
from .engine import BIAS_RULES, FFN_APPROXIMATIONS, HEAD_APPROXIMATIONS, BiasMode, Settings

METHODS = ("auto", "exact", "fast")
_ALL_CLASSES = object()
TargetType = Union[None, int, Sequence[int], Tensor]


@dataclass
class DecompXOutput:
    """The result of :meth:`DecompX.decompose`.

    Attributes:
        logits: (batch, classes), the logits of the forward pass that was decomposed.
        attributions: (batch, seq, classes), the contribution of every input token to every class
            logit; without the head, (batch, seq) L2 norms of the pooled token's decomposition.
        bias: (batch, classes), the part of each logit not assigned to any token: zero when the
            biases are decomposed, the biases' share when they are left out. None without the head.
        pooled: (batch, seq, hidden), the pooled token's decomposition after the last layer (the
            final norm included). None on the fast path with the head, where it would cost one
            backward pass per hidden unit; computed there with ``include_head=False``.
        token_maps: with ``return_token_maps=True``, per layer the (batch, seq, seq) norms
            ``||X_l[i, k]||`` of token ``k``'s piece in token ``i``'s representation.
        method: ``"exact"`` or ``"fast"``, the path that produced the result.
    """

    logits: Tensor
    attributions: Tensor
    bias: Optional[Tensor]
    pooled: Optional[Tensor]
    token_maps: Optional[list[Tensor]]
    method: str


@dataclass
class _FastRun:
    """One run of the fast path: the real logits (batch, classes), the explained classes (batch,)
    or None, the (batch, seq) real-token mask and the decomposition."""

    logits: Tensor
    classes: Optional[Tensor]
    real_tokens: Tensor
    result: decomposition.FastResult


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(repr, choices))}.")


def _logits_of(output: Any) -> Tensor:
    logits = getattr(output, "logits", output)
    if isinstance(output, (tuple, list)) and not hasattr(output, "logits"):
        logits = output[0]
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"The forward function returned {type(output).__name__}; DecompX needs the logits as a "
            "tensor (batch, classes) or an output object with `.logits`."
        )
    if logits.dim() != 2:
        raise ValueError(f"DecompX explains logits of shape (batch, classes); the forward function returned {tuple(logits.shape)}.")
    return logits


class DecompX(Attribution):
    """DecompX (Modarressi et al., ACL 2023) as a Captum attribution method.

    Every token representation is decomposed into one vector per input token and propagated
    through attention, residuals, normalizations, feed-forward networks and the classification
    head, with each nonlinearity frozen at its value in the real forward pass. For each class the
    contributions of the tokens, plus the biases' share, sum to the class logit.

    Args:
        forward_func: the model, or any callable ``forward_func(input_ids, *additional_forward_args)``
            returning logits (a tensor or an object with ``.logits``).
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
        method: ``"exact"`` propagates one vector per token (O(N^2) memory); ``"fast"`` needs
            ``include_biases=False`` and takes one forward pass of the real model with its
            nonlinear coefficients frozen, and one backward pass (all classes at once); ``"auto"``
            picks fast when biases are excluded, exact otherwise.
        max_memory: bytes the exact path may use for its decomposition; it works in chunks to stay
            under it and raises before starting when even that cannot fit.
        adapter: the architecture adapter; looked up by ``model.config.model_type`` when omitted.
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
        method: str = "auto",
        max_memory: Optional[int] = None,
        adapter: Optional[Adapter] = None,
    ) -> None:
        if model is None:
            if not isinstance(forward_func, nn.Module):
                raise ValueError(
                    "DecompX hooks a model's modules: pass the model as `model=` when forward_func is "
                    "not itself the model, e.g. DecompX(forward_func, model=model)."
                )
            model = forward_func
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}.")
        super().__init__(forward_func)
        _check_choice("bias_decomposition", bias_decomposition, BIAS_RULES)
        _check_choice("ffn_approximation", ffn_approximation, FFN_APPROXIMATIONS)
        _check_choice("head_approximation", head_approximation, HEAD_APPROXIMATIONS)
        _check_choice("method", method, METHODS)
        for name, flag in (("include_biases", include_biases), ("include_ffn", include_ffn), ("include_head", include_head)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}.")
        if method == "fast" and include_biases:
            raise ValueError(
                "method='fast' decomposes the bias-free linearized model: pass include_biases=False, "
                "or use method='exact' to decompose the biases too."
            )
        if max_memory is not None:
            validation.check_max_memory(max_memory)
        self.model = model
        self.adapter = adapter if adapter is not None else adapter_for(model)
        self.include_biases = include_biases
        self.bias_decomposition = bias_decomposition
        self.include_ffn = include_ffn
        self.ffn_approximation = ffn_approximation
        self.include_head = include_head
        self.head_approximation = head_approximation
        self.method = method if method != "auto" else ("exact" if include_biases else "fast")
        self.max_memory = int(max_memory) if max_memory is not None else DEFAULT_MAX_MEMORY

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
    ) -> tuple[Union[Tensor, tuple[Tensor]], Tensor]: ...

    def attribute(
        self,
        inputs: Union[Tensor, tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        show_progress: bool = False,
    ):
        """Attribute the target logit to the input tokens.

        Args:
            inputs: input ids (batch, seq), or a 1-tuple of them.
            target: the class to explain: an int for every example, or one per example (list or
                1-D tensor). None only for models with one output.
            additional_forward_args: passed to the forward function after the inputs.
            return_convergence_delta: also return ``attributions.sum(-1) - logit[target]`` (batch,).
            show_progress: show a progress bar over the examples (exact path).

        Returns:
            (batch, seq) contributions to the target logit (the inputs' format: a 1-tuple in, a
            1-tuple out); without the head, the L2 norms of each token's piece of the pooled state.
        """
        input_ids, as_tuple = self._input_ids(inputs)
        if return_convergence_delta and not self.include_head:
            raise ValueError(
                "The convergence delta compares attributions with a logit; with include_head=False the "
                "attributions are norms of hidden-state pieces, not logit shares."
            )
        if self.method == "fast":  # one frozen forward pass and one backward pass
            run = self._fast(input_ids, additional_forward_args, target=target)
            logits, classes = run.logits, run.classes
            contributions = run.result.contributions
            scores = contributions if self.include_head else torch.linalg.vector_norm(contributions, dim=-1)
            scores = self._zero_padding(scores, run.real_tokens).to(logits.dtype)
        else:
            captured = self._capture(input_ids, additional_forward_args)
            logits = captured.logits
            if self.include_head:
                classes = self._targets(target, captured.logits)
                result = self._exact(captured, show_progress=show_progress)
                scores = result.contributions.gather(2, classes.view(-1, 1, 1).expand(-1, result.contributions.shape[1], 1)).squeeze(-1)
            else:
                scores = self._pooled_norms(captured, show_progress=show_progress)
            scores = self._zero_padding(scores, captured).to(captured.logits.dtype)
        attributions = (scores,) if as_tuple else scores
        if return_convergence_delta:
            assert classes is not None  # the delta needs the head (checked above)
            delta = scores.sum(-1) - logits.gather(1, classes.view(-1, 1)).squeeze(1)
            return attributions, delta
        return attributions

    def compute_convergence_delta(
        self,
        attributions: Union[Tensor, tuple[Tensor]],
        inputs: Union[Tensor, tuple[Tensor]],
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """``attributions.sum(-1) - logit[target]`` per example, running the forward function."""
        input_ids, _ = self._input_ids(inputs)
        if isinstance(attributions, tuple):
            (attributions,) = attributions
        with torch.no_grad():
            logits = _logits_of(self.forward_func(input_ids, *self._extra_args(additional_forward_args)))
        classes = self._targets(target, logits)
        return attributions.sum(-1) - logits.gather(1, classes.view(-1, 1)).squeeze(1)

    # ----------------------------------------------------------------------------------------
    # Full decomposition

    def decompose(
        self,
        inputs: Union[Tensor, tuple[Tensor]],
        additional_forward_args: Any = None,
        *,
        return_token_maps: bool = False,
        show_progress: bool = False,
    ) -> DecompXOutput:
        """Decompose every class logit over the input tokens.

        Args:
            inputs: input ids (batch, seq), or a 1-tuple of them.
            additional_forward_args: passed to the forward function after the inputs.
            return_token_maps: also return per layer the (batch, seq, seq) norms of the
                propagated decomposition (exact path; computes every row of every layer).
            show_progress: show a progress bar over the examples (exact path).
        """
        input_ids, _ = self._input_ids(inputs)
        if self.method == "fast":
            return self._decompose_fast(input_ids, additional_forward_args, return_token_maps, show_progress)
        captured = self._capture(input_ids, additional_forward_args)
        logits = captured.logits
        token_maps, pooled = None, None
        if self.method == "exact" or return_token_maps:
            result = self._exact(captured, show_progress=show_progress, token_maps=return_token_maps)
            pooled, token_maps = result.pooled, result.token_maps
        if self.include_head:
            attributions = self._zero_padding(result.contributions, captured)
            if self.include_biases:
                bias = torch.zeros_like(logits)
            else:
                bias = result.bias.to(logits.dtype)
        else:
            attributions = self._zero_padding(torch.linalg.vector_norm(pooled, dim=-1), captured)
            bias = None
        out_dtype = logits.dtype
        return DecompXOutput(
            logits=logits,
            attributions=attributions.to(out_dtype),
            bias=bias,
            pooled=None if pooled is None else pooled.to(out_dtype),
            token_maps=token_maps,
            method=self.method,
        )

    # ----------------------------------------------------------------------------------------
    # Internals

    def _settings(self) -> Settings:
        if self.include_biases:
            mode = BiasMode.RULE
        else:
            mode = BiasMode.ADD if self.method == "fast" else BiasMode.PIECE
        return Settings(
            bias_mode=mode,
            bias_rule=self.bias_decomposition,
            include_ffn=self.include_ffn,
            ffn_approximation=self.ffn_approximation,
            head_approximation=self.head_approximation,
        )

    def _compute_dtype(self) -> torch.dtype:
        parameter = next(self.model.parameters(), None)
        return torch.float64 if parameter is not None and parameter.dtype == torch.float64 else torch.float32

    @staticmethod
    def _extra_args(additional_forward_args: Any) -> tuple:
        if additional_forward_args is None:
            return ()
        if isinstance(additional_forward_args, tuple):
            return additional_forward_args
        return (additional_forward_args,)

    def _input_ids(self, inputs: Union[Tensor, tuple[Tensor]]) -> tuple[Tensor, bool]:
        inputs, as_tuple = validation.unpack_inputs(inputs)
        if self.adapter.input_kind == "pixels":
            if inputs.dim() != 4 or not inputs.dtype.is_floating_point:
                raise ValueError(
                    f"{self.adapter.name} models take pixel_values of shape (batch, channels, height, "
                    f"width) as floats; got {tuple(inputs.shape)} {inputs.dtype}."
                )
            return inputs, as_tuple
        validation.check_token_inputs(inputs, self.model, self.forward_func)
        return inputs, as_tuple

    def _targets(self, target: TargetType, logits: Tensor) -> Tensor:
        batch, classes = logits.shape
        labels = validation.class_labels(self.model, classes)
        return validation.check_targets(target, batch, classes, logits.device, labels)

    def _capture(self, input_ids: Tensor, additional_forward_args: Any) -> Captured:
        validation.check_model(self.model)
        args = self._extra_args(additional_forward_args)
        validation.check_attention_mask(self.forward_func, self.model, input_ids, args)
        with torch.no_grad(), capture_internals(self.model, self.adapter) as capture:
            output = self.forward_func(input_ids, *args)
            logits = _logits_of(output)
            validation.check_batch_rows(logits, input_ids.shape[0])
            validation.warn_if_not_logits(logits)
            return capture.result(output, logits.detach())

    def _parts(self):
        return decomposition.resolve_parts(self.model, self.adapter, self._compute_dtype())

    def _pooling(self, captured: Captured) -> Tensor:
        return decomposition.pool_weights(self.adapter, decomposition.padding_mask(captured), self._compute_dtype())

    def _exact(self, captured: Captured, *, show_progress: bool, token_maps: bool = False):
        settings = self._settings()
        if settings.bias_mode is BiasMode.ADD:  # token maps asked of a fast-path object
            settings = Settings(BiasMode.PIECE, settings.bias_rule, settings.include_ffn, settings.ffn_approximation, settings.head_approximation)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=captured.logits.shape[0], desc="DecompX", unit="example")
        try:
            return decomposition.exact(
                captured,
                self._parts(),
                settings,
                self._pooling(captured),
                include_head=self.include_head,
                max_memory=self.max_memory,
                dtype=self._compute_dtype(),
                token_maps=token_maps,
                progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()

    def _fast(self, input_ids: Tensor, additional_forward_args: Any, *, target: Any = _ALL_CLASSES) -> "_FastRun":
        """The fast path: one frozen forward pass of the real model, then one backward pass for
        the ``target`` classes (all classes by default; ignored without the head)."""
        validation.check_model(self.model)
        args = self._extra_args(additional_forward_args)
        validation.check_attention_mask(self.forward_func, self.model, input_ids, args)
        with freezing.frozen_forward(self.model, self.adapter, self._settings()) as frozen:
            logits = _logits_of(self.forward_func(input_ids, *args))
            validation.check_batch_rows(logits, input_ids.shape[0])
            validation.warn_if_not_logits(logits.detach())
        real = frozen.real_tokens
        if real is None:
            raise RuntimeError(
                "The fast path saw no attention computed in the first layer's attention module, so it "
                "cannot tell the padding from the tokens. Check the adapter's attention path."
            )
        classes = None
        if self.include_head and target is not _ALL_CLASSES:
            classes = self._targets(target, logits.detach())
        dtype = self._compute_dtype()
        pooling = decomposition.pool_weights(self.adapter, real, dtype)
        result = decomposition.fast(frozen, logits, pooling, include_head=self.include_head, dtype=dtype, classes=classes)
        return _FastRun(logits.detach(), classes, real, result)

    def _decompose_fast(self, input_ids: Tensor, additional_forward_args: Any, return_token_maps: bool, show_progress: bool) -> DecompXOutput:
        token_maps = None
        if return_token_maps:  # the maps are the exact propagation's
            captured = self._capture(input_ids, additional_forward_args)
            token_maps = self._exact(captured, show_progress=show_progress, token_maps=True).token_maps
        run = self._fast(input_ids, additional_forward_args)
        logits = run.logits
        if self.include_head:
            attributions = self._zero_padding(run.result.contributions, run.real_tokens)
            assert run.result.outputs is not None
            # The frozen network's logits minus the token shares: what its biases carry.
            bias: Optional[Tensor] = (run.result.outputs - attributions.sum(1)).to(logits.dtype)
            pooled = None
        else:
            pooled = run.result.contributions
            attributions = self._zero_padding(torch.linalg.vector_norm(pooled, dim=-1), run.real_tokens)
            bias = None
        return DecompXOutput(
            logits=logits,
            attributions=attributions.to(logits.dtype),
            bias=bias,
            pooled=None if pooled is None else pooled.to(logits.dtype),
            token_maps=token_maps,
            method=self.method,
        )

    def _pooled_norms(self, captured: Captured, *, show_progress: bool) -> Tensor:
        pooled = self._exact(captured, show_progress=show_progress).pooled
        return torch.linalg.vector_norm(pooled, dim=-1)

    @staticmethod
    def _zero_padding(scores: Tensor, captured: Union[Captured, Tensor]) -> Tensor:
        real = captured if isinstance(captured, Tensor) else decomposition.padding_mask(captured)
        shape = real.shape + (1,) * (scores.dim() - 2)
        return scores * real.view(shape).to(scores.dtype)
