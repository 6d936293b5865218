"""An attention-pooling head: a learned query (the probe) attends to every position, then a
residual MLP (SigLIP's image tower, ``SiglipMultiheadAttentionPoolingHead``).

``a = MHA(probe, x, x)``, ``out = a + fc2(act(fc1(LN(a))))``. The probe is a parameter, not a
token: its query and the keys only decide the attention probabilities, which are frozen at their
real values as any attention's are. The values carry the pieces of every position, so the pooled
decomposition is ``sum_h sum_j alpha[h, j] (X[j] W_v^h) W_O^h`` plus the attention bias
``W_O b_v + b_O`` (each row of ``alpha`` sums to one), then the residual MLP as in a layer.

Recorded (exact path): the probe's query and the keys (the per-head probabilities are recomputed
from them with the module's own projections and checked against the module's output), the
LayerNorm's input and the activation's input. Frozen (fast path): the module's output is
recomputed from the real values with the probabilities detached; the LayerNorm and the
activation are frozen as in a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..adapters.base import resolve
from ..core.recording import Reader, Recorder
from .activations import ActivationFunctionAt
from .attention import attention_bias, mix_heads, split_heads
from .base import Component
from .feed_forward import FeedForward, ResolvedFeedForward, feed_forward
from .linear import Affine, LinearMap, linear
from .norms import Normalization, NormParams, normalize
from .pieces import Settings, add_bias

if TYPE_CHECKING:
    from ..core.freezing import Freezer


@dataclass(frozen=True)
class ProbeRecord:
    """What the attention-pooling head did in the real forward pass.

    Attributes:
        probs: (batch, heads, 1, seq), the probe's post-softmax attention probabilities.
        norm_input: (batch, 1, dim), the input of its LayerNorm (the attention's output).
        pre_activation: (batch, 1, ffn), the input of its MLP's activation.
    """

    probs: Tensor
    norm_input: Tensor
    pre_activation: Tensor

    def select(self, batch: slice, dtype: torch.dtype) -> "ProbeRecord":
        """These examples, in ``dtype``."""
        return ProbeRecord(self.probs[batch].to(dtype), self.norm_input[batch].to(dtype), self.pre_activation[batch].to(dtype))


@dataclass(frozen=True)
class ProbeParams:
    """The head's parameters: the attention's value map and ``W_O``, its head count, the
    LayerNorm and the MLP."""

    value: Affine
    output: Affine
    heads: int
    norm: NormParams
    feed_forward: ResolvedFeedForward


def _projections(attention: nn.MultiheadAttention) -> tuple[Affine, Affine, Affine]:
    """The query, key and value maps of a ``torch.nn.MultiheadAttention`` (one fused input map)."""
    weight = attention.in_proj_weight
    if weight is None:
        raise TypeError(
            "The attention-pooling head's MultiheadAttention has separate query/key/value weights "
            "(kdim or vdim differ from embed_dim); DecompX reads the fused in_proj_weight only."
        )
    bias = attention.in_proj_bias
    weights = weight.chunk(3)
    biases = (None, None, None) if bias is None else bias.chunk(3)
    return tuple(Affine(w, b) for w, b in zip(weights, biases))  # type: ignore[return-value]


def probe_probabilities(attention: nn.MultiheadAttention, query: Tensor, keys: Tensor) -> Tensor:
    """(batch, heads, queries, seq) the attention probabilities of ``attention(query, keys, keys)``
    (no mask), from the module's own projections.

    Args:
        query: (batch, queries, dim), the probe repeated over the batch.
        keys: (batch, seq, dim).
    """
    query_map, key_map, _ = _projections(attention)
    heads = attention.num_heads
    batch, queries, dim = query.shape
    head_dim = dim // heads
    q = torch.nn.functional.linear(query, query_map.weight, query_map.bias).view(batch, queries, heads, head_dim).transpose(1, 2)
    k = torch.nn.functional.linear(keys, key_map.weight, key_map.bias).view(batch, -1, heads, head_dim).transpose(1, 2)
    return torch.softmax((q @ k.transpose(-1, -2)) * head_dim**-0.5, dim=-1)


def _frozen_output(attention: nn.MultiheadAttention, probs: Tensor, values_input: Tensor) -> Tensor:
    """``W_O (probs . (x W_v + b_v)) + b_O`` with ``probs`` as given: (batch, queries, dim)."""
    _, _, value_map = _projections(attention)
    heads = attention.num_heads
    batch, seq, dim = values_input.shape
    values = torch.nn.functional.linear(values_input, value_map.weight, value_map.bias)
    values = values.view(batch, seq, heads, dim // heads).transpose(1, 2)
    mixed = (probs @ values).transpose(1, 2).reshape(batch, probs.shape[2], dim)
    return attention.out_proj(mixed)


def probe_pool(pieces: Tensor, record: ProbeRecord, params: ProbeParams, settings: Settings) -> Tensor:
    """Pool a decomposition through the attention-pooling head.

    Args:
        pieces: (batch, seq, pieces, dim), every position of the last layer (final norm included).
        record: this batch's :class:`ProbeRecord`.

    Returns:
        (batch, pieces, dim), the decomposition of the head's output.
    """
    n_pieces = pieces.shape[2]
    values = linear(pieces, Affine(params.value.weight, None), settings)  # the value bias is carried below
    mixed = mix_heads(record.probs, split_heads(values, params.heads), n_pieces)  # (batch, 1, pieces, dim)
    attended = add_bias(
        mixed @ params.output.weight.T, attention_bias(params.value, params.output, False, params.heads), settings
    )
    if not settings.include_ffn:  # "w/o FFN": the head's MLP is left out, as the layers' are
        return attended[:, 0]
    mlp_input = normalize(attended, record.norm_input, params.norm, settings)
    pooled = attended + feed_forward(mlp_input, record.pre_activation, params.feed_forward, settings)
    return pooled[:, 0]


@dataclass(frozen=True)
class ProbeHead(Component):
    """The attention-pooling head at ``path`` (with ``attention``, ``layernorm`` and ``mlp``
    submodules, as SigLIP's)."""

    path: str

    @property
    def norm(self) -> Normalization:
        return Normalization(f"{self.path}.layernorm")

    @property
    def mlp(self) -> FeedForward:
        mlp = f"{self.path}.mlp"
        return FeedForward(
            LinearMap.at(f"{mlp}.fc1"), ActivationFunctionAt(path=f"{mlp}.activation_fn"), LinearMap.at(f"{mlp}.fc2")
        )

    def _attention(self, root: nn.Module) -> nn.MultiheadAttention:
        attention = resolve(root, f"{self.path}.attention")
        if not isinstance(attention, nn.MultiheadAttention):
            raise TypeError(
                f"The attention-pooling head's attention at {self.path}.attention is a {type(attention).__name__}, not a torch.nn.MultiheadAttention."
            )
        return attention

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        attention = self._attention(root)
        recorder.record_argument(attention, "probe query", 0, "query")
        recorder.record_argument(attention, "probe keys", 1, "key")
        recorder.record_output(attention, "probe output", lambda output: output[0])
        self.norm.install(recorder, root)
        self.mlp.install(recorder, root)

    def read(self, reader: Reader, root: nn.Module, where: str) -> ProbeRecord:
        attention = self._attention(root)
        query = reader.take(attention, "probe query", f"{where}'s attention")
        keys = reader.take(attention, "probe keys", f"{where}'s attention")
        output = reader.take(attention, "probe output", f"{where}'s attention")
        with torch.no_grad():
            probs = probe_probabilities(attention, query, keys)
            recomputed = _frozen_output(attention, probs, keys)
        if not torch.allclose(recomputed, output, rtol=1e-3, atol=1e-5 * (1 + float(output.abs().max()))):
            raise RuntimeError(
                f"{where}'s attention did not compute MultiheadAttention(probe, x, x) without a mask, as the "
                "attention-pooling head is read: its output differs from the one recomputed from its projections."
            )
        return ProbeRecord(probs, self.norm.read(reader, root, f"{where}'s norm"), self.mlp.read(reader, root, f"{where}'s MLP"))

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        attention = self._attention(root)

        def frozen(_module: nn.Module, args: tuple, output: Any) -> Any:
            query, keys = args[0], args[1]
            probs = probe_probabilities(attention, query.detach(), keys.detach()).detach()
            return (_frozen_output(attention, probs, args[2]), *output[1:])

        freezer.recorder.forward_hook(attention, "probe frozen", frozen)
        self.norm.freeze(freezer, root, first=False)
        self.mlp.freeze(freezer, root, first=False)

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> ProbeParams:
        attention = self._attention(root)
        _, _, value_map = _projections(attention)
        value = Affine(value_map.weight.detach().to(dtype), None if value_map.bias is None else value_map.bias.detach().to(dtype))
        out_bias = attention.out_proj.bias
        output = Affine(attention.out_proj.weight.detach().to(dtype), None if out_bias is None else out_bias.detach().to(dtype))
        norm = self.norm.resolve(root, dtype)
        assert norm is not None
        return ProbeParams(value, output, attention.num_heads, norm, self.mlp.resolve(root, dtype))

    propagate = staticmethod(probe_pool)


__all__ = ["ProbeHead", "ProbeParams", "ProbeRecord", "probe_pool", "probe_probabilities"]
