"""Pointwise activations frozen at their real pre-activation, by a registered approximation.

``"zo"`` (zero-origin, the paper's): ``theta = f(a) / (a + 1e-12)`` scales every piece; where
``a == 0`` exactly, ``theta = f'(0)``, its limit (see :func:`slope_at_origin`).
``"la"`` (linear approximation): the tangent line at ``a``; its intercept is a bias.
``"relu"``: pieces pass where ``a > 0``.

A new approximation is one :class:`Approximation` passed to :func:`register_approximation`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from ..adapters.base import resolve
from .pieces import Settings, add_bias
from .registry import Names, Registry

ZERO_ORIGIN_EPS = 1e-12

ActivationFunction = Callable[[Tensor], Tensor]


class Approximation(abc.ABC):
    """How a pointwise nonlinearity is replaced by a map that is linear in the pieces.

    Attributes:
        in_head: whether it may be chosen for the classification head's activation.
    """

    in_head: bool = True

    @abc.abstractmethod
    def propagate(
        self, pieces: Tensor, pre_activation: Tensor, function: ActivationFunction, settings: Settings, *, inplace: bool
    ) -> Tensor:
        """Pieces (batch, rows, pieces, dim) through ``function`` frozen at ``pre_activation``
        (batch, rows, dim); ``inplace`` allows overwriting ``pieces``."""

    def frozen_slope(
        self, function: ActivationFunction, pre_activation: Tensor, value: Tensor
    ) -> tuple[Tensor, Optional[Tensor]]:
        """The fast path's freezing rule (:mod:`captum_decompx.core.freezing`): the coefficient of the
        pre-activation that the one frozen forward pass differentiates through, and what the
        approximation leaves out of the decomposition (None when nothing).

        Args:
            pre_activation: (..., dim), the real pre-activation, detached.
            value: (..., dim), the activation's real output, detached.
        """
        raise NotImplementedError(
            f"The approximation {type(self).__name__} has no rule for the fast path: implement "
            "Approximation.frozen_slope, or use algorithm='exact'."
        )

    @property
    def has_frozen_slope(self) -> bool:
        """Whether the class defines :meth:`frozen_slope` (the fast path needs it)."""
        return type(self).frozen_slope is not Approximation.frozen_slope


def slope_at_origin(function: ActivationFunction, like: Tensor) -> Tensor:
    """``f'(0)``, read by autograd, as a 0-dim tensor of ``like``'s dtype and device.

    For an ``f`` with ``f(0) = 0`` it is the limit of ``f(a) / a`` at 0: 0.5 for GELU (exact or
    tanh approximation), SiLU and quick GELU, 1 for tanh. Where ``f`` has a kink at 0 it is
    autograd's derivative there, the left limit for the ReLU family: 0 for ReLU and ReLU6, the
    negative slope for a leaky ReLU.
    """
    with torch.enable_grad():
        origin = torch.zeros(1, dtype=like.dtype, device=like.device, requires_grad=True)
        try:
            (slope,) = torch.autograd.grad(function(origin).sum(), origin)
        except RuntimeError as error:
            raise ValueError(
                f"The zero-origin slope where the pre-activation is exactly 0 is f'(0), read by autograd, and "
                f"the activation {function!r} cannot be differentiated there ({error}). Use an activation "
                "autograd can differentiate, or another approximation (ffn_approximation='la' or 'relu')."
            ) from None
    return slope.detach().reshape(())


def zero_origin_slope(function: ActivationFunction, pre_activation: Tensor, value: Tensor) -> Tensor:
    """``theta = f(a) / (a + 1e-12)``, and ``f'(0)`` where ``a == 0`` exactly.

    At ``a == 0`` every slope keeps the sum (the pieces add up to 0), but ``f(a) / (a + 1e-12)``
    is 0 there and about ``f'(0)`` at the rounding residuals next to it, so two computations of the
    same pre-activation (eager and sdpa attention, other padded shapes) could freeze the unit at
    different slopes. Its limit does not jump.

    Args:
        pre_activation: (..., dim), the real pre-activation ``a``.
        value: (..., dim), ``f(a)``.
    """
    theta = value / (pre_activation + ZERO_ORIGIN_EPS)
    if int(torch.count_nonzero(pre_activation)) == pre_activation.numel():
        return theta  # the usual case; a mask over every element would cost several times the division
    return theta.masked_fill(pre_activation == 0, slope_at_origin(function, theta))


class ZeroOrigin(Approximation):
    def propagate(self, pieces, pre_activation, function, settings, *, inplace):
        a = pre_activation
        theta = zero_origin_slope(function, a, function(a)).unsqueeze(-2)
        return pieces.mul_(theta) if inplace and not pieces.requires_grad else pieces * theta

    def frozen_slope(self, function, pre_activation, value):
        return zero_origin_slope(function, pre_activation, value), None


class TangentLine(Approximation):
    def propagate(self, pieces, pre_activation, function, settings, *, inplace):
        a = pre_activation
        with torch.enable_grad():
            point = a.detach().requires_grad_(True)
            value = function(point)
            (slope,) = torch.autograd.grad(value.sum(), point)
        intercept = value.detach() - slope * a
        return add_bias(pieces * slope.unsqueeze(-2), intercept, settings)

    def frozen_slope(self, function, pre_activation, value):
        with torch.enable_grad():  # the intercept is a bias: the fast path's bias share carries it
            point = pre_activation.clone().requires_grad_(True)
            (slope,) = torch.autograd.grad(function(point).sum(), point)
        return slope, None


class ReLUGate(Approximation):
    in_head = False

    def propagate(self, pieces, pre_activation, function, settings, *, inplace):
        return pieces * (pre_activation > 0).to(pieces.dtype).unsqueeze(-2)

    def frozen_slope(self, function, pre_activation, value):
        slope = (pre_activation > 0).to(value.dtype)
        return slope, value - pre_activation * slope  # f(a) - a * (a > 0) is left out


_APPROXIMATIONS: Registry[Approximation] = Registry("approximation")
FFN_APPROXIMATIONS = Names(_APPROXIMATIONS)
"""The names valid as ``ffn_approximation`` (a live view)."""
HEAD_APPROXIMATIONS = Names(_APPROXIMATIONS, keep=lambda approximation: approximation.in_head)
"""The names valid as ``head_approximation`` (a live view)."""


def register_approximation(name: str, approximation: Approximation, *, overwrite: bool = False) -> None:
    """Make ``name`` a valid ``ffn_approximation`` (and ``head_approximation`` if ``in_head``).

    Args:
        overwrite: replace an approximation registered before under ``name``.
    """
    if not isinstance(approximation, Approximation):
        raise TypeError(f"approximation must be an Approximation, got {approximation!r}.")
    _APPROXIMATIONS.register(name, approximation, overwrite=overwrite)


def unregister_approximation(name: str) -> None:
    """Remove an approximation registered with :func:`register_approximation`."""
    _APPROXIMATIONS.unregister(name)


approximation = _APPROXIMATIONS.get
"""``approximation(name)``: the approximation registered as ``name`` (a ValueError naming the registered ones)."""


def check_fast_path_rule(option: str, name: str) -> None:
    """Refuse, before any forward pass, an approximation the fast path cannot freeze.

    Args:
        option: the option that chose it (``"ffn_approximation"``, ``"head_approximation"``).
        name: its registered name.
    """
    chosen = _APPROXIMATIONS.get(name)
    if not chosen.has_frozen_slope:
        raise ValueError(
            f"{option}={name!r} cannot run on the fast path: its approximation {type(chosen).__name__} does not "
            "define Approximation.frozen_slope (the slope the one frozen forward pass differentiates through). "
            "Implement frozen_slope, or use algorithm='exact' (or include_biases=True with algorithm='auto')."
        )


register_approximation("zo", ZeroOrigin())
register_approximation("la", TangentLine())
register_approximation("relu", ReLUGate())


def activation(
    pieces: Tensor,
    pre_activation: Tensor,
    function: ActivationFunction,
    approximation: Union[str, Approximation],
    settings: Settings,
    *,
    inplace: bool = False,
) -> Tensor:
    """A pointwise nonlinearity frozen at the real pre-activation.

    Args:
        pieces: (batch, rows, pieces, dim).
        pre_activation: (batch, rows, dim), the real input of the nonlinearity.
        approximation: a registered name or an :class:`Approximation`.
        inplace: the approximation may overwrite ``pieces`` (a temporary of the caller's).
    """
    if not isinstance(approximation, Approximation):
        approximation = _APPROXIMATIONS.get(approximation)
    return approximation.propagate(pieces, pre_activation, function, settings, inplace=inplace)


class _FrozenSlope(torch.autograd.Function):
    """Returns ``value`` (the real output); the gradient to ``pre_activation`` is ``grad * slope``."""

    @staticmethod
    def forward(ctx: Any, pre_activation: Tensor, value: Tensor, slope: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(slope)
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


def frozen_activation(
    approximation: str, function: ActivationFunction, pre_activation: Tensor, value: Tensor
) -> tuple[Tensor, Optional[Tensor]]:
    """The fast path's rule for ``value = function(pre_activation)``: a tensor equal to ``value``
    whose gradient to ``pre_activation`` is the registered approximation's
    :meth:`~Approximation.frozen_slope`, and what the approximation leaves out (None when nothing).
    """
    slope, dropped = _APPROXIMATIONS.get(approximation).frozen_slope(function, pre_activation.detach(), value.detach())
    return _FrozenSlope.apply(pre_activation, value.detach(), slope), dropped


@dataclass(frozen=True)
class ActivationFunctionAt:
    """Where an activation function is found: a path to a module or function, or the function."""

    path: Optional[str] = None
    function: Optional[ActivationFunction] = None

    def resolve(self, root: nn.Module) -> ActivationFunction:
        found = self.function if self.function is not None else resolve(root, str(self.path))
        if not callable(found):
            raise TypeError(f"{self.path} is not callable; check the adapter.")
        return found
