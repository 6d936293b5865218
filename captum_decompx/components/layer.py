"""A transformer layer: attention and a feed-forward unit, each in a residual block whose norms
sit where the adapter says (the norm placement is data, not code).

A residual block is ``x -> after(x + on_output(sublayer(before(x))))`` (:class:`BlockNorms`),
with each of the three norms present or not:

- post-LN (BERT): ``after`` only: ``h = norm1(x + attn(x))``, ``norm2(h + ffn(h))``;
- pre-LN (GPT-2, Llama, ViT): ``before`` only: ``h = x + attn(norm1(x))``, ``h + ffn(norm2(h))``;
- sandwich (Gemma 2 and 3): ``before`` and ``on_output``:
  ``h = x + norm1o(attn(norm1(x)))``, ``h + norm2o(ffn(norm2(h)))``.

The adapter's ``attention_norm``/``ffn_norm`` are ``before`` (``norm_position="pre"``) or
``after`` (``"post"``); ``attention_output_norm``/``ffn_output_norm`` are ``on_output``. A bias
of the attention block is spread over the pieces of its sum with the residual, as the spec's
step 2 says; with a norm on the block's output it belongs to the sublayer's output (before that
norm) and is spread over the sublayer's pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import Adapter, LayerPaths, resolve
from ..core.recording import Reader, Recorder
from .activations import ActivationFunction, ActivationFunctionAt
from .attention import Attention, attention_bias, attention_values, mix_heads
from .base import Component
from .cross_attention import CrossAttention, CrossAttentionParams, cross_attention_block, cross_values
from .feed_forward import FeedForward, feed_forward
from .linear import Affine, LinearMap
from .norms import Normalization, NormParams, normalize
from .pieces import Settings, add_bias
from .windows import ShiftedWindowAttention

if TYPE_CHECKING:
    from ..core.freezing import Freezer


@dataclass
class LayerRecord:
    """What one layer did in the real forward pass.

    Attributes:
        attention_probs: (batch, heads, seq, seq), post-softmax.
        attention_norm_input: (batch, seq, hidden), input of the attention block's norm.
        ffn_pre_activation: (batch, seq, ffn), input of the feed-forward activation (for a gated
            unit, of the gate's activation).
        ffn_norm_input: (batch, seq, hidden), input of the feed-forward block's norm.
        attention_output_norm_input, ffn_output_norm_input: (batch, seq, hidden), inputs of the
            norms on the blocks' outputs (sandwich norms); None where there is none.
        cross_attention_probs: (batch, heads, seq, source), an encoder-decoder's cross-attention
            probabilities; None in other layers.
        cross_norm_input: (batch, seq, hidden), input of the cross-attention block's norm.
    """

    attention_probs: Tensor
    attention_norm_input: Tensor
    ffn_pre_activation: Tensor
    ffn_norm_input: Tensor
    attention_output_norm_input: Optional[Tensor] = None
    ffn_output_norm_input: Optional[Tensor] = None
    cross_attention_probs: Optional[Tensor] = None
    cross_norm_input: Optional[Tensor] = None

    def select(self, batch: slice, dtype: torch.dtype) -> "LayerRecord":
        """These examples, in ``dtype``."""

        def take(tensor: Optional[Tensor]) -> Optional[Tensor]:
            return None if tensor is None else tensor[batch].to(dtype)

        return LayerRecord(
            attention_probs=self.attention_probs[batch].to(dtype),
            attention_norm_input=self.attention_norm_input[batch].to(dtype),
            ffn_pre_activation=self.ffn_pre_activation[batch].to(dtype),
            ffn_norm_input=self.ffn_norm_input[batch].to(dtype),
            attention_output_norm_input=take(self.attention_output_norm_input),
            ffn_output_norm_input=take(self.ffn_output_norm_input),
            cross_attention_probs=take(self.cross_attention_probs),
            cross_norm_input=take(self.cross_norm_input),
        )


@dataclass(frozen=True)
class BlockNorms:
    """Where one residual block normalizes: ``x -> after(x + on_output(sublayer(before(x))))``;
    None: no norm there."""

    before: Optional[NormParams] = None
    on_output: Optional[NormParams] = None
    after: Optional[NormParams] = None


@dataclass(frozen=True)
class LayerParams:
    """The parameters of one layer, in the compute dtype.

    ``attention_norm``/``ffn_norm`` are None where the model has no normalization there;
    ``ffn_gated`` means the feed-forward unit is ``act(gate) * ffn_in(x)``; ``pre_norm`` that
    ``attention_norm``/``ffn_norm`` act on each block's input (pre-LN) rather than after its
    residual (post-LN); ``attention_output_norm``/``ffn_output_norm`` act on each block's output
    before its residual (sandwich norms), None where there is none; ``attention_scale`` and
    ``ffn_scale`` (hidden,) the layer scales of the blocks' outputs, None where there is none;
    ``cross`` is the cross-attention block of an encoder-decoder's decoder layer, None elsewhere.
    """

    value: Affine
    attention_output: Affine
    attention_norm: Optional[NormParams]
    ffn_in: Affine
    ffn_activation: Callable[[Tensor], Tensor]
    ffn_out: Affine
    ffn_norm: Optional[NormParams]
    ffn_gated: bool = False
    pre_norm: bool = False
    attention_output_norm: Optional[NormParams] = None
    ffn_output_norm: Optional[NormParams] = None
    attention_scale: Optional[Tensor] = None
    ffn_scale: Optional[Tensor] = None
    cross: Optional[CrossAttentionParams] = None

    @property
    def attention_norms(self) -> BlockNorms:
        """The attention block's norm placement."""
        return _placement(self.attention_norm, self.attention_output_norm, self.pre_norm)

    @property
    def ffn_norms(self) -> BlockNorms:
        """The feed-forward block's norm placement."""
        return _placement(self.ffn_norm, self.ffn_output_norm, self.pre_norm)


def _placement(main: Optional[NormParams], on_output: Optional[NormParams], pre_norm: bool) -> BlockNorms:
    """A block's main norm sits before it (pre-LN) or after its residual (post-LN)."""
    return BlockNorms(before=main if pre_norm else None, on_output=on_output, after=None if pre_norm else main)


def layer_attention_bias(params: LayerParams, first: bool, heads: int) -> Optional[Tensor]:
    """The attention block's bias after mixing (see :func:`~.attention.attention_bias`), times its
    layer scale."""
    return _scaled(attention_bias(params.value, params.attention_output, first, heads), params.attention_scale)


def _scaled(tensor: Optional[Tensor], scale: Optional[Tensor]) -> Optional[Tensor]:
    """``tensor * scale`` (a layer scale, (hidden,), on the last axis); ``tensor`` without a scale."""
    return tensor if tensor is None or scale is None else tensor * scale


def transformer_layer(
    pieces: Tensor,
    record: LayerRecord,
    params: LayerParams,
    settings: Settings,
    *,
    first: bool,
    row_chunks: list,
    own_scale: Optional[Tensor] = None,
    encoder_pieces: Optional[Tensor] = None,
) -> Tensor:
    """Propagate a decomposition through one transformer layer (post-LN, pre-LN or sandwich), with
    a cross-attention block between attention and feed-forward in an encoder-decoder's decoder.

    Args:
        pieces: (batch, seq, pieces, dim), the decomposition of the layer's input. With several
            row chunks that cover every row in order, it is overwritten by the output.
        record: the layer's :class:`LayerRecord` for this batch.
        row_chunks: which output rows to compute, in chunks (bounds the peak memory).
        own_scale: (batch, seq), fast path only (see :func:`~.pieces.add_to_own_pieces`).
        encoder_pieces: (batch, source, pieces, hidden), a decoder layer's only: the encoder's
            output decomposed in this decomposition's piece layout (see
            :func:`~captum_decompx.core.seq2seq.source_pieces`).

    Returns:
        (batch, rows, pieces, dim) for the concatenated ``row_chunks``.
    """
    heads = record.attention_probs.shape[1]
    n_pieces = pieces.shape[2]
    attention, ffn = params.attention_norms, params.ffn_norms
    # The attention block's `before` norm acts before any mixing: its bias belongs to each token.
    attention_input = normalize(
        pieces, record.attention_norm_input, attention.before, settings, own_bias=first, own_scale=own_scale
    )
    head_values = attention_values(
        attention_input, params.value, params.attention_output, heads, first=first, own_scale=own_scale
    )
    del attention_input
    block_bias = layer_attention_bias(params, first, heads)
    cross_head_values = None
    if params.cross is not None:
        if encoder_pieces is None or record.cross_attention_probs is None:
            raise ValueError("A decoder layer with cross-attention needs the encoder's pieces and its recorded probabilities.")
        cross_head_values = cross_values(encoder_pieces, params.cross, record.cross_attention_probs.shape[1])

    def output_rows(rows) -> Tensor:
        mixed = mix_heads(record.attention_probs[:, :, rows], head_values, n_pieces)
        if attention.on_output is None:  # the bias is spread over the pieces of the residual sum
            attended = _scaled(mixed @ params.attention_output.weight.T, params.attention_scale)
            assert attended is not None
            hidden = add_bias(torch.add(attended, pieces[:, rows]), block_bias, settings)
        else:  # the bias is part of the sublayer's output, before its norm
            attended = add_bias(mixed @ params.attention_output.weight.T, block_bias, settings)
            hidden = pieces[:, rows] + normalize(
                attended, _rows(record.attention_output_norm_input, rows), attention.on_output, settings
            )
        del mixed
        hidden = normalize(hidden, record.attention_norm_input[:, rows], attention.after, settings)
        if params.cross is not None:
            assert cross_head_values is not None and record.cross_attention_probs is not None
            hidden = cross_attention_block(
                hidden,
                cross_head_values,
                record.cross_attention_probs[:, :, rows],
                _rows(record.cross_norm_input, rows),
                params.cross,
                settings,
            )
        if settings.include_ffn:
            ffn_input = normalize(hidden, record.ffn_norm_input[:, rows], ffn.before, settings)
            ffn_output = feed_forward(ffn_input, record.ffn_pre_activation[:, rows], params, settings)
            del ffn_input
            if params.ffn_scale is not None:
                ffn_output = ffn_output * params.ffn_scale
            hidden = hidden + normalize(ffn_output, _rows(record.ffn_output_norm_input, rows), ffn.on_output, settings)
        return normalize(hidden, record.ffn_norm_input[:, rows], ffn.after, settings)

    return _chunked(pieces, row_chunks, output_rows)


def _chunked(pieces: Tensor, row_chunks: list, output_rows: Callable[[Any], Tensor]) -> Tensor:
    """``output_rows`` of every chunk of rows, in one (batch, rows, pieces, dim) output.

    Chunks are written into one output as they come (concatenating them at the end would hold the
    output twice). A chunk reads only its own rows of the input, so when the chunks are the input's
    rows in order, each overwrites the rows it has consumed: the layer then holds the input, the
    values and one chunk, not also a separate output.
    """
    if len(row_chunks) == 1:
        return output_rows(row_chunks[0])
    in_place = _rows_in_order(row_chunks, pieces.shape[1]) and not pieces.requires_grad
    output, done = None, 0
    for rows in row_chunks:
        chunk = output_rows(rows)
        if output is None:
            if in_place and chunk.shape[2:] == pieces.shape[2:] and chunk.dtype == pieces.dtype:
                output = pieces
            else:
                total = sum(_row_count(chunk_rows) for chunk_rows in row_chunks)
                output = chunk.new_empty((chunk.shape[0], total) + tuple(chunk.shape[2:]))
        output[:, done : done + chunk.shape[1]] = chunk
        done += chunk.shape[1]
        del chunk
    assert output is not None
    return output


def _rows(norm_input: Optional[Tensor], rows) -> Optional[Tensor]:
    """These rows of a recorded norm input; None where the layer has no such norm."""
    return None if norm_input is None else norm_input[:, rows]


def _row_count(rows) -> int:
    """The number of rows a chunk selects: a ``slice`` with explicit bounds, or an index tensor."""
    return rows.stop - rows.start if isinstance(rows, slice) else int(rows.numel())


def _rows_in_order(row_chunks: list, seq: int) -> bool:
    """Whether the chunks are the slices ``0:a, a:b, ..., z:seq``: every row once, in order."""
    done = 0
    for rows in row_chunks:
        if not isinstance(rows, slice) or rows.start != done:
            return False
        done = rows.stop
    return done == seq


@dataclass(frozen=True)
class TransformerLayer(Component):
    """One layer's components, built from an adapter's :class:`~captum_decompx.adapters.LayerPaths`."""

    attention: Attention
    attention_norm: Normalization
    feed_forward: FeedForward
    ffn_norm: Normalization
    pre_norm: bool
    attention_output_norm: Optional[Normalization] = None
    ffn_output_norm: Optional[Normalization] = None
    attention_scale: Optional[str] = None
    ffn_scale: Optional[str] = None
    cross_attention: Optional[CrossAttention] = None
    cross_norm: Optional[Normalization] = None

    @classmethod
    def from_adapter(cls, adapter: Adapter) -> "TransformerLayer":
        return cls.from_paths(adapter.layer, adapter.norm_position, adapter.force_output_attentions)

    @classmethod
    def from_paths(
        cls, paths: LayerPaths, norm_position: str, force_output_attentions: Optional[tuple[int, str]] = None
    ) -> "TransformerLayer":
        """The layer whose modules sit at ``paths`` (``norm_position``: ``"post"`` or ``"pre"``)."""
        cross = None
        if paths.cross_attention is not None:
            assert paths.cross_value is not None and paths.cross_output is not None
            cross = CrossAttention(
                paths.cross_attention,
                LinearMap.at(paths.cross_value),
                LinearMap.at(paths.cross_output),
                force_output_attentions,
                paths.probs_index,
                paths.probs_on_request,
            )
        attention_maps = (
            paths.attention,
            LinearMap.at(paths.value),
            LinearMap.at(paths.attention_output),
            force_output_attentions,
            paths.probs_index,
            paths.probs_on_request,
        )
        return cls(
            attention=Attention(*attention_maps)
            if paths.attention_windows is None
            else ShiftedWindowAttention(*attention_maps, windows=paths.attention_windows),
            # a pre-LN layer's attention norm acts before any mixing: in the first layer its bias is the tokens' own
            attention_norm=Normalization(paths.attention_norm, before_mixing=norm_position == "pre"),
            feed_forward=FeedForward(
                up=LinearMap.at(paths.ffn_in),
                activation=ActivationFunctionAt(path=paths.ffn_activation)
                if isinstance(paths.ffn_activation, str)
                else ActivationFunctionAt(function=paths.ffn_activation),
                down=LinearMap.at(paths.ffn_out),
                gate=None if paths.ffn_gate is None else LinearMap.at(paths.ffn_gate),
            ),
            ffn_norm=Normalization(paths.ffn_norm),
            pre_norm=norm_position == "pre",
            attention_output_norm=_optional_norm(paths.attention_output_norm),
            ffn_output_norm=_optional_norm(paths.ffn_output_norm),
            attention_scale=paths.attention_scale,
            ffn_scale=paths.ffn_scale,
            cross_attention=cross,
            cross_norm=_optional_norm(paths.cross_norm),
        )

    def components(self) -> tuple[Component, ...]:
        """The layer's components, in the order their hooks are installed."""
        optional = (self.attention_output_norm, self.ffn_output_norm, self.cross_norm)
        norms = (self.attention_norm, self.ffn_norm) + tuple(norm for norm in optional if norm is not None)
        cross = () if self.cross_attention is None else (self.cross_attention,)
        return (self.attention,) + cross + norms + (self.feed_forward,)

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        for component in self.components():
            component.install(recorder, root)

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        for component in self.components():
            component.freeze(freezer, root, first=first)

    def read(self, reader: Reader, root: nn.Module, where: str) -> LayerRecord:
        return LayerRecord(
            attention_probs=self.attention.read(reader, root, f"the attention of {where}"),
            attention_norm_input=self.attention_norm.read(reader, root, f"{where}'s attention norm"),
            ffn_pre_activation=self.feed_forward.read(reader, root, f"{where}'s feed-forward network"),
            ffn_norm_input=self.ffn_norm.read(reader, root, f"{where}'s feed-forward norm"),
            attention_output_norm_input=_read_optional(
                self.attention_output_norm, reader, root, f"{where}'s attention output norm"
            ),
            ffn_output_norm_input=_read_optional(self.ffn_output_norm, reader, root, f"{where}'s feed-forward output norm"),
            cross_attention_probs=None
            if self.cross_attention is None
            else self.cross_attention.read(reader, root, f"the cross-attention of {where}"),
            cross_norm_input=_read_optional(self.cross_norm, reader, root, f"{where}'s cross-attention norm"),
        )

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> LayerParams:
        if (self.attention_scale, self.ffn_scale) != (None, None) and (self.attention_output_norm, self.ffn_output_norm) != (
            None,
            None,
        ):
            raise ValueError("A layer scale together with norms on the blocks' outputs (sandwich norms) is not supported.")
        feed_forward_params = self.feed_forward.resolve(root, dtype)
        attention_params = self.attention.resolve(root, dtype)
        return LayerParams(
            value=attention_params.value,
            attention_output=attention_params.output,
            attention_norm=self.attention_norm.resolve(root, dtype),
            ffn_in=feed_forward_params.ffn_in,
            ffn_activation=feed_forward_params.ffn_activation,
            ffn_out=feed_forward_params.ffn_out,
            ffn_norm=self.ffn_norm.resolve(root, dtype),
            ffn_gated=feed_forward_params.ffn_gated,
            pre_norm=self.pre_norm,
            attention_output_norm=None if self.attention_output_norm is None else self.attention_output_norm.resolve(root, dtype),
            ffn_output_norm=None if self.ffn_output_norm is None else self.ffn_output_norm.resolve(root, dtype),
            attention_scale=_layer_scale(root, self.attention_scale, dtype),
            ffn_scale=_layer_scale(root, self.ffn_scale, dtype),
            cross=self._resolve_cross(root, dtype),
        )

    def _resolve_cross(self, root: nn.Module, dtype: torch.dtype) -> Optional[CrossAttentionParams]:
        if self.cross_attention is None or self.cross_norm is None:
            return None
        maps = self.cross_attention.resolve(root, dtype)
        return CrossAttentionParams(maps.value, maps.output, self.cross_norm.resolve(root, dtype), self.pre_norm)

    propagate = staticmethod(transformer_layer)


def _layer_scale(root: nn.Module, path: Optional[str], dtype: torch.dtype) -> Optional[Tensor]:
    """(hidden,) or a scalar: the layer scale at ``path``, detached, in ``dtype``; None without one
    (no path, or the None or plain number 1.0 a model stores when its layer scale is off)."""
    if path is None:
        return None
    value = resolve(root, path)
    if value is None:  # Data2VecVision stores None when its layer scale is off
        return None
    if isinstance(value, Tensor):
        return value.detach().to(dtype)
    if isinstance(value, (int, float)):
        return None if float(value) == 1.0 else torch.tensor(float(value), dtype=dtype)
    raise TypeError(
        f"The layer scale at {path!r} is a {type(value).__name__}, not a tensor or a number; check the adapter's paths."
    )


def _optional_norm(path: Optional[str]) -> Optional[Normalization]:
    return None if path is None else Normalization(path)


def _read_optional(norm: Optional[Normalization], reader: Reader, root: nn.Module, where: str) -> Optional[Tensor]:
    return None if norm is None else norm.read(reader, root, where)


__all__ = [
    "ActivationFunction",
    "BlockNorms",
    "LayerParams",
    "LayerRecord",
    "TransformerLayer",
    "layer_attention_bias",
    "transformer_layer",
]
