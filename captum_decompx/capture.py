"""Capture what the decomposition needs from one real forward pass, with hooks only.

What is recorded is what the adapter's component kinds ask for (:mod:`captum_decompx.components`);
:func:`capture_internals` is the one place where hooks are installed; it removes them in a
``finally`` and puts the attention implementation back, so the model is left as it was found,
also when the forward pass raises.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from .adapters import Adapter
from .components.layer import LayerRecord
from .components.network import Network
from .components.pooling import PoolingRecord
from .recording import Reader, Recorder

__all__ = ["Capture", "Captured", "LayerRecord", "capture_internals", "configs_of", "eager_attention", "model_lock"]


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


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serializes the calls which hook ``model`` (one per model, re-entrant)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def configs_of(model: nn.Module) -> list[Any]:
    """Distinct Hugging Face config objects used by the model's modules."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the model with eager attention (which returns its probabilities), then restore.

    Models loaded with ``sdpa`` do not return attention probabilities. This switches every config
    of the model to ``"eager"`` for the duration and restores each one's own value afterwards.
    """
    saved = []
    for config in configs_of(model):
        attribute = "_attn_implementation_internal" if "_attn_implementation_internal" in vars(config) else None
        if attribute is None:
            continue
        saved.append((config, attribute, vars(config)[attribute]))
    try:
        for config, attribute, _ in saved:
            setattr(config, attribute, "eager")
        yield
    finally:
        for config, attribute, value in saved:
            setattr(config, attribute, value)


class Capture:
    """Hooks installed on one model for one forward pass; :meth:`result` assembles the records.

    What is recorded is what the adapter's component kinds ask for (:class:`Network`).
    """

    def __init__(self, model: nn.Module, adapter: Adapter) -> None:
        self.model = model
        self.adapter = adapter
        self.network = Network.of(adapter)
        self.layers = self.network.layer_modules(model)
        self.recorder = Recorder()

    def install(self) -> None:
        self.network.install(self.recorder, self.model, self.layers)

    def _check_single_forward(self) -> None:
        """DecompX explains one forward pass: refuse a forward function that ran the model twice."""
        first = self.layers[0]
        per_pass = sum(layer is first for layer in self.layers)
        calls = len(self.recorder.calls(first, "layer_input"))
        if calls > per_pass:
            raise RuntimeError(
                f"The forward function ran the model's layers {calls // per_pass} times; DecompX "
                "decomposes one forward pass. Make the forward function call the model once."
            )

    def result(self, output: Any, logits: torch.Tensor) -> Captured:
        """The records of the forward pass that returned ``output`` (``logits``: (batch, classes))."""
        self.recorder.raise_refusals()
        self._check_single_forward()
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
    capture = Capture(model, adapter)
    with ExitStack() as stack:
        stack.enter_context(model_lock(model))
        stack.enter_context(eager_attention(model))
        stack.callback(capture.recorder.remove)
        capture.install()
        yield capture
