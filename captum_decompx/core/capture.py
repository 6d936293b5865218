"""Hooks on one real forward pass: the one installer of both algorithms, and the exact path's capture.

:class:`HookedPass` walks the adapter's network once (:meth:`Network.walk
<captum_decompx.components.network.Network.walk>`) and gives every component kind the pass's
:class:`~captum_decompx.core.recording.Recorder`: :class:`Capture` asks each kind what it records (the
exact path), :class:`~captum_decompx.core.freezing.Freezer` how it freezes (the fast path).
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
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterator, Optional, TypeVar

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..adapters import Adapter, resolve
from ..components.attention import fully_masked_rows
from ..components.base import Component
from ..components.layer import LayerRecord
from ..components.merging import MergeRecord
from ..components.network import Network, StackRecord
from ..components.pooling import PoolingRecord
from ..components.probe import ProbeRecord
from .recording import Reader, Recorder

__all__ = [
    "Capture",
    "Captured",
    "HookedPass",
    "LayerRecord",
    "capture_internals",
    "configs_of",
    "eager_attention",
    "hooked_pass",
    "model_lock",
]


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
            for adapters that pool a token found by its id; else None.
        probe: what an attention-pooling head recorded (``pooling="probe"``); else None.
        merges: per layer index, what the patch merging after that layer recorded (Swin's stages).
        encoder: what an encoder-decoder's encoder recorded (the other fields are then the
            decoder's); None for other models.
    """

    output: Any
    logits: torch.Tensor
    layer_input: torch.Tensor
    layers: list[LayerRecord]
    final_norm_input: Optional[torch.Tensor]
    head_inputs: dict[int, torch.Tensor]
    pooling: Optional[PoolingRecord] = None
    probe: Optional[ProbeRecord] = None
    merges: dict[int, MergeRecord] = field(default_factory=dict)
    encoder: Optional[StackRecord] = None


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


# Attention implementations whose probabilities the fast path can freeze: "eager" (a softmax call)
# and "sdpa" (the fused kernel, called with query and key cut from the graph: its probabilities
# are then constants, and it keeps its O(N) memory). Others are switched to eager for its pass.
FREEZABLE_IMPLEMENTATIONS = ("eager", "sdpa")


@contextmanager
def _attention_implementation(model: nn.Module, keep: tuple[Optional[str], ...]) -> Iterator[bool]:
    """Switch every config of the model whose attention implementation is not in ``keep`` to
    ``"eager"`` for the duration; restore each one's own value afterwards. Yields whether a
    switched config ran a fused attention kernel (``sdpa``, flash, ...)."""
    saved = []
    for config in configs_of(model):
        if "_attn_implementation_internal" not in vars(config):
            continue
        value = vars(config)["_attn_implementation_internal"]
        if value not in keep:
            saved.append((config, value))
    try:
        for config, _ in saved:
            config._attn_implementation_internal = "eager"
        yield any(value not in (None, "eager") for _, value in saved)
    finally:
        for config, value in saved:
            config._attn_implementation_internal = value


def eager_attention(model: nn.Module) -> ContextManager[bool]:
    """Run the model with eager attention (which returns its probabilities), then restore.

    Models loaded with ``sdpa`` do not return attention probabilities. This switches every config
    of the model to ``"eager"`` for the duration and restores each one's own value afterwards.

    Yields:
        True when the model itself runs a fused attention kernel (``sdpa``, flash, ...) in place
        of eager attention (see :func:`fused_kernel_softmax`).
    """
    return _attention_implementation(model, keep=())


def freezable_attention(model: nn.Module) -> ContextManager[bool]:
    """Switch configs whose attention implementation cannot be frozen (flash, flex, ...) to
    ``"eager"`` for the call; eager and sdpa stay as they are. Restored afterwards."""
    return _attention_implementation(model, keep=(None,) + FREEZABLE_IMPLEMENTATIONS)


_SOFTMAXES = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax, torch.special.softmax}


def _softmax_arguments(args: tuple, kwargs: dict) -> tuple[Tensor, int, Optional[torch.dtype]]:
    """``(input, dim, dtype)`` of a call of one of the softmaxes (any of their signatures)."""
    scores = args[0] if args else kwargs["input"]
    dim = args[1] if len(args) > 1 else kwargs["dim"]
    dtype = kwargs.get("dtype")
    if dtype is None:
        dtype = next((value for value in args[2:] if isinstance(value, torch.dtype)), None)
    return scores, int(dim), dtype


def kernel_softmax(scores: Tensor, dim: int, dtype: Optional[torch.dtype], zeroed_rows: Optional[Tensor] = None) -> Tensor:
    """The attention probabilities torch's ``scaled_dot_product_attention`` computes from masked
    scores, where eager attention computes ``softmax(scores, dim, dtype=dtype)``.

    Two differences: a query row whose every key is masked (every score at most half the dtype's
    minimum, the value Hugging Face's masks add) gets zero probabilities under a boolean mask, so the
    attention adds nothing to that row (eager attention spreads the row evenly over the masked keys,
    or, in a float64 model whose eager softmax runs in float32, where the mask minimum becomes
    ``-inf``, returns NaN); and the softmax runs in the scores' own precision when it is higher than
    ``dtype`` (the kernel computes a float64 model's attention in float64).

    Args:
        scores: (..., keys) masked attention scores, ``dim`` indexing the keys.
        zeroed_rows: the fully masked rows to give zero probabilities (:func:`fully_masked_rows` of
            ``scores``); None keeps every row's softmax (the kernel's rows under an additive mask).
            The precision rule applies either way.
    """
    compute = scores.dtype if dtype is None else torch.promote_types(scores.dtype, dtype)
    probabilities = torch.softmax(scores.to(compute), dim=dim)
    return probabilities if zeroed_rows is None else probabilities.masked_fill(zeroed_rows, 0.0)


class _KernelSoftmax(TorchFunctionMode):
    """Active inside an attention module's forward: its softmax computes :func:`kernel_softmax`
    (fully masked rows zeroed when ``zero_masked_rows``, else eager's even spread); either way, it
    notes in ``seen`` that a fully masked query row went through it."""

    def __init__(self, zero_masked_rows: bool, seen: list[bool]) -> None:
        super().__init__()
        self.zero_masked_rows = zero_masked_rows
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _SOFTMAXES:
            scores, dim, dtype = _softmax_arguments(args, kwargs)
            if not scores.dtype.is_floating_point:
                return kernel_softmax(scores, dim, dtype)
            masked = fully_masked_rows(scores, dim)
            if bool(masked.any()):
                self.seen.append(True)
            return kernel_softmax(scores, dim, dtype, masked if self.zero_masked_rows else None)
        return func(*args, **kwargs)


@contextmanager
def fused_kernel_softmax(
    recorder: Recorder, modules: list[nn.Module], *, zero_masked_rows: bool = True, seen: Optional[list[bool]] = None
) -> Iterator[None]:
    """Make the eager attention of ``modules`` compute the probabilities of the fused kernel that
    the model itself runs (:func:`kernel_softmax`), so that the captured forward pass gives the
    model's own outputs: a fully masked query row (a left-padded decoder's padding, a padding
    position outside every local window of ModernBERT) is the kernel's, not eager attention's.

    Whether the kernel zeroes such a row depends on the mask Transformers hands it (a boolean mask:
    zeroed; an additive mask of the dtype's minimum, as older versions build for some models: spread
    evenly, as eager does). ``zero_masked_rows=False`` keeps eager's rows; ``seen`` collects one entry
    per softmax that met a fully masked row, so the caller can check the pass against the model's own
    output (:meth:`Capture.met_fully_masked_rows`).

    The hooks are the ``recorder``'s (its thread only; removed with its other hooks); a mode left
    entered by a forward pass that raised is left on exit.
    """
    entered: list[_KernelSoftmax] = []
    noted = seen if seen is not None else []

    def before(_module: nn.Module, _args: Any, _kwargs: Any) -> None:
        mode = _KernelSoftmax(zero_masked_rows, noted)
        mode.__enter__()
        entered.append(mode)

    def after(_module: nn.Module, _args: Any, _output: Any) -> None:
        if entered:
            entered.pop().__exit__(None, None, None)

    try:
        for module in modules:
            recorder.pre_hook(module, "kernel softmax: enter", before)
            recorder.forward_hook(module, "kernel softmax: leave", after)
        yield
    finally:
        while entered:
            entered.pop().__exit__(None, None, None)


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
        self.encoder_calls = 0

    def install_component(self, component: Component, root: nn.Module, first: bool) -> None:
        """Install ``component``'s hooks on ``root`` (the layer, or the model); ``first``: in the first layer."""
        raise NotImplementedError

    def attention_implementation(self) -> ContextManager[Any]:
        """The attention implementation the pass runs with (restored afterwards)."""
        raise NotImplementedError

    def install(self) -> None:
        def count(_module, _args, _kwargs):
            self.layer_calls += 1

        self.recorder.pre_hook(self.layers[0], "calls", count)
        if self.adapter.encoder is not None:

            def count_encoder(_module, _args, _kwargs):
                self.encoder_calls += 1

            self.recorder.pre_hook(self.adapter.encoder.layer_modules(self.model)[0], "encoder calls", count_encoder)
        for component, root, first in self.network.walk(self.model, self.layers):
            self.install_component(component, root, first)

    def attention_modules(self) -> list[nn.Module]:
        """Every attention module of the network: self-attention, cross-attention, an encoder's."""
        stacks = [(self.layers, self.adapter.layer)]
        if self.adapter.encoder is not None:
            stacks.append((self.adapter.encoder.layer_modules(self.model), self.adapter.encoder.layer))
        modules = []
        for layers, paths in stacks:
            for path in (paths.attention, paths.cross_attention):
                modules += [] if path is None else [resolve(layer, path) for layer in layers]
        return modules

    def check_single_forward(self) -> None:
        """DecompX explains one forward pass: refuse a forward function that ran the model's layers
        more than once, or never."""
        per_pass = sum(layer is self.layers[0] for layer in self.layers)
        if self.layer_calls == 0:
            raise RuntimeError(
                "The forward function never ran the first layer. Check that `model` is the module the "
                "forward function actually calls, and that the model's architecture matches its adapter."
            )
        if self.adapter.encoder is not None and self.encoder_calls != 1:
            raise RuntimeError(
                f"The forward function ran the encoder {self.encoder_calls} times and the decoder once; DecompX "
                "decomposes one forward pass of the encoder-decoder. Make the forward function call the model once "
                "(model(input_ids=..., decoder_input_ids=...)), without running the encoder separately."
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
        stack.enter_context(model_lock(hooked.model))
        stack.enter_context(hooked.attention_implementation())
        stack.callback(hooked.close)
        hooked.install()
        yield hooked
        hooked.check_single_forward()


class Capture(HookedPass):
    """The exact path's hooks: what each component kind records; :meth:`result` assembles it.

    Args:
        zero_masked_rows: where the model runs a fused kernel, give a fully masked query row zero
            attention (the kernel's rows under a boolean mask) rather than eager's even spread.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, *, zero_masked_rows: bool = True) -> None:
        super().__init__(model, adapter)
        self.zero_masked_rows = zero_masked_rows
        self.masked_rows_seen: list[bool] = []

    @property
    def met_fully_masked_rows(self) -> bool:
        """Whether the pass ran a fused-kernel model's attention on a fully masked query row, the one
        case where the captured pass and the model's own may differ (:func:`fused_kernel_softmax`)."""
        return bool(self.masked_rows_seen)

    def install_component(self, component: Component, root: nn.Module, first: bool) -> None:
        component.install(self.recorder, root)

    @contextmanager
    def attention_implementation(self) -> Iterator[None]:
        """Eager attention, whose probabilities the capture records; where the model itself runs a
        fused kernel, its eager softmax computes that kernel's probabilities."""
        with ExitStack() as stack:
            if stack.enter_context(eager_attention(self.model)):
                stack.enter_context(
                    fused_kernel_softmax(
                        self.recorder,
                        self.attention_modules(),
                        zero_masked_rows=self.zero_masked_rows,
                        seen=self.masked_rows_seen,
                    )
                )
            yield

    def result(self, output: Any, logits: torch.Tensor) -> Captured:
        """The records of the forward pass that returned ``output`` (``logits``: (batch, classes)).

        For a model that soft-caps its logits, ``logits`` is replaced by the head's output ``z``
        before the cap, the value the decomposition explains (:func:`warn_if_logits_are_capped`).
        """
        self.recorder.raise_refusals()
        self.check_single_forward()
        uncapped = self.network.head.uncapped_logits(Reader(self.recorder), self.model)
        if uncapped is not None:
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
            output,
            logits,
            record.layer_input,
            record.layers,
            record.final_norm_input,
            record.head_inputs,
            record.pooling,
            record.probe,
            merges=record.merges,
            encoder=record.encoder,
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
        f"the capped logits the model returns (z = {cap:g} * atanh(logit / {cap:g})). The explained "
        "values reported (DecompXOutput.logits, the convergence delta, LLMDecompX's result.logits) are "
        "z too, and the bias share is the biases' share of z. To explain uncapped logits consistently, "
        "build DecompX on a model whose config.final_logit_softcapping is None.",
        UserWarning,
        stacklevel=3,
    )


@contextmanager
def capture_internals(model: nn.Module, adapter: Adapter, *, zero_masked_rows: bool = True) -> Iterator[Capture]:
    """Install the hooks that record one forward pass; remove them, whatever happens.

    Usage::

        with capture_internals(model, adapter) as capture:
            output = forward_func(*inputs)
        captured = capture.result(output, logits)

    Captures on the same model are serialized, so two ``DecompX`` objects (or threads) never see
    each other's hooks or attention setting.
    """
    warn_if_logits_are_capped(adapter)
    with hooked_pass(Capture(model, adapter, zero_masked_rows=zero_masked_rows)) as capture:
        yield capture
