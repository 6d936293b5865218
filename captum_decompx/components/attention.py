"""Attention: values of every piece, mixed by the real attention probabilities, then ``W_O``.

Recorded (exact path): the attention module's probabilities (batch, heads, seq, seq),
post-softmax, read from its output ``(output, attention_probs)`` under eager attention.
Grouped-query attention (fewer key-value heads than query heads) is read from the value map's width.

Frozen (fast path): the probabilities are frozen inside each attention module's forward call by a
``TorchFunctionMode`` entered by the module's pre-hook and left by its forward hook: an eager
implementation's softmax output is detached; torch's fused ``scaled_dot_product_attention`` (the
``"sdpa"`` implementation) is called with its query and key detached, which freezes the
probabilities while the kernel keeps its O(N) memory. This works whichever code dispatches the
attention (transformers' attention interface or a model's own, e.g. DeBERTa-v2's), on transformers
4.57 and 5. Other implementations (flash, flex) run as eager for the pass
(:func:`~captum_decompx.core.capture.freezable_attention`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..adapters.base import resolve
from ..core.recording import Reader, Recorder
from .base import Component
from .linear import Affine, LinearMap
from .pieces import add_to_own_pieces

if TYPE_CHECKING:
    from ..core.freezing import Freezer

# The exact path computes a layer's values in this many blocks of rows (bounds the transient memory).
VALUE_BLOCKS = 8


def split_heads(values: Tensor, kv_heads: int) -> Tensor:
    """(batch, seq, pieces, kv_heads*head_dim) -> (batch, kv_heads, seq, pieces*head_dim)."""
    batch, seq, pieces, dim = values.shape
    head_dim = dim // kv_heads
    return (
        values.view(batch, seq, pieces, kv_heads, head_dim)
        .permute(0, 3, 1, 2, 4)
        .reshape(batch, kv_heads, seq, pieces * head_dim)
    )


def mix_heads(probs: Tensor, head_values: Tensor, pieces: int) -> Tensor:
    """Attention mixing of split values; query head ``h`` reads key-value head
    ``h // (heads // kv_heads)`` (grouped-query attention when ``kv_heads < heads``).

    Args:
        probs: (batch, heads, rows, seq).
        head_values: (batch, kv_heads, seq, pieces*head_dim), from :func:`split_heads`.

    Returns:
        (batch, rows, pieces, heads*head_dim).
    """
    batch, heads, rows, seq = probs.shape
    kv_heads = head_values.shape[1]
    group = heads // kv_heads
    grouped = probs.reshape(batch, kv_heads, group * rows, seq)
    mixed = grouped @ head_values
    head_dim = mixed.shape[-1] // pieces
    return (
        mixed.view(batch, kv_heads, group, rows, pieces, head_dim)
        .permute(0, 3, 4, 1, 2, 5)
        .reshape(batch, rows, pieces, heads * head_dim)
    )


def attention_bias(value: Affine, output: Affine, first: bool, heads: int) -> Optional[Tensor]:
    """The bias the attention block adds after mixing: ``b_O`` in the first layer (whose value
    bias belongs to the tokens), ``W_O b_v + b_O`` after it (rows of the attention probabilities
    sum to one, so the value bias passes through them unchanged; with grouped-query attention
    each key-value head's bias serves its group of query heads)."""
    out_bias = output.bias
    value_bias = value.bias
    if first or value_bias is None:
        return out_bias
    head_dim = output.weight.shape[1] // heads
    kv_heads = value_bias.shape[0] // head_dim
    value_bias = value_bias.view(kv_heads, head_dim).repeat_interleave(heads // kv_heads, dim=0).flatten()
    carried = output.weight @ value_bias
    return carried if out_bias is None else carried + out_bias


def attention_values(
    pieces: Tensor, value: Affine, output: Affine, heads: int, *, first: bool, own_scale: Optional[Tensor]
) -> Tensor:
    """Value vectors of every piece, split by key-value head: (batch, kv_heads, seq, pieces*head_dim).

    In the first layer the value bias belongs to each row's own token.
    """
    head_dim = output.weight.shape[1] // heads
    weight, bias = value.weight, value.bias if first else None
    kv_heads = weight.shape[0] // head_dim
    batch, seq, n_pieces, _ = pieces.shape

    def split_values(rows: slice) -> Tensor:  # (batch, kv_heads, rows, pieces*head_dim)
        values = pieces[:, rows] @ weight.T
        if bias is not None:
            values = add_to_own_pieces(values, bias, own_scale, first_row=rows.start)
        return split_heads(values, kv_heads)

    if n_pieces == 1 or pieces.requires_grad:
        return split_values(slice(0, seq))
    # Many pieces: a block of rows at a time, so that the unsplit values never exist whole.
    split = pieces.new_empty(batch, kv_heads, seq, n_pieces * head_dim, dtype=torch.result_type(pieces, weight))
    block = -(-seq // VALUE_BLOCKS)
    for start in range(0, seq, block):
        rows = slice(start, min(seq, start + block))
        split[:, :, rows] = split_values(rows)
    return split


def _attention_probs(output: Any, index: int = 1) -> Optional[Tensor]:
    if isinstance(output, tuple) and len(output) > index:
        return output[index]
    return None


def _check_probabilities(probs: Any, where: str, index: int = 1) -> None:
    """Refuse a second output that is not post-softmax attention probabilities (batch, heads, seq, seq):
    each row sums to 1 (or to 0, a row masked out whole or a head masked by ``head_mask``)."""
    advice = (
        f"The exact path reads the attention module's output[{index}] as its post-softmax probabilities "
        "(batch, heads, queries, keys). Point the adapter's attention= at the module that returns "
        "(output, attention_probs), or set force_output_attentions=(position, name) to the argument "
        "that makes it return them."
    )
    if not isinstance(probs, Tensor) or probs.dim() != 4:
        found = f"a tensor of shape {tuple(probs.shape)}" if isinstance(probs, Tensor) else f"a {type(probs).__name__}"
        raise RuntimeError(f"{where[0].upper()}{where[1:]} returned {found} as its second output. {advice}")
    sums = probs.detach().sum(-1, dtype=torch.float32)
    tolerance = 1e-2 if probs.dtype in (torch.float16, torch.bfloat16) else 1e-4
    # Rows that are not finite come from a model whose own output is not finite: the forward
    # contract refuses that with its reason (check_finite), so they are not judged here.
    finite = torch.isfinite(sums)
    if not bool((((sums - 1).abs() <= tolerance) | (sums.abs() <= tolerance) | ~finite).all()):
        raise RuntimeError(
            f"{where[0].upper()}{where[1:]} returned a second output whose rows do not sum to 1 (they sum "
            f"to {float(sums.min()):.4g} .. {float(sums.max()):.4g}), so they are not attention probabilities "
            f"(pre-softmax scores?). {advice}"
        )


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


def _hand_back_unrequested(recorder: Recorder, module: nn.Module, force: tuple[int, str], index: int) -> None:
    """Give a call that did not ask for the probabilities the output it asked for: ``output``
    without ``output[index]``, taken out after the recording hook has read them.

    Its caller indexes the output by the flag it passed: T5's decoder stack on transformers 4.x
    reads the cross-attention's position bias at index 2 unless it asked for the probabilities,
    and would otherwise add the self-attention's probabilities (batch, heads, target, target)
    in its place.
    """
    position, name = force
    asked: list[bool] = []  # a stack: one entry per call in progress

    def before(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        asked.append(bool(args[position] if len(args) > position else kwargs.get(name, False)))

    def after(_module: nn.Module, _args: tuple, output: Any) -> Any:
        if asked.pop() or not isinstance(output, tuple) or len(output) <= index:
            return None
        return output[:index] + output[index + 1 :]

    recorder.pre_hook(module, "probs: the caller's request", before)
    recorder.forward_hook(module, "probs: the output asked for", after)


_SOFTMAXES = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax, torch.special.softmax}
_FUSED_ATTENTION = torch.nn.functional.scaled_dot_product_attention


class _FreezeAttention(TorchFunctionMode):
    """Active inside an attention module's forward: freezes its probabilities, whichever of the
    freezable implementations computes them, and counts that it did."""

    def __init__(self) -> None:
        super().__init__()
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
            args, kwargs = _spread_fully_masked_rows(args, kwargs)
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if func in _SOFTMAXES:
            self.count += 1
            if self.watch:
                self.real_tokens = (result != 0).flatten(1, -2).any(1)
                self.watch = False
            return result.detach()  # the probabilities, as the real pass produced them, are constants
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


def masked_by_minimum(values: Tensor) -> Tensor:
    """Where an additive attention mask (or the scores it was added to) masks: at most half the
    dtype's minimum, the value Hugging Face's masks add. Same shape as ``values`` (floating point)."""
    return values <= torch.finfo(values.dtype).min / 2


def fully_masked_rows(values: Tensor, dim: int = -1) -> Tensor:
    """The query rows of additive-mask ``values`` whose every key along ``dim`` is masked (kept as a
    dimension of size 1, for broadcasting)."""
    return masked_by_minimum(values).all(dim=dim, keepdim=True)


def _spread_fully_masked_rows(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """An additive mask's fully masked query rows, given scores that are equal by construction.

    Under an additive mask (the dtype's minimum at masked keys, as older Transformers versions build
    for some models), a query row whose every key is masked gets even probabilities over all keys
    in the forward pass; but torch's fused backward recomputes them from the row's log-sum-exp, where
    the minimum swallows the ``log(keys)`` term, and returns gradients ``keys`` times too large. Such a
    row gets a zero mask and a zero (detached) query here: the same even probabilities, computed without
    the huge offset, so the value gradient is right. A boolean mask (whose fully masked rows the kernel
    zeroes) and rows with a key left are untouched.
    """
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    if mask is None or mask.dtype == torch.bool or not mask.dtype.is_floating_point:
        return args, kwargs
    fully_masked = fully_masked_rows(mask)
    if not bool(fully_masked.any()):
        return args, kwargs
    query = args[0] if args else kwargs["query"]
    query = query.masked_fill(fully_masked, 0.0)  # (..., queries, 1) broadcasts over the heads and features
    mask = mask.masked_fill(fully_masked, 0.0)
    positional = list(args)
    if positional:
        positional[0] = query
    else:
        kwargs = {**kwargs, "query": query}
    if len(positional) > 3:
        positional[3] = mask
    else:
        kwargs = {**kwargs, "attn_mask": mask}
    return tuple(positional), kwargs


def _attended_by_mask(args: tuple, kwargs: dict) -> Optional[Tensor]:
    """(batch, keys) bool: keys some query may attend to, from a fused attention call's mask."""
    query = args[0] if args else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs["key"]
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    batch, keys = query.shape[0], key.shape[-2]
    if mask is None:
        return torch.ones(batch, keys, dtype=torch.bool, device=query.device)
    allowed = mask if mask.dtype == torch.bool else ~masked_by_minimum(mask)
    allowed = allowed.reshape(allowed.shape[0], -1, allowed.shape[-1]).any(1)
    return allowed.expand(batch, keys)


@dataclass(frozen=True)
class AttentionParams:
    """The value map (all key-value heads) and ``W_O``."""

    value: Affine
    output: Affine


@dataclass(frozen=True)
class Attention(Component):
    """Attention at ``path`` with its value map and output map (``W_O``).

    Attributes:
        force_output_attentions: ``(position, name)`` of an argument that must be True for the
            module to return its probabilities; found from the signature when None.
        probs_index: where the module's output tuple holds the probabilities.
        probs_on_request: the module holds its probabilities in its output only when asked, and
            its caller indexes the output by the flag it passed (see
            :class:`~captum_decompx.adapters.LayerPaths`): a call that did not ask gets its output
            back without them once they are recorded.
    """

    path: str
    value: LinearMap
    output: LinearMap
    force_output_attentions: Optional[tuple[int, str]] = None
    probs_index: int = 1
    probs_on_request: bool = False

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        module = resolve(root, self.path)
        index = self.probs_index
        recorder.record_output(module, "probs", lambda output: _attention_probs(output, index))
        force = self.force_output_attentions or _output_attentions_parameter(module)
        if force is not None and self.probs_on_request:
            _hand_back_unrequested(recorder, module, force, index)  # its pre-hook reads the caller's flag first
        if force is not None:
            recorder.set_argument(module, "force", force[0], force[1], True)

    def read(self, reader: Reader, root: nn.Module, where: str) -> Tensor:
        """(batch, heads, seq, seq), the real attention probabilities."""
        probs = reader.take(resolve(root, self.path), "probs", where)
        if probs is None and "sdpa" in type(resolve(root, self.path)).__name__.lower():
            raise RuntimeError(
                f"{where[0].upper()}{where[1:]} ({self.path}) is {type(resolve(root, self.path)).__name__}, an "
                "attention class built for sdpa when the model was loaded: it returns no attention "
                "probabilities, which the exact path reads. Load the model with attn_implementation='eager', "
                "or use the fast path (include_biases=False), which freezes sdpa's probabilities."
            )
        if probs is None:
            raise RuntimeError(
                f"{where[0].upper()}{where[1:]} ({self.path}) returned no attention probabilities even "
                "with eager attention. Its adapter must name a module whose output is "
                "(output, attention_probs), or set force_output_attentions."
            )
        _check_probabilities(probs, f"{where} ({self.path})", self.probs_index)
        return probs

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        """Freeze the probabilities inside the module's calls; in the first layer, also read which
        tokens are attended to (the padding) and give each token its share of the value bias."""
        module = resolve(root, self.path)
        mode = _FreezeAttention()
        state, where = freezer.state, f"{type(module).__name__} ({self.path})"

        def before(_module, args, kwargs):
            mode.count = 0
            mode.watch = first and state.real_tokens is None
            mode.__enter__()
            freezer.open_modes.append(mode)

        def after(_module, args, output):
            if freezer.open_modes and freezer.open_modes[-1] is mode:
                freezer.open_modes.pop()
                mode.__exit__(None, None, None)
            if mode.count == 0:
                raise RuntimeError(
                    f"The attention module {where} computed its probabilities neither with a softmax nor "
                    "with torch's scaled_dot_product_attention, so the fast path cannot freeze them. Use "
                    "algorithm='exact', or run the model with attn_implementation='eager' or 'sdpa'."
                )
            if mode.real_tokens is not None and state.real_tokens is None:
                state.real_tokens = mode.real_tokens
            mode.real_tokens = None

        freezer.recorder.pre_hook(module, "freeze: enter", before)
        freezer.recorder.forward_hook(module, "freeze: leave", after)
        if first:  # the first layer's value bias belongs to each token, added before any mixing
            bias = self.value.output_bias(root)
            if bias is not None:
                self.freeze_own_value_bias(freezer, root, bias)

    def freeze_own_value_bias(self, freezer: "Freezer", root: nn.Module, bias: Tensor) -> None:
        """Add each token's share of the first layer's value bias (dim,) to the value map's output
        (batch, seq, dim), zero-valued, its gradient to the ``own_scale`` leaf."""
        freezer.freeze_output(self.value.module(root), "own bias", lambda _module, _args, output: output, own_bias=bias)

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> AttentionParams:
        return AttentionParams(self.value.resolve(root, dtype), self.output.resolve(root, dtype))
