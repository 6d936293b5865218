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
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .adapters import Adapter, Linear, resolve
from .adapters.base import split_block
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
def eager_attention(model: nn.Module) -> Iterator[bool]:
    """Run the model with eager attention (which returns its probabilities), then restore.

    Models loaded with ``sdpa`` do not return attention probabilities. This switches every config
    of the model to ``"eager"`` for the duration and restores each one's own value afterwards.

    Yields:
        True when the model itself runs a fused attention kernel (``sdpa``, flash, ...) in place
        of eager attention (see :func:`fused_kernel_softmax`).
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
        yield any(value not in (None, "eager") for _, _, value in saved)
    finally:
        for config, attribute, value in saved:
            setattr(config, attribute, value)


_SOFTMAXES = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax, torch.special.softmax}


def _softmax_arguments(args: tuple, kwargs: dict) -> tuple[Tensor, int, Optional[torch.dtype]]:
    """``(input, dim, dtype)`` of a call of one of the softmaxes (any of their signatures)."""
    scores = args[0] if args else kwargs["input"]
    dim = args[1] if len(args) > 1 else kwargs["dim"]
    dtype = kwargs.get("dtype")
    if dtype is None:
        dtype = next((value for value in args[2:] if isinstance(value, torch.dtype)), None)
    return scores, int(dim), dtype


def kernel_softmax(scores: Tensor, dim: int, dtype: Optional[torch.dtype]) -> Tensor:
    """The attention probabilities torch's ``scaled_dot_product_attention`` computes from masked
    scores, where eager attention computes ``softmax(scores, dim, dtype=dtype)``.

    Two differences: a query row whose every key is masked (every score at most half the dtype's
    minimum, the value Hugging Face's masks add) gets zero probabilities, so the attention adds
    nothing to that row (eager attention spreads the row evenly over the masked keys, or, in a
    float64 model whose eager softmax runs in float32, where the mask minimum becomes ``-inf``,
    returns NaN); and the softmax runs in the scores' own precision when it is higher than
    ``dtype`` (the kernel computes a float64 model's attention in float64).

    Args:
        scores: (..., keys) masked attention scores, ``dim`` indexing the keys.
    """
    compute = scores.dtype if dtype is None else torch.promote_types(scores.dtype, dtype)
    probabilities = torch.softmax(scores.to(compute), dim=dim)
    if not scores.dtype.is_floating_point:
        return probabilities
    masked = (scores <= torch.finfo(scores.dtype).min / 2).all(dim=dim, keepdim=True)
    return probabilities.masked_fill(masked, 0.0)


class _KernelSoftmax(TorchFunctionMode):
    """Active inside an attention module's forward: its softmax computes :func:`kernel_softmax`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _SOFTMAXES:
            return kernel_softmax(*_softmax_arguments(args, kwargs))
        return func(*args, **kwargs)


@contextmanager
def fused_kernel_softmax(modules: list[nn.Module]) -> Iterator[None]:
    """Make the eager attention of ``modules`` compute the probabilities of the fused kernel that
    the model itself runs (:func:`kernel_softmax`), so that the captured forward pass gives the
    model's own outputs: a fully masked query row (a left-padded decoder's padding, a padding
    position outside every local window of ModernBERT) is the kernel's, not eager attention's.

    Only calls from the entering thread are changed; the hooks are removed, and a mode left
    entered by a forward pass that raised is left, on exit.
    """
    thread = threading.get_ident()
    entered: list[_KernelSoftmax] = []

    def before(_module: nn.Module, _args: Any) -> None:
        if threading.get_ident() == thread:
            mode = _KernelSoftmax()
            mode.__enter__()
            entered.append(mode)

    def after(_module: nn.Module, _args: Any, _output: Any) -> None:
        if threading.get_ident() == thread and entered:
            entered.pop().__exit__(None, None, None)

    handles = []
    try:
        for module in {id(module): module for module in modules}.values():
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()
        while entered:
            entered.pop().__exit__(None, None, None)


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
        head_output = uncapped_head_output(self.model, self.adapter)
        if head_output is not None:
            self.recorder.record_output(head_output, "uncapped logits")

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
        """The records of the forward pass that returned ``output`` (``logits``: (batch, classes)).

        For a model that soft-caps its logits, ``logits`` is replaced by the head's output ``z``
        before the cap, the value the decomposition explains (:func:`warn_if_logits_are_capped`).
        """
        self.recorder.raise_refusals()
        self._check_single_forward()
        head_output = uncapped_head_output(self.model, self.adapter)
        if head_output is not None:
            uncapped = self.recorder.calls(head_output, "uncapped logits")
            if len(uncapped) != 1 or uncapped[0].shape != logits.shape:
                raise RuntimeError(
                    f"The {self.adapter.name} model soft-caps its logits, and DecompX explains its head's output "
                    "before the cap; but the head ran "
                    f"{len(uncapped)} time(s) or returned another shape than the model's logits "
                    f"{tuple(logits.shape)}. Make the forward function call the model once and return its logits."
                )
            logits = uncapped[0]
        record = self.network.read(Reader(self.recorder), self.model, self.layers)
        return Captured(
            output, logits, record.layer_input, record.layers, record.final_norm_input, record.head_inputs, record.pooling
        )


def uncapped_head_output(model: nn.Module, adapter: Adapter) -> Optional[nn.Module]:
    """The module whose output is the logits before a final-logit soft-cap (the head's last linear
    map); None when the adapter's model does not cap its logits."""
    if adapter.logit_softcap is None:
        return None
    last_step = adapter.head[-1]
    if not isinstance(last_step, Linear):
        raise ValueError(f"The adapter {adapter.name!r} soft-caps its logits: its head must end in a Linear step.")
    return resolve(model, split_block(last_step.path)[0])


def warn_if_logits_are_capped(adapter: Adapter) -> None:
    """Warn that a final-logit soft-cap (``cap * tanh(z / cap)``) is not decomposed."""
    cap = adapter.logit_softcap
    if cap is None:
        return
    warnings.warn(
        f"This {adapter.name} model soft-caps its logits: it returns {cap:g} * tanh(z / {cap:g}) of the "
        "head's output z (config.final_logit_softcapping). The cap is nonlinear and DecompX does "
        "not decompose it: the attributions explain z, the logits BEFORE the cap, and sum to z, not to "
        f"the capped logits the model returns (z = {cap:g} * atanh(logit / {cap:g})). The explained "
        "values reported (DecompXOutput.logits, the convergence delta, LLMDecompX's result.logits) are "
        "z too, and the bias share is the biases' share of z. To explain uncapped logits consistently, "
        "build DecompX on a model whose config.final_logit_softcapping is None.",
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
        if stack.enter_context(eager_attention(model)):
            attention = [resolve(layer, adapter.layer.attention) for layer in capture.layers]
            stack.enter_context(fused_kernel_softmax(attention))
        stack.callback(capture.recorder.remove)
        capture.install()
        yield capture
