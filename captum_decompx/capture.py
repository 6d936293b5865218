"""Hooks on one real forward pass: the one installer of both algorithms, and the exact path's capture.

:class:`HookedPass` walks the adapter's network once (:meth:`Network.walk
<captum_decompx.components.network.Network.walk>`) and gives every component kind the pass's
:class:`~captum_decompx.recording.Recorder`: :class:`Capture` asks each kind what it records (the
exact path), :class:`~captum_decompx.freezing.Freezer` how it freezes (the fast path).
:func:`hooked_pass` is the one context manager that installs them: it serializes passes on a
model, sets the attention implementation the pass needs, removes every hook and puts the
attention implementation back whatever happens, so the model is left as it was found, and refuses
a forward function that ran the model's layers more than once.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Optional, TypeVar

import torch
from torch import nn

from .adapters import Adapter
from .components.base import Component
from .components.layer import LayerRecord
from .components.network import Network
from .components.pooling import PoolingRecord
from .recording import Reader, Recorder

__all__ = ["Capture", "Captured", "HookedPass", "LayerRecord", "capture_internals", "eager_attention", "hooked_pass"]


@dataclass
class Captured:
    """Everything DecompX reads from one forward pass.

    Attributes:
        output: what the forward function returned.
        logits: (batch, classes).
        layer_input: (batch, seq, hidden), input of the first layer (the embeddings).
        layers: one :class:`LayerRecord` per layer, in execution order.
        final_norm_input: (batch, seq, hidden), input of the final norm of pre-LN models.
        head_inputs: per head step index, the real input (batch, dim) of an
            :class:`~captum_decompx.adapters.Activation` step (its pre-activation) or a
            :class:`~captum_decompx.adapters.Norm` step.
        pooling: what the pooling recorded: the ids the model received and its pad token id,
            for adapters that pool the last token that is not padding by id; else None.
    """

    output: Any
    logits: torch.Tensor
    layer_input: torch.Tensor
    layers: list[LayerRecord]
    final_norm_input: Optional[torch.Tensor]
    head_inputs: dict[int, torch.Tensor]
    pooling: Optional[PoolingRecord] = None


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def _configs_of(model: nn.Module) -> list[Any]:
    """Distinct Hugging Face config objects used by the model's modules."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())


# Attention implementations whose probabilities the fast path can freeze: "eager" (a softmax call)
# and "sdpa" (the fused kernel, called with query and key cut from the graph: its probabilities
# are then constants, and it keeps its O(N) memory). Others are switched to eager for its pass.
FREEZABLE_IMPLEMENTATIONS = ("eager", "sdpa")


@contextmanager
def _attention_implementation(model: nn.Module, keep: tuple[Optional[str], ...]) -> Iterator[None]:
    """Switch every config of the model whose attention implementation is not in ``keep`` to
    ``"eager"`` for the duration; restore each one's own value afterwards."""
    saved = []
    for config in _configs_of(model):
        if "_attn_implementation_internal" not in vars(config):
            continue
        value = vars(config)["_attn_implementation_internal"]
        if value not in keep:
            saved.append((config, value))
    try:
        for config, _ in saved:
            config._attn_implementation_internal = "eager"
        yield
    finally:
        for config, value in saved:
            config._attn_implementation_internal = value


def eager_attention(model: nn.Module) -> ContextManager[None]:
    """Run the model with eager attention (which returns its probabilities), then restore.

    Models loaded with ``sdpa`` do not return attention probabilities. This switches every config
    of the model to ``"eager"`` for the duration and restores each one's own value afterwards.
    """
    return _attention_implementation(model, keep=())


def freezable_attention(model: nn.Module) -> ContextManager[None]:
    """Switch configs whose attention implementation cannot be frozen (flash, flex, ...) to
    ``"eager"`` for the call; eager and sdpa stay as they are. Restored afterwards."""
    return _attention_implementation(model, keep=(None,) + FREEZABLE_IMPLEMENTATIONS)


class HookedPass:
    """Hooks on one model for one forward pass, installed by one walk of the adapter's network.

    Subclasses say what each component kind is asked (:meth:`install_component`) and which
    attention implementation the pass runs (:meth:`attention_implementation`). Every hook goes
    through :attr:`recorder` (one thread gate, one hook per module and role).
    """

    def __init__(self, model: nn.Module, adapter: Adapter) -> None:
        self.model = model
        self.adapter = adapter
        self.network = Network.of(adapter)
        self.layers = self.network.layer_modules(model)
        self.recorder = Recorder()
        self.layer_calls = 0

    def install_component(self, component: Component, root: nn.Module, first: bool) -> None:
        """Install ``component``'s hooks on ``root`` (the layer, or the model); ``first``: in the first layer."""
        raise NotImplementedError

    def attention_implementation(self) -> ContextManager[None]:
        """The attention implementation the pass runs with (restored afterwards)."""
        raise NotImplementedError

    def install(self) -> None:
        def count(_module, _args, _kwargs):
            self.layer_calls += 1

        self.recorder.pre_hook(self.layers[0], "calls", count)
        for component, root, first in self.network.walk(self.model, self.layers):
            self.install_component(component, root, first)

    def check_single_forward(self) -> None:
        """DecompX explains one forward pass: refuse a forward function that ran the model's layers
        more than once, or never."""
        per_pass = sum(layer is self.layers[0] for layer in self.layers)
        if self.layer_calls == 0:
            raise RuntimeError(
                "The forward function never ran the first layer. Check that `model` is the module the "
                "forward function actually calls, and that the model's architecture matches its adapter."
            )
        if self.layer_calls > per_pass:
            raise RuntimeError(
                f"The forward function ran the model's layers {self.layer_calls // per_pass} times; DecompX "
                "decomposes one forward pass. Make the forward function call the model once."
            )

    def close(self) -> None:
        self.recorder.remove()


Pass = TypeVar("Pass", bound=HookedPass)


@contextmanager
def hooked_pass(hooked: Pass) -> Iterator[Pass]:
    """Install ``hooked``'s hooks for the block; remove them and restore the attention
    implementation whatever happens. Passes on the same model are serialized, so two ``DecompX``
    objects (or threads) never see each other's hooks or attention setting."""
    with ExitStack() as stack:
        stack.enter_context(_model_lock(hooked.model))
        stack.enter_context(hooked.attention_implementation())
        stack.callback(hooked.close)
        hooked.install()
        yield hooked
        hooked.check_single_forward()


class Capture(HookedPass):
    """The exact path's hooks: what each component kind records; :meth:`result` assembles it."""

    def install_component(self, component: Component, root: nn.Module, first: bool) -> None:
        component.install(self.recorder, root)

    def attention_implementation(self) -> ContextManager[None]:
        return eager_attention(self.model)

    def result(self, output: Any, logits: torch.Tensor) -> Captured:
        """The records of the forward pass that returned ``output`` (``logits``: (batch, classes))."""
        self.recorder.raise_refusals()
        self.check_single_forward()
        record = self.network.read(Reader(self.recorder), self.model, self.layers)
        return Captured(
            output, logits, record.layer_input, record.layers, record.final_norm_input, record.head_inputs, record.pooling
        )


def warn_if_logits_are_capped(adapter: Adapter) -> None:
    """Warn that a final-logit soft-cap (``cap * tanh(z / cap)``) is not decomposed."""
    cap = adapter.logit_softcap
    if cap is None:
        return
    warnings.warn(
        f"This {adapter.name} model soft-caps its logits: it returns {cap:g} * tanh(z / {cap:g}) of the "
        "head's output z (config.final_logit_softcapping). The cap is nonlinear and DecompX does "
        "not decompose it: the attributions explain z, the logits BEFORE the cap, and sum to z, not to "
        f"the capped logits the model returns (z = {cap:g} * atanh(logit / {cap:g})). To explain "
        "uncapped logits consistently, build DecompX on a model whose config.final_logit_softcapping "
        "is None.",
        UserWarning,
        stacklevel=3,
    )


@contextmanager
def capture_internals(model: nn.Module, adapter: Adapter) -> Iterator[Capture]:
    """Install the hooks that record one forward pass; remove them, whatever happens.

    Usage::

        with capture_internals(model, adapter) as capture:
            output = forward_func(*inputs)
        captured = capture.result(output, logits)

    Captures on the same model are serialized, so two ``DecompX`` objects (or threads) never see
    each other's hooks or attention setting.
    """
    warn_if_logits_are_capped(adapter)
    with hooked_pass(Capture(model, adapter)) as capture:
        yield capture
