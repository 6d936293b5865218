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

POOLING_MODES = (
    "first",
    "last",
    "mean",
    "each",
    "last_non_pad_token",
    "first_real",
    "patch_mean",
    "first_and_patch_mean",
    "first_two",
    "eos_token",
    "last_position",
    "probe",
)
#: Pooling modes whose pooled vector concatenates several pooled rows (their widths add up).
CONCATENATING_POOLINGS = ("first_and_patch_mean", "first_two")
NORM_POSITIONS = ("post", "pre")
INPUT_KINDS = ("tokens", "pixels")
ENCODER_INPUTS = ("tokens", "features")

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
class Windows:
    """Attention computed in (shifted) windows of the layer's token grid, as Swin's layers do: the
    grid (height, width) is the layer's argument ``grid_argument`` (position, name); the window
    side and the cyclic shift are the layer's attributes ``window_size`` and ``shift_size`` after
    its call. The windowed probabilities are read as the full (seq x seq) attention they are: zero
    between tokens of different windows."""

    grid_argument: tuple[int, str] = (1, "input_dimensions")
    window_size: str = "window_size"
    shift_size: str = "shift_size"


@dataclass(frozen=True)
class Stages:
    """Layers grouped in stages, each stage but the last followed by a patch merging (Swin): the
    merging module concatenates the states of each 2x2 block of the token grid (in the order
    (0, 0), (1, 0), (0, 1), (1, 1) of (row, column) offsets), normalizes them and maps them
    linearly; the merged token's decomposition stays over the first layer's tokens.

    Attributes:
        path: the stage list, relative to the top model.
        blocks: each stage's layer list, relative to the stage.
        merging: the merging module, relative to the stage (None, or absent, in a stage without).
        norm, reduction: the merging module's normalization and linear map, relative to it.
        grid_argument: (position, name) of the merging module's argument that holds the grid
            (height, width) it merges.
    """

    path: str
    blocks: str = "blocks"
    merging: str = "downsample"
    norm: str = "norm"
    reduction: str = "reduction"
    grid_argument: tuple[int, str] = (1, "input_dimensions")


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
        ffn_activation: the activation, a module or function reachable by attribute, or the
            function itself where the unit calls it from no attribute (DINOv2's SwiGLU unit in
            transformers 4.x calls ``nn.functional.silu``).
        ffn_out: last linear map of the feed-forward network.
        ffn_norm: normalization of the feed-forward block (after its residual, or on its input).
        ffn_gate: for gated units ``act(gate(x)) * ffn_in(x)``, the gate's linear map.
        attention_output_norm: a normalization of the attention block's output before its
            residual is added (Gemma 2/3's sandwich ``post_attention_layernorm``); None: none.
        ffn_output_norm: the same for the feed-forward block (``post_feedforward_layernorm``).
        attention_scale: a layer scale (a per-channel vector ``lambda``, BEiT's ``lambda_1``,
            DINOv2's ``layer_scale1.lambda1``) by which the attention block's output is multiplied
            before its residual is added; a path to the vector (a parameter or a plain number,
            1.0 meaning none); None: no layer scale.
        ffn_scale: the same for the feed-forward block's output (``lambda_2``, ``layer_scale2.lambda1``).
        attention_windows: the attention runs in (shifted) windows of the token grid (Swin), see
            :class:`Windows`; None: over the whole sequence.
        cross_attention: in an encoder-decoder's decoder layer, the cross-attention module (its
            output is ``(output, probs)`` or, with ``probs_index``, holds the probabilities
            ``(batch, heads, target, source)`` there); None in any other layer. The block sits
            between self-attention and the feed-forward block, in its own residual.
        cross_value: the cross-attention's value map (applied to the encoder's output).
        cross_output: the cross-attention's output map (``W_O``).
        cross_norm: the cross-attention block's normalization (placed as ``attention_norm``).
        probs_index: where the attention modules' outputs hold the probabilities (T5's return
            ``(output, position_bias, probs)``: 2).
        probs_on_request: the attention modules hold the probabilities in their output only when
            called with ``output_attentions=True``, and their callers index the output by that
            flag (T5 on transformers 4.x). DecompX sets the flag for the pass and takes the
            probabilities back out of the output of a call that did not ask for them, so the model
            runs as the caller asked.
    """

    attention: str
    value: str
    attention_output: str
    attention_norm: str
    ffn_in: str
    ffn_activation: Union[str, Callable[[torch.Tensor], torch.Tensor]]
    ffn_out: str
    ffn_norm: str
    ffn_gate: Optional[str] = None
    attention_output_norm: Optional[str] = None
    ffn_output_norm: Optional[str] = None
    attention_scale: Optional[str] = None
    ffn_scale: Optional[str] = None
    attention_windows: Optional[Windows] = None
    cross_attention: Optional[str] = None
    cross_value: Optional[str] = None
    cross_output: Optional[str] = None
    cross_norm: Optional[str] = None
    probs_index: int = 1
    probs_on_request: bool = False

    def __post_init__(self) -> None:
        cross = (self.cross_attention, self.cross_value, self.cross_output, self.cross_norm)
        if any(path is None for path in cross) and any(path is not None for path in cross):
            raise ValueError("A cross-attention block needs all of cross_attention, cross_value, cross_output and cross_norm.")


def grouped_layer(
    attention: tuple[str, str, str],
    feed_forward: tuple[str, str, str, str],
    norms: tuple[str, str],
    *,
    gate: Optional[str] = None,
) -> LayerPaths:
    """The :class:`LayerPaths` of the common layout: the value map and ``W_O`` inside the attention
    module, the feed-forward maps and activation inside one feed-forward module.

    Args:
        attention: ``(module, value, output)``: the attention module (relative to the layer), then
            its value map and ``W_O`` relative to it, e.g. ``("self_attn", "v_proj", "o_proj")``.
        feed_forward: ``(module, in, activation, out)``: the feed-forward module (``""``: the layer
            itself), then its first map, activation and last map relative to it.
        norms: ``(attention_norm, ffn_norm)``, relative to the layer.
        gate: for a gated unit, the gate's map, relative to the feed-forward module.

    Example: ``grouped_layer(("attn", "c_attn[2/3]", "c_proj"), ("mlp", "c_fc", "act", "c_proj"),
    ("ln_1", "ln_2"))`` is GPT-2's layer.
    """
    module, value, output = attention
    ffn, ffn_in, activation, ffn_out = feed_forward

    def in_ffn(name: str) -> str:
        return f"{ffn}.{name}" if ffn else name

    return LayerPaths(
        attention=module,
        value=f"{module}.{value}",
        attention_output=f"{module}.{output}",
        attention_norm=norms[0],
        ffn_in=in_ffn(ffn_in),
        ffn_activation=in_ffn(activation),
        ffn_out=in_ffn(ffn_out),
        ffn_norm=norms[1],
        ffn_gate=None if gate is None else in_ffn(gate),
    )


@dataclass(frozen=True)
class EncoderStack:
    """The encoder of an encoder-decoder model, walked before the decoder.

    Attributes:
        layers: path, relative to the top model, of the encoder's ``nn.ModuleList`` of layers.
        layer: paths inside each encoder layer (no cross-attention).
        final_norm: path of the norm on the encoder's output (pre-LN models), or None.
        norm_position: ``"post"`` or ``"pre"``, as :attr:`Adapter.norm_position`.
        input_kind: ``"tokens"`` (source ids, one piece per token) or ``"features"`` (a float
            tensor such as Whisper's log-mel features; one piece per position of the encoder's
            first layer, e.g. each audio frame after the convolutional stem).
    """

    layers: str
    layer: LayerPaths
    final_norm: Optional[str] = None
    norm_position: str = "post"
    input_kind: str = "tokens"

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("norm_position", self.norm_position, NORM_POSITIONS),
            ("input_kind", self.input_kind, ENCODER_INPUTS),
        ):
            if value not in choices:
                raise ValueError(f"EncoderStack {name}={value!r} is not one of {choices}.")

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        """The encoder's layers in execution order."""
        return list(resolve(model, self.layers))


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
class MeanOfLinears(HeadStep):
    """A head step: the mean of several linear maps, map ``g`` applied to the ``g``-th equal part of
    the pooled vector (DeiT's teacher classifier averages the CLS head on the CLS token and the
    distillation head on the distillation token, pooled by ``"first_two"``). Paths are relative to
    the top model; each map's bias is spread over the pieces of its own output."""

    paths: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.paths) < 1:
            raise ValueError("MeanOfLinears needs at least one path.")


@dataclass(frozen=True)
class ScaledLinear(Linear):
    """A head step: the linear map at ``path`` applied to its input times ``scale`` (T5's
    ``d_model ** -0.5`` rescale of the decoder's output before a tied LM head)."""

    scale: float = 1.0


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
        stages: the layers are grouped in stages joined by patch mergings (Swin), see
            :class:`Stages`; ``layers`` then lists the stages' layers in execution order.
        fixed_image_size: an image model that reads images of ``config.image_size`` only, unless
            its call asks it to interpolate its position embeddings (ViT, DeiT): other sizes are
            refused when the forward function is the model itself.
        encoder: an encoder-decoder's encoder (:class:`EncoderStack`); the other fields then
            describe the decoder, whose layers have a cross-attention block, and its LM head
            (``pooling="each"``). None for encoder-only and decoder-only models.
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
    fixed_image_size: bool = False
    stages: Optional[Stages] = None
    encoder: Optional[EncoderStack] = None

    def __post_init__(self) -> None:
        if self.encoder is not None and (self.layer.cross_attention is None or self.pooling != "each"):
            raise ValueError(
                "An encoder-decoder adapter (encoder=...) describes its decoder: its layer paths need the "
                "cross_attention block and its head is read at every position (pooling='each')."
            )
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
