"""The classification head after pooling: a sequence of steps, each of a registered step kind.

The adapter lists the steps as data (:class:`~captum_decompx.adapters.Linear`,
:class:`~captum_decompx.adapters.Activation`, :class:`~captum_decompx.adapters.Norm`); each step
class maps to one :class:`HeadStepKind` here, which says what the capture records for it, how it
resolves and how the pooled decomposition passes through it. A new step is one data class (a
subclass of :class:`~captum_decompx.adapters.base.HeadStep`) plus one kind given to
:func:`register_head_step`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..adapters.base import Activation, HeadStep, Linear, MeanOfLinears, Norm, ScaledLinear, TiedLinear, resolve, split_block
from ..core.recording import Reader, Recorder, main_input
from .activations import ActivationFunctionAt, activation
from .base import Component
from .linear import Affine, LinearMap, linear
from .norms import Normalization, NormParams, normalize
from .pieces import Settings
from .registry import Registry

if TYPE_CHECKING:
    from ..core.freezing import Freezer


class HeadStepKind(abc.ABC):
    """One kind of head step. ``steps`` is the adapter's whole head, ``index`` this step's place.

    Attributes:
        reads_input: the step needs its real input from the forward pass (:meth:`read`).
        gives_logits: the step can end a head (its output is the logits).
    """

    reads_input: bool = False
    gives_logits: bool = False

    def install(self, recorder: Recorder, model: nn.Module, steps: Sequence[HeadStep], index: int) -> None:  # noqa: B027
        """Add the hooks that record this step's real input (nothing by default)."""

    def read(self, reader: Reader, model: nn.Module, steps: Sequence[HeadStep], index: int) -> Optional[Tensor]:
        """This step's real input (batch, dim), or None when the step does not need it."""
        return None

    def freeze(self, freezer: "Freezer", model: nn.Module, steps: Sequence[HeadStep], index: int) -> None:
        """Add the hooks that freeze this step's nonlinear coefficients for the fast path. A kind
        without a rule is refused when the fast path installs it."""
        raise NotImplementedError(
            f"The head step kind {type(self).__name__} has no rule for the fast path: implement "
            "HeadStepKind.freeze (nothing to do for a linear step), or use algorithm='exact'."
        )

    @abc.abstractmethod
    def resolve(self, model: nn.Module, step: HeadStep, dtype: torch.dtype) -> Any:
        """The step's parameters."""

    @abc.abstractmethod
    def propagate(self, pieces: Tensor, params: Any, real_input: Optional[Tensor], settings: Settings) -> Tensor:
        """pieces (batch, 1, pieces, dim) -> (batch, 1, pieces, out); ``real_input`` (batch, 1, dim)."""


class LinearStep(HeadStepKind):
    gives_logits = True

    def freeze(self, freezer, model, steps, index):
        return None  # linear: the fast path differentiates the real call

    def resolve(self, model, step, dtype) -> Affine:
        return LinearMap.at(step.path).resolve(model, dtype)

    def propagate(self, pieces, params, real_input, settings):
        return linear(pieces, params, settings)


class TiedLinearStep(HeadStepKind):
    """A linear map whose weight is another module's (a tied embedding) and whose bias is a bare parameter."""

    gives_logits = True

    def freeze(self, freezer, model, steps, index):
        return None  # linear: the fast path differentiates the real call

    def resolve(self, model, step, dtype) -> Affine:
        weight = resolve(model, step.path).weight.detach().to(dtype)
        bias = None if step.bias is None else resolve(model, step.bias).detach().to(dtype).reshape(-1)
        return Affine(weight, bias)  # a bias buffer of shape (1, vocab) (BART's final_logits_bias) as (vocab,)

    def propagate(self, pieces, params, real_input, settings):
        return linear(pieces, params, settings)


class ScaledLinearStep(HeadStepKind):
    """A linear map applied to its input times a constant (T5's rescale before a tied LM head):
    the map ``x -> W (scale x) + b``."""

    gives_logits = True

    def freeze(self, freezer, model, steps, index):
        return None  # linear: the fast path differentiates the real call

    def resolve(self, model, step, dtype) -> Affine:
        affine_map = LinearMap.at(step.path).resolve(model, dtype)
        return Affine(affine_map.weight * step.scale, affine_map.bias)

    def propagate(self, pieces, params, real_input, settings):
        return linear(pieces, params, settings)


class MeanOfLinearsStep(HeadStepKind):
    """The mean of linear maps on equal parts of the pooled vector (DeiT's teacher classifier):
    map ``g`` acts on every piece of part ``g`` and its bias is spread over its own output's pieces,
    then the outputs are averaged. Frozen: nothing (linear); the fast path records the parts' real
    inputs, concatenated, as the head's input."""

    gives_logits = True

    def freeze(self, freezer, model, steps, index):
        step = steps[index]
        state, inputs = freezer.state, {}

        def recorder_of(part: int):
            def record_input(_module, args, kwargs):
                inputs.setdefault(part, main_input(args, kwargs, "input"))
                if len(inputs) == len(step.paths) and state.head_input is None:
                    state.head_input = torch.cat([inputs[g] for g in range(len(step.paths))], dim=-1)

            return record_input

        if index == 0:
            for part, path in enumerate(step.paths):
                freezer.recorder.pre_hook(resolve(model, path), f"head input part {part}", recorder_of(part))

    def resolve(self, model, step, dtype) -> list[Affine]:
        return [LinearMap.at(path).resolve(model, dtype) for path in step.paths]

    def propagate(self, pieces, params, real_input, settings):
        parts = pieces.chunk(len(params), dim=-1)
        if any(part.shape[-1] != affine.weight.shape[1] for part, affine in zip(parts, params)):
            raise ValueError(
                f"MeanOfLinears splits a pooled vector of width {pieces.shape[-1]} into {len(params)} equal parts, "
                f"but its maps take inputs of widths {[affine.weight.shape[1] for affine in params]}."
            )
        total = linear(parts[0], params[0], settings)
        for part, affine in zip(parts[1:], params[1:]):
            total = total + linear(part, affine, settings)
        return total / len(params)


def _linear_before(steps: Sequence[HeadStep], index: int) -> Linear:
    for step in reversed(list(steps)[:index]):
        if isinstance(step, Linear):
            return step
    raise ValueError(f"The head activation at step {index} follows no Linear step; its pre-activation is that step's output.")


class ActivationStep(HeadStepKind):
    """Recorded: the output of the closest Linear step before it (the pre-activation)."""

    reads_input = True

    def install(self, recorder, model, steps, index):
        LinearMap.at(_linear_before(steps, index).path).install(recorder, model)

    def read(self, reader, model, steps, index):
        return LinearMap.at(_linear_before(steps, index).path).read(reader, model, f"the head step {index}")

    def freeze(self, freezer, model, steps, index):
        """Frozen between the linear step before it (its input) and the step after it (its output)."""
        previous = [step for step in steps[:index] if isinstance(step, Linear)]
        following = steps[index + 1] if index + 1 < len(steps) else None
        if not previous or not isinstance(following, (Linear, Norm)):
            raise ValueError(
                f"The head activation at step {index} of adapter {freezer.adapter.name!r} must sit between a "
                "Linear step and a Linear or Norm step."
            )
        step = steps[index]
        function = step.function if step.function is not None else resolve(model, str(step.path))
        if isinstance(function, nn.Module):
            function = function.forward  # the slope's evaluation runs no hooks
        freezer.pointwise_between(
            _step_module(model, previous[-1]), _step_module(model, following), freezer.settings.head_approximation, function
        )

    def resolve(self, model, step, dtype):
        return ActivationFunctionAt(step.path, step.function).resolve(model)

    def propagate(self, pieces, params, real_input, settings):
        return activation(pieces, real_input, params, settings.head_approximation, settings)


class NormStep(HeadStepKind):
    """Recorded: the norm's real input."""

    reads_input = True

    def install(self, recorder, model, steps, index):
        Normalization(steps[index].path).install(recorder, model)

    def read(self, reader, model, steps, index):
        step = steps[index]
        return Normalization(step.path).read(reader, model, f"the head's {step.path}")

    def freeze(self, freezer, model, steps, index):
        Normalization(steps[index].path).freeze(freezer, model, first=False)

    def resolve(self, model, step, dtype) -> Optional[NormParams]:
        return Normalization(step.path).resolve(model, dtype)

    def propagate(self, pieces, params, real_input, settings):
        return normalize(pieces, real_input, params, settings)


def _step_module(model: nn.Module, step: HeadStep) -> nn.Module:
    """The module a Linear or Norm step names (the whole module of a block ``[i/n]``)."""
    return resolve(model, split_block(getattr(step, "path"))[0])  # noqa: B009 (Linear and Norm steps have a path)


_HEAD_STEP_KINDS: Registry[HeadStepKind] = Registry("head step kind")


def register_head_step(step_class: type, kind: HeadStepKind, *, overwrite: bool = False) -> None:
    """Make adapters accept ``step_class`` (a :class:`HeadStep` subclass) as a head step of ``kind``.

    Args:
        overwrite: replace the kind registered before for ``step_class``.
    """
    if not (isinstance(step_class, type) and issubclass(step_class, HeadStep)):
        raise TypeError(f"step_class must be a subclass of captum_decompx.adapters.base.HeadStep, got {step_class!r}.")
    _HEAD_STEP_KINDS.register(step_class, kind, overwrite=overwrite)


def unregister_head_step(step_class: type) -> None:
    """Remove the kind registered with :func:`register_head_step` for ``step_class``."""
    _HEAD_STEP_KINDS.unregister(step_class)


register_head_step(Linear, LinearStep())
register_head_step(Activation, ActivationStep())
register_head_step(Norm, NormStep())
register_head_step(TiedLinear, TiedLinearStep())
register_head_step(MeanOfLinears, MeanOfLinearsStep())
register_head_step(ScaledLinear, ScaledLinearStep())


def head_step_kind(step: HeadStep) -> HeadStepKind:
    """The kind registered for ``step``'s class."""
    kind = _HEAD_STEP_KINDS.find(type(step))
    if kind is None:
        raise TypeError(f"No head step kind is registered for {type(step).__name__}; see register_head_step.")
    return kind


@dataclass(frozen=True)
class ResolvedHeadStep:
    """A head step's kind and parameters."""

    kind: HeadStepKind
    params: Any


@dataclass(frozen=True)
class Head(Component):
    """The adapter's head steps, with their kinds.

    Attributes:
        logit_softcap: the model soft-caps its logits (``cap * tanh(z / cap)``): both paths also
            record ``z``, the output of the last step (a Linear), which is what they explain.
    """

    steps: tuple[HeadStep, ...]
    logit_softcap: bool = False

    def install(self, recorder: Recorder, model: nn.Module) -> None:
        for index, step in enumerate(self.steps):
            head_step_kind(step).install(recorder, model, self.steps, index)
        if self.logit_softcap:
            recorder.record_output(self._uncapped_module(model), "uncapped logits")

    def read(self, reader: Reader, model: nn.Module, where: str = "the head") -> dict[int, Tensor]:
        """Per step index, the real input (batch, dim) of the steps that need it."""
        inputs = {}
        for index, step in enumerate(self.steps):
            kind = head_step_kind(step)
            if kind.reads_input:
                real_input = kind.read(reader, model, self.steps, index)
                assert real_input is not None, f"{type(kind).__name__}.read returned nothing"
                inputs[index] = real_input
        return inputs

    def uncapped_logits(self, reader: Reader, model: nn.Module) -> Optional[list[Tensor]]:
        """Every recorded output ``z`` of a soft-capped head's last step; None without a cap."""
        return reader.recorder.calls(self._uncapped_module(model), "uncapped logits") if self.logit_softcap else None

    def _uncapped_module(self, model: nn.Module) -> nn.Module:
        last = self.steps[-1] if self.steps else None
        if not isinstance(last, Linear):
            raise ValueError("A model that soft-caps its logits must end its adapter's head in a Linear step.")
        return _step_module(model, last)

    def freeze(self, freezer: "Freezer", model: nn.Module, *, first: bool) -> None:
        """Record the head's input (read without the head) and, for a model that soft-caps its
        logits, the last linear map's output (the logits before the cap); freeze each step."""
        if not self.steps:  # a bare encoder: its hidden states are the output
            return
        state = freezer.state
        if isinstance(self.steps[0], (Linear, Norm)):

            def record_input(_module, args, kwargs):
                if state.head_input is None:
                    state.head_input = main_input(args, kwargs, "input")

            freezer.recorder.pre_hook(_step_module(model, self.steps[0]), "head input", record_input)
        if self.logit_softcap:

            def record_output(_module, _args, output):
                if state.head_output is None:
                    state.head_output = output

            freezer.recorder.forward_hook(self._uncapped_module(model), "uncapped logits", record_output)
        for index, step in enumerate(self.steps):
            head_step_kind(step).freeze(freezer, model, self.steps, index)

    def resolve(self, model: nn.Module, dtype: torch.dtype) -> list[ResolvedHeadStep]:
        return [ResolvedHeadStep(head_step_kind(step), head_step_kind(step).resolve(model, step, dtype)) for step in self.steps]


def propagate_head(
    pooled: Tensor, steps: Sequence[ResolvedHeadStep], step_inputs: Sequence[Optional[Tensor]], settings: Settings
) -> Tensor:
    """Propagate the pooled decomposition through the head.

    Args:
        pooled: (batch, pieces, dim).
        step_inputs: for each step, its real input (batch, dim), or None.

    Returns:
        (batch, pieces, classes).
    """
    pieces = pooled.unsqueeze(1)
    for step, real_input in zip(steps, step_inputs):
        pieces = step.kind.propagate(pieces, step.params, None if real_input is None else real_input.unsqueeze(1), settings)
    return pieces.squeeze(1)


def propagate_head_rows(
    pieces: Tensor, steps: Sequence[ResolvedHeadStep], step_inputs: Sequence[Optional[Tensor]], settings: Settings
) -> Tensor:
    """Propagate a decomposition of several rows through the head, each row with its own frozen
    nonlinearities (a head applied at every position: question answering, token classification,
    masked LM).

    Args:
        pieces: (batch, rows, pieces, dim).
        step_inputs: for each step, its real input (batch, rows, dim) at these rows, or None.

    Returns:
        (batch, rows, pieces, classes); an empty head returns ``pieces``.
    """
    for step, real_input in zip(steps, step_inputs):
        pieces = step.kind.propagate(pieces, step.params, real_input, settings)
    return pieces


def as_resolved_step(step: Any) -> ResolvedHeadStep:
    """A resolved step from bare parameters: an :class:`Affine`, :class:`NormParams` or a function."""
    if isinstance(step, ResolvedHeadStep):
        return step
    if isinstance(step, Affine):
        return ResolvedHeadStep(_HEAD_STEP_KINDS[Linear], step)
    if isinstance(step, NormParams):
        return ResolvedHeadStep(_HEAD_STEP_KINDS[Norm], step)
    return ResolvedHeadStep(_HEAD_STEP_KINDS[Activation], step)


def head(pooled: Tensor, steps: Sequence[Any], step_inputs: Sequence[Optional[Tensor]], settings: Settings) -> Tensor:
    """:func:`propagate_head` on bare parameters (see :func:`as_resolved_step`)."""
    return propagate_head(pooled, [as_resolved_step(step) for step in steps], step_inputs, settings)
