"""What a component kind is.

A component kind (a linear map, a normalization, attention, a feed-forward unit, a head step) is
defined once, in one module of :mod:`captum_decompx.components`, by one class whose instances are
built from adapter data (dotted paths). It answers five questions:

- **found**: where it is (its paths, resolved on the layer or the model it is given);
- **recorded** (exact path): what the capture keeps from the real forward pass
  (:meth:`Component.install` adds hooks to a :class:`~captum_decompx.core.recording.Recorder`,
  :meth:`Component.read` takes the values back, one per run of the module);
- **frozen** (fast path): how the real module is run with its nonlinear coefficients cut from
  autograd while every value stays the same (:meth:`Component.freeze` adds hooks through a
  :class:`~captum_decompx.core.freezing.Freezer`);
- **resolved**: its parameters, detached and in the compute dtype (:meth:`Component.resolve`);
- **propagated**: how a decomposition passes through it (its ``propagate`` function, with the
  recorded values frozen).

Both algorithms install their hooks by the same walk of the network
(:meth:`captum_decompx.components.network.Network.walk`, run by
:class:`captum_decompx.core.capture.HookedPass`): a new kind is its module plus adapter data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.recording import Reader, Recorder

if TYPE_CHECKING:
    from ..core.freezing import Freezer


class Component:
    """Base class of the component kinds (see the module docstring)."""

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        """Add the hooks that record what :meth:`read` returns (nothing by default)."""

    def read(self, reader: Reader, root: nn.Module, where: str) -> Any:
        """What the real forward pass did here (one call's worth); None when nothing is recorded."""
        return None

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        """Add the hooks that freeze this component's nonlinear coefficients for the fast path
        (``first``: the component belongs to the first layer). A kind without a rule is refused
        when the fast path installs it, never silently run unfrozen."""
        raise NotImplementedError(
            f"The component kind {type(self).__name__} has no rule for the fast path: implement "
            "Component.freeze, or use algorithm='exact'."
        )

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> Any:
        """The parameters, detached and converted to ``dtype``; the model is not touched."""
        raise NotImplementedError
