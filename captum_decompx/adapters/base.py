"""What an adapter is: where the components of one architecture live, as data.

An adapter holds dotted attribute paths and a few flags. It installs nothing and holds no math:
the component kinds in :mod:`captum_decompx.components` say what to record and how to propagate.

A path may end in ``[i/n]`` to name the ``i``-th of ``n`` equal blocks of a fused projection's
output features, e.g. ``"attn.Wqkv[2/3]"`` for the values of a fused query-key-value map, or in
``[start:stop]`` for the output features ``start`` to ``stop - 1`` (blocks of unequal sizes, e.g.
the values of a fused map with grouped-query attention).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .wrappers import running_module, unwrap_model

POOLING_MODES = ("first", "last", "mean", "each", "last_non_pad_token", "first_real", "eos_token", "last_position", "probe")
NORM_POSITIONS = ("post", "pre")
INPUT_KINDS = ("tokens", "pixels")

_BLOCK = re.compile(r"^(?P<path>.+)\[(?P<index>\d+)/(?P<count>\d+)\]$")
_RANGE = re.compile(r"^(?P<path>.+)\[(?P<start>\d+):(?P<stop>\d+)\]$")


@dataclass(frozen=True)
class FeatureRange:
    """The output features ``start`` to ``stop - 1`` of a linear map (a path ending in ``[start:stop]``)."""

    start: int
    stop: int


Block = Union[tuple[int, int], FeatureRange]
"""``(index, count)``: the ``index``-th of ``count`` equal blocks; or a :class:`FeatureRange`."""


@dataclass(frozen=True)
class LayerPaths:
    """Paths, relative to one layer, of the modules DecompX reads.

    Attributes:
        attention: module whose output is ``(context_or_output, attention_probs)`` when the model
            runs with eager attention; ``attention_probs`` is ``(batch, heads, seq, seq)``.
        value: linear map computing the value vectors of all (key-value) heads.
        attention_output: linear map from the heads back to the hidden size (``W_O``).
        attention_norm: normalization of the attention block: after its residual (post-LN) or
            on its input (pre-LN). An ``nn.Identity`` there means no normalization.
        ffn_in: first linear map of the feed-forward network (the "up" half of a gated unit).
        ffn_activation: the activation, a module or function reachable by attribute.
        ffn_out: last linear map of the feed-forward network.
        ffn_norm: normalization of the feed-forward block (after its residual, or on its input).
        ffn_gate: for gated units ``act(gate(x)) * ffn_in(x)``, the gate's linear map.
        attention_output_norm: a normalization of the attention block's output before its
            residual is added (Gemma 2/3's sandwich ``post_attention_layernorm``); None: none.
        ffn_output_norm: the same for the feed-forward block (``post_feedforward_layernorm``).
    """

    attention: str
    value: str
    attention_output: str
    attention_norm: str
    ffn_in: str
    ffn_activation: str
    ffn_out: str
    ffn_norm: str
    ffn_gate: Optional[str] = None
    attention_output_norm: Optional[str] = None
    ffn_output_norm: Optional[str] = None


class HeadStep:
    """Base class of the head steps; each subclass has one kind in :mod:`captum_decompx.components.head`."""


@dataclass(frozen=True)
class Linear(HeadStep):
    """A head step: the linear map at ``path`` (relative to the top model), which may end in ``[i/n]``."""

    path: str


@dataclass(frozen=True)
class TiedLinear(Linear):
    """A head step: ``x @ weight.T + bias`` with the weight of the module at ``path`` (a tied input
    embedding, ``(vocab, hidden)``) and the bias the parameter at ``bias`` (paths relative to the
    top model), as DeBERTa-v2's masked-LM head computes it outside any linear module."""

    bias: Optional[str] = None


@dataclass(frozen=True)
class Activation(HeadStep):
    """A head step: a pointwise activation, given as a path to a module/function or a function."""

    path: Optional[str] = None
    function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.function is None):
            raise ValueError("Activation needs exactly one of `path` or `function`.")


@dataclass(frozen=True)
class ContrastiveLogits(HeadStep):
    """A head step: the logits of a two-tower model (CLIP, SigLIP) on the side being decomposed,
    ``exp(logit_scale) * <a / |a|, b_c / |b_c|> + logit_bias`` for every embedding ``b_c`` of the
    other side (the classes), with both norms frozen at their values in the forward pass.

    Attributes:
        own: the module (relative to the top model) whose output is this side's embedding ``a``,
            (batch, dim): the previous step's output.
        other: the module whose output is the other side's embeddings ``b``, (classes, dim).
        scale: the parameter holding ``logit_scale`` (the logits are scaled by its exponential).
        bias: the parameter holding ``logit_bias`` (SigLIP), a bias of every logit; None: none.
    """

    own: str
    other: str
    scale: str
    bias: Optional[str] = None


@dataclass(frozen=True)
class Norm(HeadStep):
    """A head step: the normalization module (LayerNorm, RMSNorm) at ``path`` (relative to the top model)."""

    path: str


def dense_head(
    dense: str,
    activation: Union[str, Callable[[torch.Tensor], torch.Tensor]],
    output: str,
    norm: Optional[str] = None,
) -> tuple[HeadStep, ...]:
    """The usual transformer head as steps: the linear map ``dense``, a pointwise ``activation``
    (a path to a module/function, or a function), the normalization ``norm`` when given, then the
    linear map ``output`` that produces the logits (paths relative to the top model)."""
    pointwise = Activation(function=activation) if callable(activation) else Activation(path=activation)
    normalization: tuple[HeadStep, ...] = () if norm is None else (Norm(norm),)
    return (Linear(dense), pointwise, *normalization, Linear(output))


LayersSpec = Union[str, Callable[[nn.Module], Sequence[nn.Module]]]


@dataclass(frozen=True)
class Adapter:
    """Where the components of one architecture live.

    Attributes:
        name: a readable name, e.g. ``"bert"``.
        layers: path, relative to the top model, of the ``nn.ModuleList`` of layers, or a function
            returning the layers in execution order (a shared layer may appear several times).
        layer: paths inside each layer (see :class:`LayerPaths`).
        head: the classification head after pooling, as :class:`Linear`, :class:`Activation`
            and :class:`Norm` steps; its last step produces the logits.
        pooling: which hidden state the head reads: the ``"first"`` token, the ``"first_real"``
            (first non-padding) token by the attention mask, the ``"last"``
            non-padding token (by the attention mask), the ``"mean"`` of the non-padding tokens,
            the ``"last_non_pad_token"``: the rightmost token whose id is not
            ``config.pad_token_id``, as Hugging Face's decoder sequence classifiers pool (the
            mask plays no part; the last token when the model got embeddings), or ``"each"``: the
            head is applied at every position (question answering, token classification, masked
            LM, a bare encoder with an empty head), and the model's output is (batch, seq, classes).
            Two-tower models add: ``"eos_token"`` (CLIP's text tower: the first end-of-text token
            by id, or the largest id for configs whose ``eos_token_id`` is 2, as Hugging Face
            pools), ``"last_position"`` (SigLIP's text tower: the last position, padding or not)
            and ``"probe"`` (SigLIP's vision tower: the attention-pooling head at ``probe_head``).
        input_ids_at: for ``"last_non_pad_token"``, the module (relative to the top model) whose
            input ids are read: its first argument or ``input_ids``.
        norm_position: ``"post"`` (BERT: norm after each residual) or ``"pre"`` (GPT-2, Llama,
            ViT, ModernBERT: norm on each block's input).
        final_norm: path of a normalization applied to the last layer's output (pre-LN models).
        force_output_attentions: ``(position, name)`` of an argument of the attention module
            that must be True for it to return its probabilities (DeBERTa); set for the call only.
        input_kind: ``"tokens"`` (input ids) or ``"pixels"`` (image tensors, e.g. ViT).
        logit_softcap: the model returns ``cap * tanh(z / cap)`` of the head's output ``z`` (the
            final-logit soft-cap of Gemma 2/3 causal LMs). This is nonlinear and not decomposed:
            DecompX explains ``z``, the logits before the cap, and warns on every capture.
        output_field: the field of the model's output object that is decomposed, when it is not
            ``logits`` (a two-tower model: ``"logits_per_image"`` or ``"logits_per_text"``).
        counterpart: for a model with two input towers, the adapter of the other tower: it is
            used for a call whose inputs are of its ``input_kind`` (token ids for the text tower
            when this one takes pixels, and the reverse).
        probe_head: for ``pooling="probe"``, the attention-pooling head's module (a learned
            query attending to every position, then a residual MLP).
    """

    name: str
    layers: LayersSpec
    layer: LayerPaths
    head: Sequence[HeadStep] = field(default_factory=tuple)
    pooling: str = "first"
    input_ids_at: str = "base_model"
    norm_position: str = "post"
    final_norm: Optional[str] = None
    force_output_attentions: Optional[tuple[int, str]] = None
    input_kind: str = "tokens"
    logit_softcap: Optional[float] = None
    output_field: Optional[str] = None
    counterpart: Optional["Adapter"] = None
    probe_head: Optional[str] = None

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("pooling", self.pooling, POOLING_MODES),
            ("norm_position", self.norm_position, NORM_POSITIONS),
            ("input_kind", self.input_kind, INPUT_KINDS),
        ):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not one of {choices}.")
        if self.counterpart is not None and self.counterpart.input_kind == self.input_kind:
            raise ValueError(f"The counterpart of adapter {self.name!r} must take the other input kind, not {self.input_kind!r}.")
        if (self.pooling == "probe") != (self.probe_head is not None):
            raise ValueError("pooling='probe' needs probe_head (the attention-pooling head's path), and only it.")
        for step in self.head:
            if not isinstance(step, HeadStep):
                raise TypeError(f"head steps must be Linear, Activation or Norm (HeadStep subclasses), got {step!r}.")

    def for_inputs(self, inputs: torch.Tensor) -> "Adapter":
        """The adapter of the tower that takes ``inputs``: this one, or its counterpart when the
        inputs are of the counterpart's kind (floats are pixels, integers token ids)."""
        kind = "pixels" if inputs.dtype.is_floating_point else "tokens"
        if kind != self.input_kind and self.counterpart is not None:
            return self.counterpart
        return self

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        """The layers in execution order (a shared module may appear several times)."""
        if callable(self.layers):
            return list(self.layers(unwrap_model(model)))
        return list(resolve(model, self.layers))


def split_block(path: str) -> tuple[str, Optional[Block]]:
    """``"attn.Wqkv[2/3]"`` -> ``("attn.Wqkv", (2, 3))``; ``"qkv[40:48]"`` -> ``("qkv",
    FeatureRange(40, 48))``; a plain path -> ``(path, None)``."""
    ranged = _RANGE.match(path)
    if ranged is not None:
        start, stop = int(ranged["start"]), int(ranged["stop"])
        if not start < stop:
            raise ValueError(f"Feature range [{start}:{stop}] in {path!r} is empty.")
        return ranged["path"], FeatureRange(start, stop)
    match = _BLOCK.match(path)
    if match is None:
        return path, None
    index, count = int(match["index"]), int(match["count"])
    if not 0 <= index < count:
        raise ValueError(f"Block [{index}/{count}] in {path!r} is out of range.")
    return match["path"], (index, count)


def take_block(tensor: torch.Tensor, block: Optional[Block], dim: int = -1) -> torch.Tensor:
    """The ``index``-th of ``count`` equal blocks of ``tensor`` along ``dim``, or a feature range."""
    if block is None:
        return tensor
    if isinstance(block, FeatureRange):
        size = tensor.shape[dim]
        if block.stop > size:
            raise ValueError(f"Feature range [{block.start}:{block.stop}] is outside the map's {size} output features.")
        return tensor.narrow(dim, block.start, block.stop - block.start)
    index, count = block
    return tensor.chunk(count, dim=dim)[index]


def resolve(root: nn.Module, path: str):
    """Follow a dotted attribute path (``"bert.encoder.layer"``) from ``root``.

    PEFT's wrappers are seen through (:mod:`.wrappers`): a ``PeftModel`` root stands for the
    Hugging Face model inside it, and a ``ModulesToSaveWrapper`` met on the way for the module its
    forward runs now (the active adapter's copy, or the original when the adapters are disabled).
    """
    current = unwrap_model(root)
    for name in path.split("."):
        try:
            current = running_module(getattr(current, name))
        except AttributeError as error:
            raise AttributeError(
                f"{type(root).__name__} has no attribute path {path!r} ({error}); the adapter does not match this model."
            ) from None
    return current
