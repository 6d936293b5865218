"""Feed-forward units: ``out(act(in(x)))``, or gated ``out(act(gate(x)) * in(x))`` (SwiGLU, GeGLU).

Recorded (exact path): the real input of the activation (the output of ``in``, or of ``gate`` for a
gated unit). In a gated unit the real ``act(gate(x))`` scales the decomposed up-projection;
otherwise the activation is frozen by the chosen :mod:`~captum_decompx.components.activations`
approximation. Frozen (fast path): the same coefficients, on the real modules: the gate's value is
detached (its activation module's output, or, where the unit calls a plain function, the gate map's
features), a plain activation's slope is the approximation's
(:meth:`~captum_decompx.components.activations.Approximation.frozen_slope`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol

import torch
from torch import Tensor, nn

from ..adapters.base import Block, resolve, take_block
from ..core.recording import Reader, Recorder
from .activations import ActivationFunction, ActivationFunctionAt, activation
from .base import Component
from .linear import Affine, LinearMap, linear
from .pieces import Settings

if TYPE_CHECKING:
    from ..core.freezing import Freezer


class FeedForwardParams(Protocol):
    """What :func:`feed_forward` reads (a :class:`ResolvedFeedForward` or a layer's parameters)."""

    @property
    def ffn_in(self) -> Affine: ...

    @property
    def ffn_activation(self) -> ActivationFunction: ...

    @property
    def ffn_out(self) -> Affine: ...

    @property
    def ffn_gated(self) -> bool: ...


@dataclass(frozen=True)
class ResolvedFeedForward:
    """A feed-forward unit's parameters (see :class:`FeedForwardParams`)."""

    ffn_in: Affine
    ffn_activation: ActivationFunction
    ffn_out: Affine
    ffn_gated: bool


def feed_forward(pieces: Tensor, pre_activation: Tensor, params: FeedForwardParams, settings: Settings) -> Tensor:
    """The feed-forward network on a decomposition.

    Args:
        pieces: (batch, rows, pieces, dim).
        pre_activation: (batch, rows, ffn), the real input of the activation (for a gated unit,
            of the gate's activation, whose real value then scales the decomposed up-projection).
    """
    hidden = linear(pieces, params.ffn_in, settings)
    if params.ffn_gated:
        hidden = hidden * params.ffn_activation(pre_activation).unsqueeze(-2)
    else:
        hidden = activation(hidden, pre_activation, params.ffn_activation, settings.ffn_approximation, settings, inplace=True)
    return linear(hidden, params.ffn_out, settings)


def detach_block(output: Tensor, block: Optional[Block]) -> Tensor:
    """``output`` (..., features) with this block of its features (all of them when None) cut from the graph."""
    if block is None:
        return output.detach()
    in_block = torch.zeros(output.shape[-1], dtype=torch.bool, device=output.device)
    take_block(in_block, block, dim=0).fill_(True)
    return torch.where(in_block, output.detach(), output)


@dataclass(frozen=True)
class FeedForward(Component):
    """A feed-forward unit: its ``up`` map (``in``), optional ``gate``, activation and ``down`` map."""

    up: LinearMap
    activation: ActivationFunctionAt
    down: LinearMap
    gate: Optional[LinearMap] = None

    @property
    def pre_activation(self) -> LinearMap:
        """The map whose output is the activation's input."""
        return self.gate if self.gate is not None else self.up

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        self.pre_activation.install(recorder, root)

    def read(self, reader: Reader, root: nn.Module, where: str) -> Tensor:
        """(batch, seq, ffn), the activation's real input."""
        return self.pre_activation.read(reader, root, where)

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        """Freeze the activation (or the gate) at its real value; with ``include_ffn=False`` the
        unit's output is left out of the decomposition (it goes to the ``dropped`` leaf)."""
        if not freezer.settings.include_ffn:
            freezer.drop_output(self.down.module(root))
            return
        function = resolve(root, str(self.activation.path)) if self.activation.function is None else self.activation.function
        if self.gate is not None:
            if isinstance(function, nn.Module):
                freezer.freeze_output(function, "gate", lambda _module, _args, output: output.detach())
            else:  # no activation module to hook: the gate's own features are cut, so act(gate) is a constant
                block = self.gate.block
                freezer.freeze_output(self.gate.module(root), "gate", lambda _module, _args, output: detach_block(output, block))
            return
        approximation = freezer.settings.ffn_approximation
        if isinstance(function, nn.Module):
            freezer.freeze_output(
                function,
                "activation",
                lambda module, args, output: freezer.pointwise(approximation, module.forward, args[0], output),
            )
            return
        freezer.pointwise_between(self.up.module(root), self.down.module(root), approximation, function)

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> ResolvedFeedForward:
        function = self.activation.resolve(root)
        return ResolvedFeedForward(self.up.resolve(root, dtype), function, self.down.resolve(root, dtype), self.gate is not None)

    propagate = staticmethod(feed_forward)
