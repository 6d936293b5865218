"""What an adapter is: where the components of one architecture live, as data.

An adapter holds dotted attribute paths and a few flags. It installs nothing and holds no math:
the capture context manager hooks the modules it names, and the engine does the propagation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

POOLING_MODES = ("first", "last", "mean")


@dataclass(frozen=True)
class LayerPaths:
    """Paths, relative to one encoder layer, of the modules DecompX reads.

    Attributes:
        attention: module whose output is ``(context, attention_probs)`` when the model runs with
            eager attention; ``attention_probs`` is ``(batch, heads, seq, seq)``, post-softmax.
        value: ``nn.Linear`` computing the value vectors of all heads.
        attention_output: ``nn.Linear`` mixing the heads back to the hidden size (``W_O``).
        attention_norm: normalization after the attention residual (post-LN models).
        ffn_in: first ``nn.Linear`` of the feed-forward network.
        ffn_activation: the activation applied to ``ffn_in``'s output: a module or a function
            reachable by attribute (e.g. ``"intermediate.intermediate_act_fn"``).
        ffn_out: second ``nn.Linear`` of the feed-forward network.
        ffn_norm: normalization after the feed-forward residual.
    """

    attention: str
    value: str
    attention_output: str
    attention_norm: str
    ffn_in: str
    ffn_activation: str
    ffn_out: str
    ffn_norm: str


@dataclass(frozen=True)
class Linear:
    """A head step: the ``nn.Linear`` at ``path`` (relative to the top model)."""

    path: str


@dataclass(frozen=True)
class Activation:
    """A head step: a pointwise activation, given as a path to a module/function or a function."""

    path: Optional[str] = None
    function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.function is None):
            raise ValueError("Activation needs exactly one of `path` or `function`.")


HeadStep = "Linear | Activation"


@dataclass(frozen=True)
class Adapter:
    """Where the components of one architecture live.

    Attributes:
        name: a readable name, e.g. ``"bert"``.
        layers: path, relative to the top model, of the ``nn.ModuleList`` of encoder layers.
        layer: paths inside each layer (see :class:`LayerPaths`).
        head: the classification head after pooling, as a sequence of :class:`Linear` and
            :class:`Activation` steps; its last step produces the logits.
        pooling: which hidden state the head reads: ``"first"`` token, ``"last"`` non-padding
            token, or the ``"mean"`` of the non-padding tokens.
    """

    name: str
    layers: str
    layer: LayerPaths
    head: Sequence[object] = field(default_factory=tuple)
    pooling: str = "first"

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling={self.pooling!r} is not one of {POOLING_MODES}.")
        for step in self.head:
            if not isinstance(step, (Linear, Activation)):
                raise TypeError(f"head steps must be Linear or Activation, got {step!r}.")

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        """The encoder layers in execution order (a shared module may appear several times)."""
        return list(resolve(model, self.layers))


def resolve(root: nn.Module, path: str):
    """Follow a dotted attribute path (``"bert.encoder.layer"``) from ``root``."""
    try:
        return functools.reduce(getattr, path.split("."), root)
    except AttributeError as error:
        raise AttributeError(
            f"{type(root).__name__} has no attribute path {path!r} ({error}); the adapter does not "
            "match this model."
        ) from None
