"""The fast path's frozen forward pass: the real model, run once, with every nonlinear
coefficient frozen for autograd while every value stays bit-for-bit the same.

Without biases, DecompX is the linear map of the embeddings whose coefficients (normalization
statistics, activation slopes, gates, attention probabilities, the head's activation slope) are
fixed by the real forward pass (spec, "Cost, and the fast path"). Running the real model with
those coefficients cut from the autograd graph therefore builds exactly that map's graph; one
backward pass then gives every token's share ``<dF/de_k, e_k>``.

Each component kind says how it freezes (its ``freeze`` method, in its own module of
:mod:`captum_decompx.components`: a norm's statistic, an activation's slope, a gate, the
attention probabilities); the hooks are installed by the same walk of the network that installs
the exact path's recording hooks (:class:`~captum_decompx.core.capture.HookedPass`). This module holds
what the kinds freeze through: the :class:`Freezer` (the pass's hooks, its leaves and the
helpers several kinds share) and :func:`frozen_forward`, the context manager of one pass.

Besides the embeddings, the pass creates two more leaves: ``own_scale`` (batch, seq, 1) multiplies
(by exactly one) the biases a token owns before the first attention mixes tokens (the first
layer's value bias, a pre-LN model's first norm bias), so its gradient is each token's share of
them; ``dropped`` (batch,) multiplies (by one) what the decomposition leaves out although the
model computes it (the feed-forward outputs with ``include_ffn=False``, the part of a GELU that
the ``"relu"`` approximation drops), so that the bias share can exclude it as the exact path does.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch
from torch import Tensor, nn

from ..adapters import Adapter
from ..components import Settings
from ..components.activations import frozen_activation
from ..components.base import Component
from .capture import HookedPass, freezable_attention, hooked_pass
from .recording import Reader, main_input


def _zero_with_gradient(leaf: Tensor, vector: Tensor) -> Tensor:
    """A tensor of zeros whose gradient to ``leaf`` is ``<grad, vector>``: ``(leaf - leaf) * vector``
    (``leaf`` holds ones, so adding this to a value changes no bit of it)."""
    return (leaf - leaf.detach()) * vector


def _replace_first(args: tuple, kwargs: dict, name: str, value: Tensor) -> tuple[tuple, dict]:
    """The call's arguments with its main input (see :func:`~captum_decompx.core.recording.main_input`) replaced."""
    if args:
        return (value,) + tuple(args[1:]), kwargs
    if name in kwargs:
        return args, {**kwargs, name: value}
    for key, item in kwargs.items():
        if isinstance(item, Tensor):
            return args, {**kwargs, key: value}
    raise RuntimeError(f"could not find {name!r} in the arguments of the first layer")


@dataclass
class FrozenForward:
    """What the frozen forward pass leaves for the backward pass.

    Attributes:
        embeddings: (batch, seq, hidden) leaf, the first layer's input.
        own_scale: (batch, seq, 1) leaf of ones scaling the biases each token owns before mixing.
        dropped: (batch,) leaf of ones scaling what the decomposition leaves out.
        head_input: the input of the head's first step, (batch, hidden) or (batch, seq, hidden).
        real_tokens: (batch, seq) bool, tokens some query attends to in the first layer.
        head_output: the head's last linear map's output, for a model that soft-caps its logits.
        pooling: what the pooling recorded (the input ids, for ``"last_non_pad_token"``).
        source_embeddings, source_own_scale: an encoder-decoder's encoder: the leaves of its
            first layer's input (batch, source, hidden) and of its tokens' own biases (batch,
            source, 1); ``embeddings`` and ``own_scale`` are then the decoder's.
    """

    embeddings: Optional[Tensor] = None
    own_scale: Optional[Tensor] = None
    dropped: Optional[Tensor] = None
    head_input: Optional[Tensor] = None
    real_tokens: Optional[Tensor] = None
    head_output: Optional[Tensor] = None
    pooling: Any = None
    source_embeddings: Optional[Tensor] = None
    source_own_scale: Optional[Tensor] = None

    def leaves(self) -> list[Tensor]:
        return [leaf for leaf in (self.embeddings, self.own_scale, self.dropped) if leaf is not None]

    def own_scale_of(self, stack: str) -> Optional[Tensor]:
        """The ``own_scale`` leaf of the ``"target"`` (the model's layers) or ``"source"`` stack."""
        return self.source_own_scale if stack == "source" else self.own_scale


class Freezer(HookedPass):
    """The fast path's hooks on one model for one forward pass, and the helpers the component
    kinds freeze through (:meth:`~captum_decompx.components.base.Component.freeze`).

    Attributes:
        settings: the decomposition's settings (approximations, ``include_ffn``).
        state: the leaves and records the backward pass reads.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, settings: Settings) -> None:
        super().__init__(model, adapter)
        self.settings = settings
        self.state = FrozenForward()
        self.open_modes: list[Any] = []  # torch function modes entered by an attention module's pre-hook
        self.stack = "target"  # the stack whose components are being installed (set by its layer input)

    def install_component(self, component: Component, root: nn.Module, first: bool) -> None:
        component.freeze(self, root, first=first)

    def attention_implementation(self) -> ContextManager[bool]:
        return freezable_attention(self.model)

    def close(self) -> None:
        while self.open_modes:  # an error inside an attention module left its mode entered
            self.open_modes.pop().__exit__(None, None, None)
        super().close()

    # -- what several kinds freeze through ----------------------------------------------------

    def replace_layer_input(self, layer: nn.Module, *, stack: str = "target") -> None:
        """Make the first layer's input (on its first call) the ``embeddings`` leaf and create the
        ``own_scale`` and ``dropped`` leaves of the same batch. For an encoder-decoder's encoder
        (``stack="source"``), the ``source_embeddings`` and ``source_own_scale`` leaves; the
        components installed after this call own their biases in this stack."""
        state = self.state
        self.stack = stack
        source = stack == "source"

        def hook(_module, args, kwargs):
            if (state.source_embeddings if source else state.embeddings) is not None:
                return None
            hidden = main_input(args, kwargs, "hidden_states")
            leaf = hidden.detach().requires_grad_(True)
            batch, seq = hidden.shape[:2]
            own_scale = torch.ones(batch, seq, 1, dtype=hidden.dtype, device=hidden.device, requires_grad=True)
            if source:
                state.source_embeddings, state.source_own_scale = leaf, own_scale
            else:
                state.embeddings, state.own_scale = leaf, own_scale
            if state.dropped is None:
                state.dropped = torch.ones(batch, dtype=hidden.dtype, device=hidden.device, requires_grad=True)
            return _replace_first(args, kwargs, "hidden_states", leaf)

        self.recorder.pre_hook(layer, "embeddings", hook)

    def freeze_output(
        self, module: nn.Module, role: str, freeze: Callable[[nn.Module, tuple, Any], Tensor], own_bias: Optional[Tensor] = None
    ) -> None:
        """Make ``module`` return ``freeze(module, args, output)``; with ``own_bias`` (dim,), also
        add, on the module's first call, the token-owned share of that bias (zero-valued, its
        gradient goes to the ``own_scale`` leaf)."""
        calls = [0]
        stack = self.stack

        def hook(_module, args, output):
            output = freeze(_module, args, output)
            calls[0] += 1
            own = None if own_bias is None or calls[0] != 1 else self.own_bias_term(own_bias, output.dtype, stack)
            return output if own is None else output + own

        self.recorder.forward_hook(module, role, hook)

    def own_bias_term(self, bias: Tensor, dtype: torch.dtype, stack: str = "target") -> Optional[Tensor]:
        """(batch, seq, dim) zeros whose gradient goes to the ``own_scale`` leaf of ``stack``
        (``"target"`` or an encoder-decoder's ``"source"``): added to a module's output, each
        token's share of ``bias`` (dim,) (a bias it owns before any mixing). None before the
        stack's first layer ran."""
        own_scale = self.state.own_scale_of(stack)
        if own_scale is None:
            return None
        return _zero_with_gradient(own_scale, bias.to(dtype))

    def drop_output(self, module: nn.Module) -> None:
        """Leave ``module``'s output out of the decomposition: its value stays, its gradient goes to
        the ``dropped`` leaf only."""
        state = self.state

        def drop(_module, _args, output):
            if state.dropped is None:
                return None
            return output.detach() * state.dropped.view((-1,) + (1,) * (output.dim() - 1))

        self.recorder.forward_hook(module, "dropped", drop)

    def pointwise(
        self, approximation: str, function: Callable[[Tensor], Tensor], pre_activation: Tensor, value: Tensor
    ) -> Tensor:
        """``value = function(pre_activation)`` frozen by the registered approximation; what the
        approximation leaves out goes to the ``dropped`` leaf."""
        frozen, dropped = frozen_activation(approximation, function, pre_activation, value)
        if dropped is not None and self.state.dropped is not None:
            leaf = self.state.dropped.view((-1,) + (1,) * (value.dim() - 1))
            frozen = frozen + _zero_with_gradient(leaf, dropped)
        return frozen

    def pointwise_between(
        self, before: nn.Module, after: nn.Module, approximation: str, function: Callable[[Tensor], Tensor]
    ) -> None:
        """Freeze an activation that is not a module: the output of ``before`` is its input, the
        input of ``after`` its output."""
        pre: list[Tensor] = []

        def record(_module, _args, output):
            pre[:] = [output]

        def replace(_module, args, kwargs):
            if not pre:
                return None
            value = main_input(args, kwargs, "input")
            if value.shape != pre[0].shape:
                raise RuntimeError(
                    f"The fast path expected the input of {type(_module).__name__} to be the activation of "
                    f"the previous linear map's output {tuple(pre[0].shape)}, found {tuple(value.shape)}."
                )
            frozen = self.pointwise(approximation, function, pre[0], value)
            pre.clear()
            return _replace_first(args, kwargs, "input", frozen)

        self.recorder.forward_hook(before, "activation input", record)
        self.recorder.pre_hook(after, "activation output", replace)


@contextmanager
def frozen_forward(model: nn.Module, adapter: Adapter, settings: Settings) -> Iterator[FrozenForward]:
    """Run the model, inside the block, with every nonlinear coefficient frozen for autograd.

    Usage::

        with frozen_forward(model, adapter, settings) as frozen:
            logits = forward_func(*inputs)  # the real logits; their graph is the frozen linear map
        grads = torch.autograd.grad(logits, frozen.leaves(), ...)  # hooks are gone by now

    Hooks are removed, modes exited and the attention implementation restored when the block ends,
    also when it raises; a forward function that ran the model's layers more than once (or never)
    is refused. Passes on the same model are serialized (see ``capture_internals``).
    """
    with ExitStack() as stack:
        stack.enter_context(torch.enable_grad())
        freezer = stack.enter_context(hooked_pass(Freezer(model, adapter, settings)))
        yield freezer.state
    # the ids a decoder classifier pools by, recorded as on the exact path
    freezer.state.pooling = freezer.network.pooling.read(Reader(freezer.recorder), model, "the model's base (its input ids)")
