"""Pooling: the head reads the first token, the last non-padding token, the mean of the
non-padding tokens, or, as Hugging Face's decoder sequence classifiers do, the rightmost token
whose id is not the pad token id; as a linear selection of rows it passes every piece unchanged.

The last mode needs the ids the model itself received: recorded (a forward pre-hook) at the
module the adapter names, with ``config.pad_token_id`` read at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import Adapter, resolve
from ..core.recording import Reader, Recorder
from .base import Component

if TYPE_CHECKING:
    from ..core.freezing import Freezer


@dataclass(frozen=True)
class PoolingRecord:
    """What the pooling read from the real forward pass (mode ``"last_non_pad_token"`` only).

    Attributes:
        input_ids: (batch, seq), the ids the model received; None when it received embeddings.
        pad_token_id: the model's ``config.pad_token_id`` (None when it has none).
    """

    input_ids: Optional[Tensor]
    pad_token_id: Optional[int]


def pad_token_id_of(model: nn.Module) -> Optional[int]:
    """The pad token id a Hugging Face decoder classifier pools by (its text config's)."""
    config: Any = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "pad_token_id", None)


@dataclass(frozen=True)
class Pooling(Component):
    """The adapter's pooling; recorded (``"last_non_pad_token"`` only): the input ids that the
    module at ``input_ids_at`` received (its first argument or ``input_ids``)."""

    mode: str
    input_ids_at: str

    @classmethod
    def of(cls, adapter: Adapter) -> "Pooling":
        return cls(adapter.pooling, adapter.input_ids_at)

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        if self.mode == "last_non_pad_token":
            recorder.record_argument(resolve(root, self.input_ids_at), "input_ids", 0, "input_ids")

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        """Pooling is linear; the fast path records the same ids as the exact path."""
        self.install(freezer.recorder, root)

    def read(self, reader: Reader, root: nn.Module, where: str) -> Optional[PoolingRecord]:
        if self.mode != "last_non_pad_token":
            return None
        ids = reader.take(resolve(root, self.input_ids_at), "input_ids", where)
        if ids is not None and (not isinstance(ids, Tensor) or ids.is_floating_point()):
            ids = None
        return PoolingRecord(ids, pad_token_id_of(root))


def last_non_pad_token(record: PoolingRecord, batch: int, seq: int, device: torch.device) -> Tensor:
    """(batch,) the row Hugging Face's decoder sequence classifiers pool (transformers 4.57 and 5.x):
    the rightmost token whose id is not ``pad_token_id`` (left or right padding, whatever the
    attention mask says; position 0 when every token is padding); the last token when the model
    got embeddings instead of ids, or has no pad token and one example.
    """
    if record.pad_token_id is None:
        if batch != 1:
            raise ValueError(
                "The model has no config.pad_token_id, so it cannot tell padding from the last token "
                "in a batch of several examples (Hugging Face refuses such batches too). Set "
                "model.config.pad_token_id, or explain one example at a time."
            )
        return torch.full((batch,), seq - 1, dtype=torch.long, device=device)
    if record.input_ids is None:
        return torch.full((batch,), seq - 1, dtype=torch.long, device=device)
    ids = record.input_ids.to(device)
    not_pad = (ids != record.pad_token_id).to(torch.int32)
    positions = torch.arange(seq, device=device, dtype=torch.int32)
    return (positions * not_pad).argmax(-1)


def pool_weights(adapter: Adapter, real_tokens: Tensor, dtype: torch.dtype, record: Optional[PoolingRecord] = None) -> Tensor:
    """(batch, seq) weights of the pooled state over the last layer's rows; for a per-position
    adapter (``pooling="each"``), where every row is an output, 1 at every non-padding position;
    for a concatenating pooling (``"first_and_patch_mean"``, ``"first_two"``), (batch, groups,
    seq): one row of weights per concatenated part, in the order of the concatenation.

    Args:
        real_tokens: (batch, seq) bool, False at padding positions.
        record: what the pooling recorded (needed by ``"last_non_pad_token"``).
    """
    batch, seq = real_tokens.shape
    weights = torch.zeros(batch, seq, dtype=dtype, device=real_tokens.device)
    if adapter.pooling in ("patch_mean", "first_and_patch_mean", "first_two"):
        return _vision_pool_weights(adapter.pooling, real_tokens, dtype)
    if adapter.pooling == "first":
        weights[:, 0] = 1.0
    elif adapter.pooling == "first_real":  # the first position the attention mask keeps
        weights[torch.arange(batch), real_tokens.to(torch.int8).argmax(dim=1)] = 1.0
    elif adapter.pooling == "last":
        positions = torch.arange(seq, device=real_tokens.device).expand(batch, seq)
        last = torch.where(real_tokens, positions, -1).max(dim=1).values.clamp(min=0)
        weights[torch.arange(batch), last] = 1.0
    elif adapter.pooling == "each":
        weights = real_tokens.to(dtype)
    elif adapter.pooling == "last_non_pad_token":
        if record is None:
            raise ValueError(
                f"The adapter {adapter.name!r} pools the last token that is not padding by its id; "
                "pass the capture's pooling record (Captured.pooling)."
            )
        weights[torch.arange(batch), last_non_pad_token(record, batch, seq, real_tokens.device)] = 1.0
    else:
        real = real_tokens.to(dtype)
        weights = real / real.sum(dim=1, keepdim=True).clamp(min=1)
    return weights


def _vision_pool_weights(mode: str, real_tokens: Tensor, dtype: torch.dtype) -> Tensor:
    """The poolings of vision classifiers: (batch, seq) for ``"patch_mean"``, else (batch, 2, seq)."""
    batch, seq = real_tokens.shape
    if seq < 2:
        raise ValueError(
            f"The pooling {mode!r} reads a token and the positions after it, but the sequence has {seq} position(s)."
        )
    first = torch.zeros(batch, seq, dtype=dtype, device=real_tokens.device)
    first[:, 0] = 1.0
    if mode == "first_two":
        second = torch.zeros_like(first)
        second[:, 1] = 1.0
        return torch.stack([first, second], dim=1)
    patches = real_tokens.to(dtype).clone()
    patches[:, 0] = 0.0  # every position after the first (the patches, without the CLS token)
    patch_mean = patches / patches.sum(dim=1, keepdim=True).clamp(min=1)
    return patch_mean if mode == "patch_mean" else torch.stack([first, patch_mean], dim=1)


def pooled_rows(pool_weights: Tensor) -> Tensor:
    """(rows,) ascending: the rows of the last layer that some pooled vector reads, from weights
    (batch, seq) or (batch, groups, seq)."""
    used = pool_weights.abs().reshape(-1, pool_weights.shape[-1]).sum(0) > 0
    return torch.nonzero(used).flatten()


def pool(pieces: Tensor, pool_weights: Tensor) -> Tensor:
    """Pooling as a linear selection of rows.

    Args:
        pieces: (batch, rows, pieces, dim).
        pool_weights: (batch, rows), or (batch, groups, rows) for a concatenating pooling.

    Returns:
        (batch, pieces, dim), or (batch, pieces, groups * dim): the groups' pooled vectors
        concatenated, first group first.
    """
    if pool_weights.dim() == 3:
        pooled = torch.einsum("bgr,brkd->bkgd", pool_weights, pieces)
        return pooled.flatten(2)
    return torch.einsum("br,brkd->bkd", pool_weights, pieces)
