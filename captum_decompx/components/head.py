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
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..adapters.base import Activation, HeadStep, Linear, Norm, TiedLinear, resolve
from ..recording import Reader, Recorder
from .activations import ActivationFunctionAt, activation
from .linear import Affine, LinearMap, linear
from .norms import Normalization, NormParams, normalize
from .pieces import Settings
from .registry import Registry


class HeadStepKind(abc.ABC):
    """One kind of head step. ``steps`` is the adapter's whole head, ``index`` this step's place.

    Attributes:
        reads_input: the step needs its real input from the forward pass (:meth:`read`).
    """

    reads_input: bool = False

    def install(self, recorder: Recorder, model: nn.Module, steps: Sequence[HeadStep], index: int) -> None:  # noqa: B027
        """Add the hooks that record this step's real input (nothing by default)."""

    def read(self, reader: Reader, model: nn.Module, steps: Sequence[HeadStep], index: int) -> Optional[Tensor]:
        """This step's real input (batch, dim), or None when the step does not need it."""
        return None

    @abc.abstractmethod
    def resolve(self, model: nn.Module, step: HeadStep, dtype: torch.dtype) -> Any:
        """The step's parameters."""

    @abc.abstractmethod
    def propagate(self, pieces: Tensor, params: Any, real_input: Optional[Tensor], settings: Settings) -> Tensor:
        """pieces (batch, 1, pieces, dim) -> (batch, 1, pieces, out); ``real_input`` (batch, 1, dim)."""


class LinearStep(HeadStepKind):
    def resolve(self, model, step, dtype) -> Affine:
        return LinearMap.at(step.path).resolve(model, dtype)

    def propagate(self, pieces, params, real_input, settings):
        return linear(pieces, params, settings)


class TiedLinearStep(HeadStepKind):
    """A linear map whose weight is another module's (a tied embedding) and whose bias is a bare parameter."""

    def resolve(self, model, step, dtype) -> Affine:
        weight = resolve(model, step.path).weight.detach().to(dtype)
        bias = None if step.bias is None else resolve(model, step.bias).detach().to(dtype)
        return Affine(weight, bias)

    def propagate(self, pieces, params, real_input, settings):
        return linear(pieces, params, settings)


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

    def resolve(self, model, step, dtype) -> Optional[NormParams]:
        return Normalization(step.path).resolve(model, dtype)

    def propagate(self, pieces, params, real_input, settings):
        return normalize(pieces, real_input, params, settings)


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
class Head:
    """The adapter's head steps, with their kinds."""

    steps: tuple[HeadStep, ...]

    def install(self, recorder: Recorder, model: nn.Module) -> None:
        for index, step in enumerate(self.steps):
            head_step_kind(step).install(recorder, model, self.steps, index)

    def read(self, reader: Reader, model: nn.Module) -> dict[int, Tensor]:
        """Per step index, the real input (batch, dim) of the steps that need it."""
        inputs = {}
        for index, step in enumerate(self.steps):
            kind = head_step_kind(step)
            if kind.reads_input:
                real_input = kind.read(reader, model, self.steps, index)
                assert real_input is not None, f"{type(kind).__name__}.read returned nothing"
                inputs[index] = real_input
        return inputs

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
