"""Capture what the engine needs from one real forward pass, with hooks only.

:func:`capture_internals` is the one place where hooks are installed; it removes them in a
``finally`` and puts the attention implementation back, so the model is left as it was found,
also when the forward pass raises.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from .adapters import Activation, Adapter, Linear, resolve
from .adapters.base import Norm as HeadNorm
from .adapters.base import split_block, take_block

_MISSING = object()


@dataclass
class LayerRecord:
    """What one layer did in the real forward pass.

    Attributes:
        attention_probs: (batch, heads, seq, seq), post-softmax.
        attention_norm_input: (batch, seq, hidden), input of the attention block's norm.
        ffn_pre_activation: (batch, seq, ffn), input of the feed-forward activation (for a gated
            unit, of the gate's activation).
        ffn_norm_input: (batch, seq, hidden), input of the feed-forward block's norm.
    """

    attention_probs: torch.Tensor
    attention_norm_input: torch.Tensor
    ffn_pre_activation: torch.Tensor
    ffn_norm_input: torch.Tensor


@dataclass
class Captured:
    """Everything DecompX reads from one forward pass.

    Attributes:
        output: what the forward function returned.
        logits: (batch, classes).
        layer_input: (batch, seq, hidden), input of the first layer (the embeddings).
        layers: one :class:`LayerRecord` per layer, in execution order.
        final_norm_input: (batch, seq, hidden), input of the final norm of pre-LN models.
        head_inputs: per head step index, the real input of an :class:`Activation` (the
            pre-activation) or a :class:`Norm` step: (batch, dim).
    """

    output: Any
    logits: torch.Tensor
    layer_input: torch.Tensor
    layers: list[LayerRecord]
    final_norm_input: Optional[torch.Tensor]
    head_inputs: dict[int, torch.Tensor]


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


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the model with eager attention (which returns its probabilities), then restore.

    Models loaded with ``sdpa`` do not return attention probabilities. This switches every config
    of the model to ``"eager"`` for the duration and restores each one's own value afterwards.
    """
    saved = []
    for config in _configs_of(model):
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


def _first(args: tuple, kwargs: dict, name: str) -> torch.Tensor:
    """The module's main input: its first positional argument, or ``name``, or the first tensor."""
    if args:
        return args[0]
    if name in kwargs:
        return kwargs[name]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError(f"could not find {name!r} in the arguments of a hooked module")


class _Recorder:
    """Collects tensors from hooks, keyed by module identity, in call order."""

    def __init__(self) -> None:
        self.by_module: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.thread = threading.get_ident()

    def record_output(self, module: nn.Module, role: str, pick: Callable[[Any], Any]) -> None:
        def hook(_module, _args, output):
            if threading.get_ident() == self.thread:
                self.by_module[id(module)][role].append(_detach(pick(output)))

        self.handles.append(module.register_forward_hook(hook))

    def record_input(self, module: nn.Module, role: str, name: str) -> None:
        def hook(_module, args, kwargs):
            if threading.get_ident() == self.thread:
                self.by_module[id(module)][role].append(_detach(_first(args, kwargs, name)))

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def take(self, module: nn.Module, role: str, occurrence: int, where: str):
        calls = self.by_module.get(id(module), {}).get(role, [])
        if occurrence >= len(calls):
            raise RuntimeError(
                f"The forward function never ran {where} (recorded {len(calls)} call(s)). Check that "
                "`model` is the module the forward function actually calls, and that the model's "
                "architecture matches its adapter."
            )
        return calls[occurrence]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _output_attentions_parameter(module: nn.Module) -> Optional[tuple[int, str]]:
    """``(position, "output_attentions")`` when the module's forward takes that argument.

    transformers 4.x builds BERT-family attention modules for ``sdpa`` at load time; switching the
    config to eager afterwards does not change their class, and they return their probabilities
    only when called with ``output_attentions=True`` (they then fall back to the eager code).
    """
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    if "output_attentions" not in names:
        return None
    return names.index("output_attentions"), "output_attentions"


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _attention_probs(output: Any) -> Optional[torch.Tensor]:
    if isinstance(output, tuple) and len(output) > 1:
        return output[1]
    return None


class Capture:
    """Hooks installed on one model for one forward pass; :meth:`result` assembles the records."""

    def __init__(self, model: nn.Module, adapter: Adapter) -> None:
        self.model = model
        self.adapter = adapter
        self.layers = adapter.layer_modules(model)
        if not self.layers:
            raise ValueError(f"The adapter {adapter.name!r} found no layers at {adapter.layers!r}.")
        self.recorder = _Recorder()
        self._installed: set[tuple[int, str]] = set()

    def _once(self, module: nn.Module, role: str, install: Callable[[], None]) -> None:
        if (id(module), role) not in self._installed:
            self._installed.add((id(module), role))
            install()

    def _record_output(self, root: nn.Module, path: str) -> None:
        module = resolve(root, split_block(path)[0])
        self._once(module, "output", lambda: self.recorder.record_output(module, "output", lambda out: out))

    def _record_norm_input(self, root: nn.Module, path: str) -> None:
        module = resolve(root, path)
        self._once(module, "input", lambda: self.recorder.record_input(module, "input", "input"))

    def _ffn_pre_activation_path(self) -> str:
        paths = self.adapter.layer
        return paths.ffn_gate if paths.ffn_gate is not None else paths.ffn_in

    def install(self) -> None:
        paths = self.adapter.layer
        recorder = self.recorder
        first = self.layers[0]
        self._once(first, "layer_input", lambda: recorder.record_input(first, "layer_input", "hidden_states"))
        for layer in self.layers:
            attention = resolve(layer, paths.attention)
            self._once(attention, "probs", lambda m=attention: recorder.record_output(m, "probs", _attention_probs))
            force = self.adapter.force_output_attentions or _output_attentions_parameter(attention)
            if force is not None:
                self._once(attention, "force", lambda m=attention, f=force: self._force_output_attentions(m, f))
            self._record_norm_input(layer, paths.attention_norm)
            self._record_norm_input(layer, paths.ffn_norm)
            self._record_output(layer, self._ffn_pre_activation_path())
        if self.adapter.final_norm is not None:
            self._record_norm_input(self.model, self.adapter.final_norm)
        for index, step in enumerate(self.adapter.head):
            if isinstance(step, Activation):
                self._record_output(self.model, self._linear_before(index).path)
            elif isinstance(step, HeadNorm):
                self._record_norm_input(self.model, step.path)

    def _linear_before(self, index: int) -> Linear:
        for step in reversed(list(self.adapter.head)[:index]):
            if isinstance(step, Linear):
                return step
        raise ValueError(f"The head activation at step {index} of adapter {self.adapter.name!r} follows no Linear step.")

    def _force_output_attentions(self, module: nn.Module, force: tuple[int, str]) -> None:
        position, name = force
        thread = self.recorder.thread

        def hook(_module, args, kwargs):
            if threading.get_ident() != thread:
                return None
            if name in kwargs or len(args) <= position:
                kwargs = {**kwargs, name: True}
            else:
                args = args[:position] + (True,) + args[position + 1 :]
            return args, kwargs

        self.recorder.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _check_single_forward(self) -> None:
        """DecompX explains one forward pass: refuse a forward function that ran the model twice."""
        first = self.layers[0]
        per_pass = sum(layer is first for layer in self.layers)
        calls = len(self.recorder.by_module.get(id(first), {}).get("layer_input", []))
        if calls > per_pass:
            raise RuntimeError(
                f"The forward function ran the model's layers {calls // per_pass} times; DecompX "
                "decomposes one forward pass. Make the forward function call the model once."
            )

    def result(self, output: Any, logits: torch.Tensor) -> Captured:
        paths = self.adapter.layer
        occurrences: dict[tuple[int, str], int] = defaultdict(int)

        def take(module: nn.Module, role: str, where: str):
            key = (id(module), role)
            value = self.recorder.take(module, role, occurrences[key], where)
            occurrences[key] += 1
            return value

        def take_output(root: nn.Module, path: str, where: str) -> torch.Tensor:
            module_path, block = split_block(path)
            return take_block(take(resolve(root, module_path), "output", where), block)

        self._check_single_forward()
        layer_input = take(self.layers[0], "layer_input", "the first layer")
        records = []
        for index, layer in enumerate(self.layers):
            probs = take(resolve(layer, paths.attention), "probs", f"the attention of layer {index}")
            if probs is None:
                raise RuntimeError(
                    f"Layer {index}'s attention module ({paths.attention}) returned no attention "
                    "probabilities even with eager attention. Its adapter must name a module whose "
                    "output is (output, attention_probs), or set force_output_attentions."
                )
            records.append(
                LayerRecord(
                    attention_probs=probs,
                    attention_norm_input=take(resolve(layer, paths.attention_norm), "input", f"layer {index}'s attention norm"),
                    ffn_pre_activation=take_output(layer, self._ffn_pre_activation_path(), f"layer {index}'s feed-forward network"),
                    ffn_norm_input=take(resolve(layer, paths.ffn_norm), "input", f"layer {index}'s feed-forward norm"),
                )
            )
        final_norm_input = None
        if self.adapter.final_norm is not None:
            final_norm_input = take(resolve(self.model, self.adapter.final_norm), "input", "the final norm")
        head_inputs = {}
        for index, step in enumerate(self.adapter.head):
            if isinstance(step, Activation):
                head_inputs[index] = take_output(self.model, self._linear_before(index).path, f"the head step {index}")
            elif isinstance(step, HeadNorm):
                head_inputs[index] = take(resolve(self.model, step.path), "input", f"the head's {step.path}")
        return Captured(output, logits, layer_input, records, final_norm_input, head_inputs)


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
    capture = Capture(model, adapter)
    with ExitStack() as stack:
        stack.enter_context(_model_lock(model))
        stack.enter_context(eager_attention(model))
        stack.callback(capture.recorder.remove)
        capture.install()
        yield capture
