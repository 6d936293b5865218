"""The Captum plumbing shared by every attribution that reads a hooked forward pass.

:class:`HookedModelAttribution` is the base of :class:`~captum_decompx.DecompX` and of the
baselines :class:`~captum_decompx.GlobEnc` and :class:`~captum_decompx.ALTI`. It owns what they
have in common and nothing of their math:

- the constructor: the forward function, the model whose modules are hooked (the forward function
  itself when it is the model), and the architecture adapter;
- the arguments: Captum's ``inputs`` (a tensor or a 1-tuple), ``additional_forward_args``;
- the checks that run before any work (inputs, model mode, attention mask; see
  :mod:`captum_decompx.core.validation`);
- the grad and precision modes: a call works under ``torch.no_grad()`` and
  ``torch.inference_mode()``, and the decomposition never runs under ``torch.autocast`` (the
  forward pass that is explained does);
- the one capture of the forward pass (:meth:`HookedModelAttribution._capture_forward`).
"""

from __future__ import annotations

import functools
import threading
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar, Union, cast

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from ..adapters import Adapter, adapter_for, task_of
from ..adapters.wrappers import unwrap_for_decompx
from . import validation
from .capture import Captured, capture_internals
from .decomposition import pooling_of
from .forward_contract import ModelOutputTap, decomposed_model_output, model_output_tensor, tap_model_output

F = TypeVar("F", bound=Callable[..., Any])

#: Captum's ``inputs`` as every attribution here takes them: one tensor (input ids, embeddings or
#: pixels), or a 1-tuple of it; an encoder-decoder's ``(source_ids, target_ids)`` pair. The scores
#: come back in the same form (a pair for an encoder-decoder: source, target prefix).
Inputs = Union[Tensor, tuple[Tensor, ...]]

#: The device types whose autocast state a call saves, turns off for the decomposition and turns
#: back on for the forward pass.
AUTOCAST_DEVICES = ("cpu", "cuda")

_CALL_STATE = threading.local()


def captum_entry_point(method: F) -> F:
    """Mark a public ``attribute`` the way Captum's own are: the wrapper has ``__wrapped__``,
    which Captum's wrappers (``NoiseTunnel``) call to skip Captum's usage logging."""

    @functools.wraps(method)
    def entry(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return cast(F, entry)


def in_call_modes(method: F) -> F:
    """Run a public method of a :class:`HookedModelAttribution` inside its ``_call_modes()``."""

    @functools.wraps(method)
    def call(self: "HookedModelAttribution", *args: Any, **kwargs: Any) -> Any:
        with self._call_modes():
            return method(self, *args, **kwargs)

    return cast(F, call)


def _outside_inference_mode(value: Any) -> Any:
    """A tensor made under ``torch.inference_mode()`` cannot take part in autograd: clone it."""
    if isinstance(value, Tensor) and value.is_inference():
        with torch.inference_mode(False):
            return value.clone()
    return value


@dataclass
class ForwardCapture:
    """One captured run of the forward function.

    Attributes:
        captured: the internals; ``captured.logits`` is the model's output at the pooled
            position, (batch, classes), detached.
        output: what the forward function returned.
        model_output: the model's own output as the forward function received it, (batch,
            classes) or (batch, seq, classes): a leaf that the forward function's output depends
            on through autograd (None without ``tap``, or when the model returned no tensor).
        pooling: (batch, seq) float32 weights of the pooled position.
        per_position: the adapter's head is applied at every position (``pooling="each"``):
            ``captured.logits`` is then the model's output at every position, (batch, seq, classes).
        choices: for a multiple-choice model given ids (batch, choices, seq), the number of
            choices: the captured examples are then the batch * choices flattened sequences and
            ``captured.logits`` is (batch * choices, 1). None otherwise.
    """

    captured: Captured
    output: Any
    model_output: Optional[Tensor]
    pooling: Tensor
    per_position: bool = False
    choices: Optional[int] = None


class HookedModelAttribution(Attribution):
    """A Captum attribution computed from one hooked forward pass of a Hugging Face model.

    Args:
        forward_func: the model, or any callable ``forward_func(inputs, *additional_forward_args)``
            that runs it.
        model: the model whose modules are hooked; defaults to ``forward_func`` when that is an
            ``nn.Module``.
        adapter: the architecture adapter; looked up by ``model.config.model_type`` when omitted.

    A subclass states its Captum contract in ``_scores_multiply_inputs`` and ``_gives_convergence_delta``,
    and refuses adapters it does not define its scores for in :meth:`_check_adapter`.
    """

    #: Captum's ``multiplies_by_inputs``: the scores are contributions of the inputs themselves.
    _scores_multiply_inputs: bool = False
    #: Captum's ``has_convergence_delta``: ``compute_convergence_delta`` is defined.
    _gives_convergence_delta: bool = False

    def __init__(
        self,
        forward_func: Callable[..., Any],
        model: Optional[nn.Module] = None,
        *,
        adapter: Optional[Adapter] = None,
    ) -> None:
        name = type(self).__name__
        # A model wrapped in DistributedDataParallel / nn.DataParallel: its module is explained.
        forward_func, model = unwrap_for_decompx(forward_func, model)
        if model is None:
            if not isinstance(forward_func, nn.Module):
                raise ValueError(
                    f"{name} hooks a model's modules: pass the model as `model=` when forward_func is "
                    f"not itself the model, e.g. {name}(forward_func, model=model)."
                )
            model = forward_func
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}.")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        super().__init__(forward_func)
        self.model = model
        self._adapter = adapter if adapter is not None else adapter_for(model)
        validation.warn_if_newly_initialized(model, name)
        self._check_adapter()

    @property
    def adapter(self) -> Adapter:
        """The architecture adapter; during a call on a two-tower model (CLIP, SigLIP), the one of
        the tower that takes the call's inputs (:meth:`Adapter.for_inputs`)."""
        chosen = (getattr(_CALL_STATE, "sides", None) or {}).get(id(self))
        return chosen if chosen is not None else self._adapter

    @adapter.setter
    def adapter(self, value: Adapter) -> None:
        self._adapter = value

    def _check_adapter(self) -> None:
        """Refuse, with what to use instead, an adapter this attribution is not defined for (here: none)."""

    # ----------------------------------------------------------------------------------------
    # Captum contract

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._scores_multiply_inputs

    def has_convergence_delta(self) -> bool:
        return self._gives_convergence_delta

    # ----------------------------------------------------------------------------------------
    # Arguments

    def _compute_dtype(self) -> torch.dtype:
        """float64 for a float64 model, else float32 (never lower: half models decompose in float32)."""
        parameter = next(self.model.parameters(), None)
        return torch.float64 if parameter is not None and parameter.dtype == torch.float64 else torch.float32

    @staticmethod
    def _extra_args(additional_forward_args: Any) -> tuple:
        if additional_forward_args is None:
            return ()
        if not isinstance(additional_forward_args, tuple):
            additional_forward_args = (additional_forward_args,)
        return tuple(_outside_inference_mode(arg) for arg in additional_forward_args)

    def _input_ids(self, inputs: Inputs) -> tuple[Tensor, bool]:
        """The checked input tensor (token ids, embeddings or pixels) and whether it came as a 1-tuple."""
        tensor, as_tuple = validation.unpack_inputs(inputs)
        side = self._adapter.for_inputs(tensor)
        if side is not self._adapter and getattr(_CALL_STATE, "sides", None) is not None:
            _CALL_STATE.sides[id(self)] = side  # the other tower of a two-tower model, for this call
        if self.adapter.input_kind == "pixels":
            validation.check_pixel_inputs(
                tensor,
                self.adapter.name,
                self.model,
                fixed_size=self.adapter.fixed_image_size,
                forward_is_model=validation.is_the_model_itself(self.forward_func, self.model),
            )
        elif self._multiple_choice_ids(tensor):
            # (batch, choices, seq): the model runs the batch * choices sequences as one batch.
            validation.check_token_inputs(tensor.flatten(0, 1), self.model, self.forward_func)
        else:
            validation.check_token_inputs(tensor, self.model, self.forward_func)
        return _outside_inference_mode(tensor), as_tuple

    def _multiple_choice_ids(self, tensor: Tensor) -> bool:
        """Integer ids (batch, choices, seq) for a multiple-choice model."""
        return tensor.dim() == 3 and not tensor.dtype.is_floating_point and task_of(self.model) == "multiple choice"

    # ----------------------------------------------------------------------------------------
    # Grad and precision modes

    @contextmanager
    def _call_modes(self) -> Iterator[None]:
        """Run a public call outside inference mode and autocast, remembering the caller's autocast
        for the forward pass (:meth:`_forward_precision`)."""
        saved = [(device, torch.get_autocast_dtype(device)) for device in AUTOCAST_DEVICES if torch.is_autocast_enabled(device)]
        outer = getattr(_CALL_STATE, "autocast", None)
        _CALL_STATE.autocast = saved if outer is None else outer
        outer_sides = getattr(_CALL_STATE, "sides", None)
        _CALL_STATE.sides = dict(outer_sides or {})  # the tower a call chose is forgotten when it ends
        try:
            with ExitStack() as stack:
                stack.enter_context(torch.inference_mode(False))
                for device, _ in saved:
                    stack.enter_context(torch.autocast(device_type=device, enabled=False))
                yield
        finally:
            _CALL_STATE.autocast = outer
            _CALL_STATE.sides = outer_sides

    @contextmanager
    def _forward_precision(self) -> Iterator[None]:
        """The caller's autocast, back on for the forward pass being explained (with a warning)."""
        saved = getattr(_CALL_STATE, "autocast", None) or []
        with ExitStack() as stack:
            for device, dtype in saved:
                stack.enter_context(torch.autocast(device_type=device, dtype=dtype))
            yield
        for device, dtype in saved:
            warnings.warn(
                f"The forward pass ran under torch.autocast({device!r}, dtype={dtype}). "
                f"{type(self).__name__} decomposes it in {self._compute_dtype()} (autocast is off for "
                f"the decomposition), from the activations the autocast pass produced; the "
                f"attributions sum to the logits of that pass only to within {dtype} precision. "
                "Run the model outside autocast for an exact decomposition.",
                UserWarning,
                stacklevel=5,
            )

    # ----------------------------------------------------------------------------------------
    # The forward pass

    def _pool_weights(self, captured: Captured) -> Tensor:
        return pooling_of(captured, self.adapter, torch.float32)

    def _capture_forward(self, input_ids: Tensor, additional_forward_args: Any, *, tap: bool = True) -> ForwardCapture:
        """Check the model and the arguments, then run the forward function once with every hook.

        Args:
            input_ids: checked inputs (see :meth:`_input_ids`).
            tap: also replace the model's output by a leaf that requires grad, so that what the
                forward function does after the model can be read (see
                :mod:`captum_decompx.core.forward_contract`).
        """
        validation.check_model(self.model)
        args = self._extra_args(additional_forward_args)
        validation.check_positional_arguments(self.forward_func, self.model, args)
        validation.check_attention_mask(self.forward_func, self.model, input_ids, args)
        captured, output, leaf, met_masked_rows = self._hooked_forward(input_ids, args, tap, zero_masked_rows=True)
        if met_masked_rows:
            captured, output, leaf = self._as_the_model_runs(input_ids, args, tap, (captured, output, leaf))
        pooling = self._pool_weights(captured)
        each = self.adapter.pooling == "each"
        # captured.logits: the model's output, or its logits before a soft-cap (Capture.result)
        covered, choices = decomposed_model_output(captured.logits, pooling, each=each, adapter_name=self.adapter.name)
        captured.logits = covered.detach()
        parameter = next(self.model.parameters(), None)
        if getattr(_CALL_STATE, "autocast", None) and parameter is not None and parameter.dtype.is_floating_point:
            # Results in the model's own dtype, not in the lower precision of the autocast pass.
            captured.logits = captured.logits.to(torch.promote_types(captured.logits.dtype, parameter.dtype))
        return ForwardCapture(captured, output, leaf, pooling, per_position=each, choices=choices)

    def _hooked_forward(
        self, input_ids: Tensor, args: tuple, tap: bool, *, zero_masked_rows: bool
    ) -> tuple[Captured, Any, Optional[Tensor], bool]:
        """One forward pass with every hook: the records, the forward function's output, the model
        output's leaf (``tap``), and whether a fused-kernel model's attention met a fully masked row."""
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            capture = stack.enter_context(capture_internals(self.model, self.adapter, zero_masked_rows=zero_masked_rows))
            span_tuple = task_of(self.model) == "question answering"
            model_tap = (
                stack.enter_context(tap_model_output(self.model, span_tuple=span_tuple, field=self.adapter.output_field))
                if tap
                else ModelOutputTap()
            )
            model_ids = stack.enter_context(validation.recording_model_ids(self.model))
            with self._forward_precision():
                output = self.forward_func(input_ids, *args)
            validation.check_model_received_the_inputs(input_ids, model_ids)
            raw = model_tap.leaf if model_tap.leaf is not None else model_output_tensor(output)
            if raw is None:
                raw = torch.zeros(input_ids.shape[0], 0, device=input_ids.device)
            captured = capture.result(output, raw.detach())
        return captured, output, model_tap.leaf, capture.met_fully_masked_rows

    def _as_the_model_runs(
        self, input_ids: Tensor, args: tuple, tap: bool, zeroed: tuple[Captured, Any, Optional[Tensor]]
    ) -> tuple[Captured, Any, Optional[Tensor]]:
        """The captured pass that gives the model's own output where a fully masked query row met a
        fused kernel: whether the kernel zeroes that row or spreads it evenly depends on the mask
        Transformers builds for it, so both are compared with the forward function run as the model
        is (its own attention implementation, no hooks). Refuses when neither matches."""
        with torch.no_grad(), self._forward_precision():
            own = model_output_tensor(self.forward_func(input_ids, *args))
        if own is None:
            return zeroed

        def distance(output: Any) -> float:
            captured_output = model_output_tensor(output)
            if captured_output is None or captured_output.shape != own.shape:
                return float("inf")
            return float((captured_output.detach().double() - own.detach().double()).abs().max())

        tolerance = _agreement(own)
        zeroed_distance = distance(zeroed[1])
        if zeroed_distance <= tolerance:
            return zeroed
        spread_captured, spread_output, spread_leaf, _ = self._hooked_forward(input_ids, args, tap, zero_masked_rows=False)
        spread = (spread_captured, spread_output, spread_leaf)
        spread_distance = distance(spread_output)
        best = (zeroed_distance, zeroed) if zeroed_distance <= spread_distance else (spread_distance, spread)
        if best[0] > tolerance:
            raise RuntimeError(
                "DecompX could not reproduce the model's own output: its attention meets query rows whose every key "
                "is masked (padding outside every attention window, or a left-padded row), and neither the fused "
                "kernel's handling of such rows nor eager attention's gives the output the model returns (max "
                f"|difference| {best[0]:.3g}). Load the model with attn_implementation='eager', or pad on the other side."
            )
        return best[1]


def _agreement(output: Tensor) -> float:
    """How far a captured pass may be from the model's own output: a few rounding steps of the output's
    dtype at its scale (eager attention and a fused kernel round differently)."""
    scale = max(1.0, float(output.detach().abs().max())) if output.numel() else 1.0
    epsilon = torch.finfo(output.dtype).eps if output.dtype.is_floating_point else 0.0
    return max(1e-4, 64 * epsilon) * scale


__all__ = ["ForwardCapture", "HookedModelAttribution", "Inputs", "captum_entry_point", "in_call_modes"]
