"""The fast path's frozen forward pass: the real model, run once, with every nonlinear
coefficient frozen for autograd while every value stays bit-for-bit the same.

Without biases, DecompX is the linear map of the embeddings whose coefficients (normalization
statistics, activation slopes, gates, attention probabilities, the head's activation slope) are
fixed by the real forward pass (spec, "Cost, and the fast path"). Running the real model with
those coefficients cut from the autograd graph therefore builds exactly that map's graph; one
backward pass then gives every token's share ``<dF/de_k, e_k>``.

The module has two parts:

* **Freezing rules**, one small object per component kind (:data:`FREEZING_RULES`): given the
  real input and output of a component, each returns a tensor equal to the real output whose
  gradient is the frozen linear map's. They hold no knowledge of where the components live.
* :func:`frozen_forward`, the one context manager that installs the hooks applying these rules to
  the modules an :class:`~captum_decompx.adapters.Adapter` names, and removes them (and restores
  the attention implementation) whatever happens.

Attention probabilities are frozen inside each attention module's forward call by a
``TorchFunctionMode`` entered by the module's pre-hook and left by its forward hook: an eager
implementation's softmax output is detached; torch's fused ``scaled_dot_product_attention`` (the
``"sdpa"`` implementation) is called with its query and key detached, which freezes the
probabilities while the kernel keeps its O(N) memory. This works whichever code dispatches the
attention (transformers' attention interface or a model's own, e.g. DeBERTa-v2's), on transformers
4.57 and 5. Other implementations (flash, flex) are switched to eager for the call.

Besides the embeddings, the pass creates two more leaves: ``own_scale`` (batch, seq, 1) multiplies
(by exactly one) the biases a token owns before the first attention mixes tokens (the first
layer's value bias, a pre-LN model's first norm bias), so its gradient is each token's share of
them; ``dropped`` (batch,) multiplies (by one) what the decomposition leaves out although the
model computes it (the feed-forward outputs with ``include_ffn=False``, the part of a GELU that
the ``"relu"`` approximation drops), so that the bias share can exclude it as the exact path does.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .adapters import Activation, Adapter, Linear, resolve
from .adapters.base import Norm as HeadNorm
from .adapters.base import split_block, take_block
from .capture import configs_of, model_lock
from .components import Settings
from .components.activations import approximation as registered_approximation
from .components.linear import affine
from .components.norms import NormKind, norm_kind_of

# --------------------------------------------------------------------------------------------
# Autograd functions: the real value forward, the frozen linear map backward


class _FrozenSlope(torch.autograd.Function):
    """Returns ``value`` (the real output); the gradient to ``pre_activation`` is ``grad * slope``."""

    @staticmethod
    def forward(ctx: Any, pre_activation: Tensor, value: Tensor, slope: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(slope)
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


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


def _zero_with_gradient(leaf: Tensor, vector: Tensor) -> Tensor:
    """A tensor of zeros whose gradient to ``leaf`` is ``<grad, vector>``: ``(leaf - leaf) * vector``
    (``leaf`` holds ones, so adding this to a value changes no bit of it)."""
    return (leaf - leaf.detach()) * vector


# --------------------------------------------------------------------------------------------
# Freezing rules, one per component kind


@dataclass(frozen=True)
class NormFreezing:
    """A normalization, read through its registered norm kind
    (:mod:`captum_decompx.components.norms`: LayerNorm, RMSNorm, Gemma's RMSNorm, a user's): the
    kind's statistic of the real input is a constant; its linear part (centring) and its gain stay."""

    norm_kind: NormKind
    kind: str = "norm"

    def freeze(self, module: nn.Module, norm_input: Tensor, value: Tensor) -> Tensor:
        statistic = self.norm_kind.statistic(norm_input.detach().to(torch.promote_types(norm_input.dtype, torch.float32)))
        inv_scale = (statistic + self.norm_kind.eps(module)).rsqrt().to(value.dtype)
        gain = self.norm_kind.gain(module)
        gain = None if gain is None else gain.detach().to(value.dtype)
        return _FrozenNorm.apply(norm_input, value.detach(), inv_scale, gain, self.norm_kind.centre)


@dataclass(frozen=True)
class PointwiseFreezing:
    """A pointwise activation ``y = f(a)`` frozen by its registered approximation's
    :meth:`~captum_decompx.components.activations.Approximation.frozen_slope`: ``"zo"`` slope
    ``f(a) / (a + 1e-12)`` (``f'(0)`` where ``a == 0``); ``"la"`` slope ``f'(a)`` (the intercept is a bias); ``"relu"`` slope
    ``a > 0``, and ``f(a) - a * (a > 0)`` is left out of the decomposition (returned as
    ``dropped``, see :func:`frozen_forward`)."""

    approximation: str
    kind: str = "activation"

    def freeze(
        self, function: Callable[[Tensor], Tensor], pre_activation: Tensor, value: Tensor
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Returns the frozen output (equal to ``value``) and what the approximation drops, or None."""
        approximation = registered_approximation(self.approximation)  # the registered component kind's rule
        slope, dropped = approximation.frozen_slope(function, pre_activation.detach(), value.detach())
        return _FrozenSlope.apply(pre_activation, value.detach(), slope), dropped


@dataclass(frozen=True)
class GatedUnitFreezing:
    """A gated unit ``act(g) * u``: the real gate ``act(g)`` is a constant coefficient of ``u``."""

    kind: str = "gated_unit"

    def freeze(self, gate_value: Tensor) -> Tensor:
        return gate_value.detach()


@dataclass(frozen=True)
class AttentionProbabilityFreezing:
    """Attention probabilities, as the real forward pass produced them, are constants."""

    kind: str = "attention_probabilities"

    def freeze(self, probabilities: Tensor) -> Tensor:
        return probabilities.detach()


@dataclass(frozen=True)
class HeadActivationFreezing(PointwiseFreezing):
    """The classification head's activation (``"zo"`` or ``"la"``), frozen like a pointwise one."""

    kind: str = "head_activation"


FREEZING_RULES: dict[str, Callable[..., Any]] = {
    "norm": NormFreezing,
    "activation": PointwiseFreezing,
    "gated_unit": GatedUnitFreezing,
    "attention_probabilities": AttentionProbabilityFreezing,
    "head_activation": HeadActivationFreezing,
}
"""Component kind -> the class of its freezing rule (activations take the approximation, norms
their registered norm kind)."""


def norm_freezing(module: nn.Module) -> Optional[NormFreezing]:
    """The freezing rule of a normalization module (by its registered norm kind); None for ``nn.Identity``."""
    if isinstance(module, nn.Identity):
        return None
    return FREEZING_RULES["norm"](norm_kind_of(module))


# --------------------------------------------------------------------------------------------
# The frozen forward pass


_SOFTMAXES = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax, torch.special.softmax}
_FUSED_ATTENTION = torch.nn.functional.scaled_dot_product_attention
# Attention implementations whose probabilities the pass can freeze: "eager" (a softmax call) and
# "sdpa" (the fused kernel, called with query and key cut from the graph: its probabilities are
# then constants, and it keeps its O(N) memory). Others are switched to eager for the call.
FREEZABLE_IMPLEMENTATIONS = ("eager", "sdpa")


class _FreezeAttention(TorchFunctionMode):
    """Active inside an attention module's forward: freezes its probabilities, whichever of the
    freezable implementations computes them, and counts that it did."""

    def __init__(self, rule: AttentionProbabilityFreezing) -> None:
        super().__init__()
        self.rule = rule
        self.count = 0
        self.real_tokens: Optional[Tensor] = None
        self.watch = False  # record the attended keys of this call (the first layer's)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is _FUSED_ATTENTION:
            self.count += 1
            args, kwargs = _detach_query_key(args, kwargs)
            if self.watch:
                self.real_tokens = _attended_by_mask(args, kwargs)
                self.watch = False
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if func in _SOFTMAXES:
            self.count += 1
            if self.watch:
                self.real_tokens = (result != 0).flatten(1, -2).any(1)
                self.watch = False
            return self.rule.freeze(result)
        return result


def _detach_query_key(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``scaled_dot_product_attention``'s query and key, cut from the graph."""
    positional = list(args)
    for position, name in ((0, "query"), (1, "key")):
        if len(positional) > position:
            positional[position] = positional[position].detach()
        elif name in kwargs:
            kwargs = {**kwargs, name: kwargs[name].detach()}
    return tuple(positional), kwargs


def _attended_by_mask(args: tuple, kwargs: dict) -> Optional[Tensor]:
    """(batch, keys) bool: keys some query may attend to, from a fused attention call's mask."""
    query = args[0] if args else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs["key"]
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    batch, keys = query.shape[0], key.shape[-2]
    if mask is None:
        return torch.ones(batch, keys, dtype=torch.bool, device=query.device)
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    allowed = allowed.reshape(allowed.shape[0], -1, allowed.shape[-1]).any(1)
    return allowed.expand(batch, keys)


@contextmanager
def freezable_attention(model: nn.Module) -> Iterator[None]:
    """Switch configs whose attention implementation cannot be frozen (flash, flex, ...) to
    ``"eager"`` for the call; eager and sdpa stay as they are. Restored afterwards."""
    saved = []
    for config in configs_of(model):
        if "_attn_implementation_internal" not in vars(config):
            continue
        value = vars(config)["_attn_implementation_internal"]
        if value is not None and value not in FREEZABLE_IMPLEMENTATIONS:
            saved.append((config, value))
    try:
        for config, _ in saved:
            config._attn_implementation_internal = "eager"
        yield
    finally:
        for config, value in saved:
            config._attn_implementation_internal = value


@dataclass
class FrozenForward:
    """What the frozen forward pass leaves for the backward pass.

    Attributes:
        embeddings: (batch, seq, hidden) leaf, the first layer's input.
        own_scale: (batch, seq, 1) leaf of ones scaling the biases each token owns before mixing.
        dropped: (batch,) leaf of ones scaling what the decomposition leaves out.
        head_input: the input of the head's first step, (batch, hidden) or (batch, seq, hidden).
        real_tokens: (batch, seq) bool, tokens some query attends to in the first layer.
    """

    embeddings: Optional[Tensor] = None
    own_scale: Optional[Tensor] = None
    dropped: Optional[Tensor] = None
    head_input: Optional[Tensor] = None
    real_tokens: Optional[Tensor] = None
    first_layer_calls: int = 0
    hooks: list = field(default_factory=list)

    def leaves(self) -> list[Tensor]:
        return [leaf for leaf in (self.embeddings, self.own_scale, self.dropped) if leaf is not None]


def _replace_first(args: tuple, kwargs: dict, name: str, value: Tensor) -> tuple[tuple, dict]:
    if args:
        return (value,) + tuple(args[1:]), kwargs
    if name in kwargs:
        return args, {**kwargs, name: value}
    for key, item in kwargs.items():
        if isinstance(item, Tensor):
            return args, {**kwargs, key: value}
    raise RuntimeError(f"could not find {name!r} in the arguments of the first layer")


def _first_tensor(args: tuple, kwargs: dict, name: str) -> Tensor:
    if args:
        return args[0]
    if name in kwargs:
        return kwargs[name]
    for value in kwargs.values():
        if isinstance(value, Tensor):
            return value
    raise RuntimeError(f"could not find {name!r} in the arguments of a hooked module")


class _Installer:
    """Installs the freezing hooks of one pass; every hook acts only in the installing thread."""

    def __init__(self, model: nn.Module, adapter: Adapter, settings: Settings, state: FrozenForward) -> None:
        self.model, self.adapter, self.settings, self.state = model, adapter, settings, state
        self.thread = threading.get_ident()
        self.layers = adapter.layer_modules(model)
        if not self.layers:
            raise ValueError(f"The adapter {adapter.name!r} found no layers at {adapter.layers!r}.")
        self.done: set[tuple[int, str]] = set()
        self.modes: list[_FreezeAttention] = []

    def mine(self) -> bool:
        return threading.get_ident() == self.thread

    def once(self, module: nn.Module, role: str) -> bool:
        key = (id(module), role)
        if key in self.done:
            return False
        self.done.add(key)
        return True

    def forward_hook(self, module: nn.Module, hook: Callable) -> None:
        self.state.hooks.append(module.register_forward_hook(hook))

    def pre_hook(self, module: nn.Module, hook: Callable) -> None:
        self.state.hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    # -- the pieces ---------------------------------------------------------------------------

    def embeddings(self) -> None:
        state = self.state

        def hook(_module, args, kwargs):
            if not self.mine():
                return None
            state.first_layer_calls += 1
            if state.first_layer_calls > 1:
                return None
            hidden = _first_tensor(args, kwargs, "hidden_states")
            state.embeddings = hidden.detach().requires_grad_(True)
            batch, seq = hidden.shape[:2]
            state.own_scale = torch.ones(batch, seq, 1, dtype=hidden.dtype, device=hidden.device, requires_grad=True)
            state.dropped = torch.ones(batch, dtype=hidden.dtype, device=hidden.device, requires_grad=True)
            return _replace_first(args, kwargs, "hidden_states", state.embeddings)

        self.pre_hook(self.layers[0], hook)

    def own_bias(self, module: nn.Module, bias: Optional[Tensor], then: Optional[Callable] = None) -> None:
        """On the module's first call, add the token-owned share of ``bias`` (zero-valued)."""
        calls = [0]
        state = self.state

        def hook(_module, args, output):
            if not self.mine():
                return None
            if then is not None:
                output = then(_module, args, output)
            calls[0] += 1
            if calls[0] == 1 and bias is not None and state.own_scale is not None:
                output = output + _zero_with_gradient(state.own_scale, bias.to(output.dtype))
            return output

        self.forward_hook(module, hook)

    def norm(self, module: nn.Module, own_bias: bool = False) -> None:
        rule = norm_freezing(module)
        if rule is None or not self.once(module, "norm"):
            return

        def freeze(_module, args, output):
            return rule.freeze(_module, args[0], output)

        if own_bias:
            self.own_bias(module, getattr(module, "bias", None), then=freeze)
            return

        def hook(_module, args, output):
            return freeze(_module, args, output) if self.mine() else None

        self.forward_hook(module, hook)

    def value_bias(self, layer: nn.Module) -> None:
        path, block = split_block(self.adapter.layer.value)
        module = resolve(layer, path)
        parameter = next(module.parameters(), None)
        dtype = parameter.dtype if parameter is not None and parameter.dtype.is_floating_point else torch.float32
        # The linear kind's own reading of the map (plain, Conv1D, fused, LoRA: its effective bias).
        bias = affine(layer, path, dtype).bias
        if bias is None:
            return
        own = bias.detach()
        if block is not None:  # only the value block of a fused projection's bias
            own = torch.zeros_like(own)
            take_block(own, block, dim=0).copy_(take_block(bias.detach(), block, dim=0))
        self.own_bias(module, own)

    def attention(self, module: nn.Module, first: bool) -> None:
        if not self.once(module, "attention"):
            return
        mode = _FreezeAttention(FREEZING_RULES["attention_probabilities"]())
        state = self.state
        where = f"{type(module).__name__} ({self.adapter.layer.attention})"

        def before(_module, args, kwargs):
            if not self.mine():
                return None
            mode.count = 0
            mode.watch = first and state.real_tokens is None
            mode.__enter__()
            self.modes.append(mode)
            return None

        def after(_module, args, output):
            if not self.mine():
                return None
            if self.modes and self.modes[-1] is mode:
                self.modes.pop()
                mode.__exit__(None, None, None)
            if mode.count == 0:
                raise RuntimeError(
                    f"The attention module {where} computed its probabilities neither with a softmax nor "
                    "with torch's scaled_dot_product_attention, so the fast path cannot freeze them. Use "
                    "method='exact', or run the model with attn_implementation='eager' or 'sdpa'."
                )
            if mode.real_tokens is not None and state.real_tokens is None:
                state.real_tokens = mode.real_tokens
            mode.real_tokens = None
            return None

        self.pre_hook(module, before)
        self.forward_hook(module, after)

    def feed_forward(self, layer: nn.Module) -> None:
        paths = self.adapter.layer
        if not self.settings.include_ffn:
            out = resolve(layer, split_block(paths.ffn_out)[0])
            if self.once(out, "dropped"):
                state = self.state

                def drop(_module, args, output):
                    if not self.mine() or state.dropped is None:
                        return None
                    return output.detach() * state.dropped.view((-1,) + (1,) * (output.dim() - 1))

                self.forward_hook(out, drop)
            return
        activation = resolve(layer, paths.ffn_activation)
        if paths.ffn_gate is not None:
            if not isinstance(activation, nn.Module):
                raise TypeError(
                    f"The fast path freezes the gate of a gated unit by hooking its activation module; "
                    f"{paths.ffn_activation} is a {type(activation).__name__}. Use method='exact'."
                )
            gated = FREEZING_RULES["gated_unit"]()
            if self.once(activation, "gate"):
                self.forward_hook(activation, lambda _m, _a, output: gated.freeze(output) if self.mine() else None)
            return
        rule = FREEZING_RULES["activation"](self.settings.ffn_approximation)
        if isinstance(activation, nn.Module):
            if self.once(activation, "activation"):

                def hook(module, args, output):
                    if not self.mine():
                        return None
                    return self._apply_pointwise(rule, module.forward, args[0], output)

                self.forward_hook(activation, hook)
            return
        self._between(
            resolve(layer, split_block(paths.ffn_in)[0]), resolve(layer, split_block(paths.ffn_out)[0]), rule, activation
        )

    def _apply_pointwise(self, rule: PointwiseFreezing, function: Callable, pre_activation: Tensor, value: Tensor) -> Tensor:
        frozen, dropped = rule.freeze(function, pre_activation, value)
        if dropped is not None and self.state.dropped is not None:
            leaf = self.state.dropped.view((-1,) + (1,) * (value.dim() - 1))
            frozen = frozen + _zero_with_gradient(leaf, dropped)
        return frozen

    def _between(self, before: nn.Module, after: nn.Module, rule: PointwiseFreezing, function: Callable) -> None:
        """Freeze an activation that is not a module: the output of ``before`` is its input, the
        input of ``after`` its output."""
        pre: list[Tensor] = []

        def record(_module, _args, output):
            if self.mine():
                pre[:] = [output]

        def replace(_module, args, kwargs):
            if not self.mine() or not pre:
                return None
            value = _first_tensor(args, kwargs, "input")
            if value.shape != pre[0].shape:
                raise RuntimeError(
                    f"The fast path expected the input of {type(_module).__name__} to be the activation of "
                    f"the previous linear map's output {tuple(pre[0].shape)}, found {tuple(value.shape)}."
                )
            frozen = self._apply_pointwise(rule, function, pre[0], value)
            pre.clear()
            return _replace_first(args, kwargs, "input", frozen)

        self.forward_hook(before, record)
        self.pre_hook(after, replace)

    def head(self) -> None:
        steps = list(self.adapter.head)
        state = self.state
        if not steps:  # a bare encoder: its hidden states are the output
            return
        first_module = resolve(self.model, split_block(steps[0].path)[0]) if isinstance(steps[0], (Linear, HeadNorm)) else None
        if first_module is not None:

            def record(_module, args, kwargs):
                if self.mine() and state.head_input is None:
                    state.head_input = _first_tensor(args, kwargs, "input")

            self.pre_hook(first_module, record)
        for index, step in enumerate(steps):
            if isinstance(step, HeadNorm):
                self.norm(resolve(self.model, step.path))
            elif isinstance(step, Activation):
                previous = [s for s in steps[:index] if isinstance(s, Linear)]
                following = steps[index + 1] if index + 1 < len(steps) else None
                if not previous or not isinstance(following, (Linear, HeadNorm)):
                    raise ValueError(
                        f"The head activation at step {index} of adapter {self.adapter.name!r} must sit between a Linear step and a Linear or Norm step."
                    )
                function = step.function if step.function is not None else resolve(self.model, str(step.path))
                if isinstance(function, nn.Module):
                    function = function.forward  # the slope's evaluation runs no hooks
                rule = FREEZING_RULES["head_activation"](self.settings.head_approximation)
                self._between(
                    resolve(self.model, split_block(previous[-1].path)[0]),
                    resolve(self.model, split_block(following.path)[0]),
                    rule,
                    function,
                )

    def install(self) -> None:
        paths = self.adapter.layer
        self.embeddings()
        for index, layer in enumerate(self.layers):
            first = index == 0
            self.attention(resolve(layer, paths.attention), first)
            pre_norm = self.adapter.norm_position == "pre"
            self.norm(resolve(layer, paths.attention_norm), own_bias=first and pre_norm)
            self.norm(resolve(layer, paths.ffn_norm))
            for output_norm in (paths.attention_output_norm, paths.ffn_output_norm):  # sandwich norms
                if output_norm is not None:
                    self.norm(resolve(layer, output_norm))
            if first:
                self.value_bias(layer)
            self.feed_forward(layer)
        if self.adapter.final_norm is not None:
            self.norm(resolve(self.model, self.adapter.final_norm))
        self.head()

    def close(self) -> None:
        while self.modes:  # an error inside an attention module left its mode entered
            self.modes.pop().__exit__(None, None, None)
        for handle in self.state.hooks:
            handle.remove()
        self.state.hooks.clear()

    def check_single_forward(self) -> None:
        per_pass = sum(layer is self.layers[0] for layer in self.layers)
        if self.state.first_layer_calls == 0:
            raise RuntimeError(
                "The forward function never ran the first layer. Check that `model` is the module the "
                "forward function actually calls, and that the model's architecture matches its adapter."
            )
        if self.state.first_layer_calls > per_pass:
            raise RuntimeError(
                f"The forward function ran the model's layers {self.state.first_layer_calls // per_pass} times; "
                "DecompX decomposes one forward pass. Make the forward function call the model once."
            )


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
    state = FrozenForward()
    installer = _Installer(model, adapter, settings, state)
    with ExitStack() as stack:
        stack.enter_context(model_lock(model))
        stack.enter_context(freezable_attention(model))
        stack.enter_context(torch.enable_grad())
        stack.callback(installer.close)
        installer.install()
        yield state
        installer.check_single_forward()
