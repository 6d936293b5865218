"""Normalizations: LayerNorm, RMSNorm, Gemma's RMSNorm, and ``nn.Identity`` (no normalization).

A norm is frozen at the real statistics of its captured input: ``(x - mean) / sqrt(var + eps)``
(LayerNorm) or ``x / sqrt(mean(x^2) + eps)`` (RMSNorm) is then linear in the pieces, and scaled by
the kind's gain (``weight``, or ``1 + weight`` for Gemma). A new kind is one :class:`NormKind`
passed to :func:`register_norm_kind`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import resolve
from ..core.recording import Reader, Recorder
from .base import Component
from .pieces import Settings, add_bias, add_to_own_pieces
from .registry import Names, Registry

if TYPE_CHECKING:
    from ..core.freezing import Freezer


class NormKind(abc.ABC):
    """How one kind of normalization is recognized and frozen."""

    @abc.abstractmethod
    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` normalizes this way."""

    @abc.abstractmethod
    def eps(self, module: nn.Module) -> float:
        """The module's epsilon."""

    @abc.abstractmethod
    def statistic(self, norm_input: Tensor) -> Tensor:
        """(..., 1): what ``eps`` is added to before the square root, from the real input (..., dim)."""

    @abc.abstractmethod
    def centre(self, pieces: Tensor) -> Tensor:
        """The pieces (..., dim) after the linear part that precedes the scaling (e.g. centring)."""

    def gain(self, module: nn.Module) -> Optional[Tensor]:
        """(dim,): what the normalized vector is multiplied by; the module's ``weight`` by default."""
        weight = getattr(module, "weight", None)
        return weight if isinstance(weight, Tensor) else None

    def inverse_scale(self, norm_input: Tensor, eps: float) -> Optional[Tensor]:
        """(..., 1): ``1 / sqrt(statistic + eps)`` computed exactly as the module computes it, for a
        kind whose module rounds it differently from the input's dtype; None: from :meth:`statistic`
        in the input's dtype."""
        return None


class LayerNormKind(NormKind):
    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.LayerNorm)

    def eps(self, module: nn.Module) -> float:
        return float(getattr(module, "eps"))  # noqa: B009 (an nn.Module attribute)

    def statistic(self, norm_input: Tensor) -> Tensor:
        return norm_input.var(-1, unbiased=False, keepdim=True)

    def centre(self, pieces: Tensor) -> Tensor:
        return pieces - pieces.mean(-1, keepdim=True)


class RMSNormKind(NormKind):
    """Any module whose class name contains "rms" and that has ``variance_epsilon`` or ``eps``."""

    def matches(self, module: nn.Module) -> bool:
        return "rms" in type(module).__name__.lower() and self._eps(module) is not None

    @staticmethod
    def _eps(module: nn.Module):
        return getattr(module, "variance_epsilon", getattr(module, "eps", None))

    def eps(self, module: nn.Module) -> float:
        return float(self._eps(module))

    def statistic(self, norm_input: Tensor) -> Tensor:
        return norm_input.pow(2).mean(-1, keepdim=True)

    def centre(self, pieces: Tensor) -> Tensor:
        return pieces


class GemmaRMSNormKind(RMSNormKind):
    """Gemma's RMSNorm (Gemma 1, 2, 3): the gain is ``1 + weight`` (its weight is stored as an
    offset from one)."""

    CLASSES = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")

    def matches(self, module: nn.Module) -> bool:
        return type(module).__name__ in self.CLASSES and self._eps(module) is not None

    def gain(self, module: nn.Module) -> Optional[Tensor]:
        weight = super().gain(module)
        # in float64, so that a half-precision offset keeps its precision (the model adds in float32)
        return None if weight is None else 1.0 + weight.detach().to(torch.float64)


class T5RMSNormKind(RMSNormKind):
    """T5's ``T5LayerNorm`` (and mT5's, UMT5's): an RMSNorm (no centring, no bias) under another
    name; its statistic is computed in float32, as the model does."""

    def matches(self, module: nn.Module) -> bool:
        return type(module).__name__.endswith("T5LayerNorm") and self._eps(module) is not None

    def inverse_scale(self, norm_input: Tensor, eps: float) -> Optional[Tensor]:
        # the module's variance and rsqrt run in float32, also in a float64 model
        return torch.rsqrt(norm_input.to(torch.float32).pow(2).mean(-1, keepdim=True) + eps).to(norm_input.dtype)


_NORM_KINDS: Registry[NormKind] = Registry("norm kind")
NORM_KINDS = Names(_NORM_KINDS)
"""The registered norm kinds' names (``"layer"``, ``"gemma-rms"``, ``"rms"``, ``"t5-rms"``), a live view."""


def register_norm_kind(name: str, kind: NormKind, *, overwrite: bool = False) -> None:
    """Teach DecompX another normalization module (matched in registration order).

    Args:
        overwrite: replace a kind registered before under ``name`` (it keeps its place).
    """
    _NORM_KINDS.register(name, kind, overwrite=overwrite)


def unregister_norm_kind(name: str) -> None:
    """Remove a kind registered with :func:`register_norm_kind`."""
    _NORM_KINDS.unregister(name)


norm_kind = _NORM_KINDS.get
"""``norm_kind(name)``: the norm kind registered as ``name`` (a ValueError naming the registered ones)."""


register_norm_kind("layer", LayerNormKind())
register_norm_kind("gemma-rms", GemmaRMSNormKind())  # before "rms", which would also match it
register_norm_kind("rms", RMSNormKind())
register_norm_kind("t5-rms", T5RMSNormKind())


@dataclass(frozen=True)
class NormParams:
    """A normalization's parameters; ``weight`` (the gain) and ``bias`` are (dim,) or None;
    ``kind`` a registered name."""

    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float
    kind: str = "layer"


def norm_params(module: nn.Module, dtype: torch.dtype) -> Optional[NormParams]:
    """A normalization module's parameters; None for ``nn.Identity``."""
    if isinstance(module, nn.Identity):
        return None
    name, kind = _kind_of(module)
    weight = kind.gain(module)
    bias = getattr(module, "bias", None)
    return NormParams(
        None if weight is None else weight.detach().to(dtype),
        None if bias is None else bias.detach().to(dtype),
        kind.eps(module),
        name,
    )


def norm_kind_of(module: nn.Module) -> NormKind:
    """The registered norm kind that ``module`` normalizes by (a TypeError when none matches)."""
    return _kind_of(module)[1]


def _kind_of(module: nn.Module) -> tuple[str, NormKind]:
    for name, kind in _NORM_KINDS.items():
        if kind.matches(module):
            return str(name), kind
    raise TypeError(
        f"Expected nn.LayerNorm, an RMSNorm or nn.Identity, found {type(module).__name__}; "
        "DecompX does not know how this module normalizes. Describe it with a NormKind and "
        "captum_decompx.components.register_norm_kind (see the README, 'Adding an architecture')."
    )


def normalize(
    pieces: Tensor,
    norm_input: Optional[Tensor],
    norm: Optional[NormParams],
    settings: Settings,
    *,
    own_bias: bool = False,
    own_scale: Optional[Tensor] = None,
) -> Tensor:
    """A normalization with the real statistics of its captured input.

    Args:
        pieces: (batch, rows, pieces, dim).
        norm_input: (batch, rows, dim), the real input of the normalization (unused, and may be
            None, when ``norm`` is None).
        norm: the parameters; None means no normalization (identity).
        own_bias: the norm acts before any token mixing (a pre-LN model's first norm): its bias
            belongs to each row's own token (see :func:`~.pieces.add_to_own_pieces`).
        own_scale: (batch, rows), fast path only.
    """
    if norm is None:
        return pieces
    assert norm_input is not None, "a normalization needs its recorded input"
    kind = _NORM_KINDS.get(norm.kind)
    inverse = kind.inverse_scale(norm_input, norm.eps)
    if inverse is None:
        inverse = 1.0 / (kind.statistic(norm_input) + norm.eps).sqrt()
    factor = inverse.unsqueeze(-2)  # (batch, rows, 1, 1)
    if norm.weight is not None:
        factor = factor * norm.weight
    out = kind.centre(pieces) * factor
    if norm.bias is None:
        return out
    if own_bias:
        return add_to_own_pieces(out, norm.bias, own_scale)
    return add_bias(out, norm.bias, settings)


class _FrozenNorm(torch.autograd.Function):
    """Returns ``value`` (the real norm output); the gradient to the norm's input is that of
    ``gain * centre(u) * inv_scale`` with ``inv_scale`` a constant: ``centre`` is the norm kind's
    linear part (LayerNorm subtracts the mean, RMSNorm nothing), a symmetric projection, so it is
    its own adjoint."""

    @staticmethod
    def forward(
        ctx: Any, norm_input: Tensor, value: Tensor, inv_scale: Tensor, gain: Optional[Tensor], centre: Callable[[Tensor], Tensor]
    ) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(inv_scale, gain)
        ctx.centre = centre
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        inv_scale, gain = ctx.saved_tensors
        scaled = grad * gain if gain is not None else grad
        return ctx.centre(scaled * inv_scale), None, None, None, None


def frozen_norm(module: nn.Module, norm_input: Tensor, value: Tensor) -> Tensor:
    """The fast path's rule: ``value`` (the module's real output), whose gradient to ``norm_input``
    is the norm's with the statistic of the real input held constant (its registered kind's
    statistic, centring and gain)."""
    kind = norm_kind_of(module)
    inv_scale = kind.inverse_scale(norm_input.detach(), kind.eps(module))
    if inv_scale is None:
        statistic = kind.statistic(norm_input.detach().to(torch.promote_types(norm_input.dtype, torch.float32)))
        inv_scale = (statistic + kind.eps(module)).rsqrt()
    inv_scale = inv_scale.to(value.dtype)
    gain = kind.gain(module)
    gain = None if gain is None else gain.detach().to(value.dtype)
    return _FrozenNorm.apply(norm_input, value.detach(), inv_scale, gain, kind.centre)


@dataclass(frozen=True)
class Normalization(Component):
    """A normalization at ``path``; recorded: its real input (batch, ..., dim); frozen: its
    statistic.

    Attributes:
        before_mixing: the norm acts on a layer's input before attention mixes the tokens (a
            pre-LN layer's attention norm): in the first layer its bias belongs to each token.
    """

    path: str
    before_mixing: bool = False

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        recorder.record_input(resolve(root, self.path), "input", "input")

    def read(self, reader: Reader, root: nn.Module, where: str) -> Tensor:
        return reader.take(resolve(root, self.path), "input", where)

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        module = resolve(root, self.path)
        if isinstance(module, nn.Identity):
            return
        norm_kind_of(module)  # an unknown norm is refused before the pass
        own_bias = getattr(module, "bias", None) if first and self.before_mixing else None
        freezer.freeze_output(
            module, "norm", lambda _module, args, output: frozen_norm(_module, args[0], output), own_bias=own_bias
        )

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> Optional[NormParams]:
        return norm_params(resolve(root, self.path), dtype)

    propagate = staticmethod(normalize)
