"""What a component kind is.

A component kind (a linear map, a normalization, attention, a feed-forward unit, a head step) is
defined once, in one module of :mod:`captum_decompx.components`, by one class whose instances are
built from adapter data (dotted paths). It answers four questions:

- **found**: where it is (its paths, resolved on the layer or the model by :meth:`Component.modules`);
- **recorded**: what the capture keeps from the real forward pass (:meth:`Component.install` adds
  hooks to a :class:`~captum_decompx.recording.Recorder`, :meth:`Component.read` takes the values
  back, one per run of the module);
- **resolved**: its parameters, detached and in the compute dtype (:meth:`Component.resolve`);
- **propagated**: how a decomposition passes through it (its ``propagate`` function, with the
  recorded values frozen).

The one-pass fast path freezes the real modules instead (:mod:`captum_decompx.freezing`); its
rules read the kinds' own definitions: a normalization's statistic, linear part and gain from its
registered norm kind, an activation's slope from its registered approximation
(:meth:`~captum_decompx.components.activations.Approximation.frozen_slope`), a linear map's bias
from the linear kind (fused blocks and LoRA included).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..recording import Reader, Recorder


class Component:
    """Base class of the component kinds (see the module docstring)."""

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        """Add the hooks that record what :meth:`read` returns (nothing by default)."""

    def read(self, reader: Reader, root: nn.Module, where: str) -> Any:
        """What the real forward pass did here (one call's worth); None when nothing is recorded."""
        return None

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> Any:
        """The parameters, detached and converted to ``dtype``; the model is not touched."""
        raise NotImplementedError
