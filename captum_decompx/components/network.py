"""The whole network as component kinds: the layers, a final norm, the head; for an
encoder-decoder, the encoder's layers and final norm first.

:meth:`Network.walk` is the one walk of a model's components, in forward order; both algorithms
install their hooks by it (:class:`~captum_decompx.core.capture.HookedPass`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import Adapter, EncoderStack, HeadStep, Linear, MeanOfLinears
from ..core.recording import Reader, Recorder
from .base import Component
from .head import Head, ResolvedHeadStep, head_step_kind
from .layer import LayerParams, LayerRecord, TransformerLayer
from .linear import install_call_checks
from .merging import MergeParams, MergeRecord, PatchMerging, merging_stages
from .norms import Normalization, NormParams
from .pooling import Pooling, PoolingRecord
from .probe import ProbeHead, ProbeParams, ProbeRecord

if TYPE_CHECKING:
    from ..core.freezing import Freezer


@dataclass
class StackRecord:
    """What an encoder-decoder's encoder recorded: its first layer's input (batch, source,
    hidden), its layers' records and the input of its final norm (None without one). An encoder
    has no patch mergings: ``merges`` stays empty (it reads as :class:`NetworkRecord`'s)."""

    layer_input: Tensor
    layers: list[LayerRecord]
    final_norm_input: Optional[Tensor]
    merges: dict[int, MergeRecord] = field(default_factory=dict)


@dataclass
class NetworkRecord:
    """What the network's components recorded in one forward pass.

    Attributes:
        layer_input: (batch, seq, hidden), input of the first layer (the embeddings).
        layers: one :class:`LayerRecord` per layer, in execution order.
        final_norm_input: (batch, seq, hidden), input of the final norm of pre-LN models.
        head_inputs: per head step index, the real input (batch, dim) of the steps that need it.
        pooling: what the pooling recorded (the input ids, for ``"last_non_pad_token"``).
        probe: what an attention-pooling head recorded (``pooling="probe"``).
        merges: per layer index, what the patch merging after that layer recorded (Swin).
        encoder: an encoder-decoder's encoder; the other fields are then the decoder's.
    """

    layer_input: Tensor
    layers: list[LayerRecord]
    final_norm_input: Optional[Tensor]
    head_inputs: dict[int, Tensor]
    pooling: Optional[PoolingRecord] = None
    probe: Optional[ProbeRecord] = None
    merges: dict[int, MergeRecord] = field(default_factory=dict)
    encoder: Optional[StackRecord] = None


@dataclass
class EncoderParts:
    """An encoder-decoder's encoder parameters: its layers and its final norm (None without one);
    no patch mergings (``merges`` stays empty, as in :class:`ModelParts` without stages)."""

    layers: list[LayerParams]
    final_norm: Optional[NormParams]
    merges: dict[int, MergeParams] = field(default_factory=dict)


@dataclass
class ModelParts:
    """The model's parameters that the decomposition uses, detached and in the compute dtype."""

    layers: list[LayerParams]
    final_norm: Optional[NormParams]
    head: list[ResolvedHeadStep]
    head_input_steps: list[Optional[int]]  # for steps that read their real input: their own index
    probe: Optional[ProbeParams] = None  # an attention-pooling head (pooling="probe")
    merges: dict[int, MergeParams] = field(default_factory=dict)  # per layer index: the patch merging after it
    encoder: Optional[EncoderParts] = None


class LayerInput(Component):
    """A stack's first layer input (the embeddings). Recorded (exact path): its value; frozen (fast
    path): replaced, on its first call, by the leaf the backward pass differentiates.

    Attributes:
        stack: ``"target"`` (the model's layers; a decoder's in an encoder-decoder) or
            ``"source"`` (an encoder-decoder's encoder). The fast path gives the biases the
            components of the stack own before mixing to this stack's tokens.
    """

    def __init__(self, stack: str = "target") -> None:
        self.stack = stack

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        recorder.record_input(root, "layer_input", "hidden_states")

    def read(self, reader: Reader, root: nn.Module, where: str) -> Tensor:
        return reader.take(root, "layer_input", where)

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        freezer.replace_layer_input(root, stack=self.stack)


@dataclass(frozen=True)
class Encoder:
    """An encoder-decoder's encoder as component kinds: its layer and its final norm."""

    stack: EncoderStack
    layer: TransformerLayer
    final_norm: Optional[Normalization]

    @classmethod
    def of(cls, stack: EncoderStack) -> "Encoder":
        layer = TransformerLayer.from_paths(stack.layer, stack.norm_position)
        return cls(stack, layer, None if stack.final_norm is None else Normalization(stack.final_norm))

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        layers = self.stack.layer_modules(model)
        if not layers:
            raise ValueError(f"The encoder has no layers at {self.stack.layers!r}.")
        return layers

    def walk(self, model: nn.Module) -> Iterator[tuple[Component, nn.Module, bool]]:
        """The encoder's components, in forward order (see :meth:`Network.walk`)."""
        layers = self.layer_modules(model)
        yield LayerInput("source"), layers[0], True
        for index, layer in enumerate(layers):
            for component in self.layer.components():
                yield component, layer, index == 0
        if self.final_norm is not None:
            yield self.final_norm, model, False

    def read(self, reader: Reader, model: nn.Module) -> StackRecord:
        layers = self.layer_modules(model)
        layer_input = LayerInput("source").read(reader, layers[0], "the encoder's first layer")
        records = [self.layer.read(reader, layer, f"encoder layer {index}") for index, layer in enumerate(layers)]
        final_norm_input = None if self.final_norm is None else self.final_norm.read(reader, model, "the encoder's final norm")
        return StackRecord(layer_input, records, final_norm_input)

    def resolve(self, model: nn.Module, dtype: torch.dtype) -> EncoderParts:
        layers = [self.layer.resolve(layer, dtype) for layer in self.layer_modules(model)]
        return EncoderParts(layers, None if self.final_norm is None else self.final_norm.resolve(model, dtype))


class CallChecks(Component):
    """The checks of the linear layouts that can change their map per call (LoRA with several
    adapters in one batch), on every module of the model: the exact path reads one map per
    module, so such a call is refused. The fast path runs the real calls and needs no check."""

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        install_call_checks(recorder, root)

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        return None


@dataclass(frozen=True)
class Network:
    """An adapter's architecture as component kinds (built once per adapter)."""

    adapter: Adapter
    layer: TransformerLayer
    final_norm: Optional[Normalization]
    head: Head
    pooling: Pooling
    probe: Optional[ProbeHead] = None
    encoder: Optional[Encoder] = None

    @classmethod
    def of(cls, adapter: Adapter) -> "Network":
        return cls(
            adapter,
            TransformerLayer.from_adapter(adapter),
            None if adapter.final_norm is None else Normalization(adapter.final_norm),
            Head(tuple(adapter.head), logit_softcap=adapter.logit_softcap is not None),
            Pooling.of(adapter),
            None if adapter.probe_head is None else ProbeHead(adapter.probe_head),
            None if adapter.encoder is None else Encoder.of(adapter.encoder),
        )

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        layers = self.adapter.layer_modules(model)
        if not layers:
            raise ValueError(f"The adapter {self.adapter.name!r} found no layers at {self.adapter.layers!r}.")
        return layers

    def merges(self, model: nn.Module) -> dict[int, nn.Module]:
        """Per layer index, the stage whose patch merging follows that layer (none without stages)."""
        return {} if self.adapter.stages is None else merging_stages(model, self.adapter.stages)

    def walk(self, model: nn.Module, layers: list[nn.Module]) -> Iterator[tuple[Component, nn.Module, bool]]:
        """Every component, with the module its paths are resolved on (a layer, a stage, or the
        model) and whether it belongs to the first layer, in forward order (an encoder-decoder's
        encoder first)."""
        yield CallChecks(), model, False
        if self.encoder is not None:
            yield from self.encoder.walk(model)
        yield LayerInput(), layers[0], True
        merges = self.merges(model)
        for index, layer in enumerate(layers):
            for component in self.layer.components():
                yield component, layer, index == 0
            if index in merges:
                yield self._merging(), merges[index], False
        if self.final_norm is not None:
            yield self.final_norm, model, False
        if self.probe is not None:
            yield self.probe, model, False
        yield self.head, model, False
        yield self.pooling, model, False

    def read(self, reader: Reader, model: nn.Module, layers: list[nn.Module]) -> NetworkRecord:
        layer_input = LayerInput().read(reader, layers[0], "the first layer")
        records = [self.layer.read(reader, layer, f"layer {index}") for index, layer in enumerate(layers)]
        final_norm_input = None
        if self.final_norm is not None:
            final_norm_input = self.final_norm.read(reader, model, "the final norm")
        pooling = self.pooling.read(reader, model, "the model (for its input ids)")
        probe = None if self.probe is None else self.probe.read(reader, model, "the attention-pooling head")
        merges = {
            index: self._merging().read(reader, stage, f"the patch merging after layer {index}")
            for index, stage in self.merges(model).items()
        }
        encoder = None if self.encoder is None else self.encoder.read(reader, model)
        return NetworkRecord(
            layer_input,
            records,
            final_norm_input,
            self.head.read(reader, model),
            pooling,
            probe=probe,
            merges=merges,
            encoder=encoder,
        )

    def _merging(self) -> PatchMerging:
        assert self.adapter.stages is not None
        return PatchMerging(self.adapter.stages)

    def resolve(self, model: nn.Module, dtype: torch.dtype) -> ModelParts:
        """Read the parameters the adapter points to (the model itself is not touched)."""
        layers = [self.layer.resolve(layer, dtype) for layer in self.layer_modules(model)]
        final_norm = None if self.final_norm is None else self.final_norm.resolve(model, dtype)
        per_position = self.adapter.pooling == "each"
        if not (per_position and not self.head.steps) and (not self.head.steps or not _gives_logits(self.head.steps[-1])):
            raise ValueError(
                f"The adapter {self.adapter.name!r} must end its head with a step that gives logits, e.g. a Linear (or "
                "MeanOfLinears) step (only a per-position adapter, pooling='each', may have no head: it then explains "
                "the hidden states)."
            )
        head = self.head.resolve(model, dtype)
        merges = {index: self._merging().resolve(stage, dtype) for index, stage in self.merges(model).items()}
        if len(layers) - 1 in merges:
            raise ValueError(
                f"The adapter {self.adapter.name!r} has a patch merging after its last layer; the head reads that layer."
            )
        encoder = None if self.encoder is None else self.encoder.resolve(model, dtype)
        head_input_steps = [index if step.kind.reads_input else None for index, step in enumerate(head)]
        probe = None if self.probe is None else self.probe.resolve(model, dtype)
        return ModelParts(layers, final_norm, head, head_input_steps, probe=probe, merges=merges, encoder=encoder)


def _gives_logits(step: HeadStep) -> bool:
    """A step that can end a head: a linear map (any ``Linear`` or ``MeanOfLinears``), or a step whose
    kind says it gives logits (the image-text logits of a two-tower model)."""
    return isinstance(step, (Linear, MeanOfLinears)) or head_step_kind(step).gives_logits
