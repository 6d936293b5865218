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


#: The pooling modes that read the ids the model received.
BY_ID_MODES = ("last_non_pad_token", "eos_token")


@dataclass(frozen=True)
class PoolingRecord:
    """What the pooling read from the real forward pass (modes that pool by id only).

    Attributes:
        input_ids: (batch, seq), the ids the model received; None when it received embeddings.
        pad_token_id: the model's ``config.pad_token_id`` (None when it has none).
        mode: the pooling mode (``"last_non_pad_token"`` or ``"eos_token"``).
        eos_token_id: for ``"eos_token"``, the end-of-text id the text tower pools at.
    """

    input_ids: Optional[Tensor]
    pad_token_id: Optional[int]
    mode: str = "last_non_pad_token"
    eos_token_id: Optional[int] = None


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
        if self.mode in BY_ID_MODES:
            recorder.record_argument(resolve(root, self.input_ids_at), "input_ids", 0, "input_ids")

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        """Pooling is linear; the fast path records the same ids as the exact path."""
        self.install(freezer.recorder, root)

    def read(self, reader: Reader, root: nn.Module, where: str) -> Optional[PoolingRecord]:
        if self.mode not in BY_ID_MODES:
            return None
        tower = resolve(root, self.input_ids_at)
        ids = reader.take(tower, "input_ids", where)
        if ids is not None and (not isinstance(ids, Tensor) or ids.is_floating_point()):
            ids = None
        return PoolingRecord(ids, pad_token_id_of(root), self.mode, _eos_token_id_of(tower))


def _eos_token_id_of(tower: nn.Module) -> Optional[int]:
    """The end-of-text id a CLIP text tower pools at (its ``eos_token_id``, else its config's)."""
    value = getattr(tower, "eos_token_id", None)
    if value is None:
        value = getattr(getattr(tower, "config", None), "eos_token_id", None)
    return None if value is None else int(value)


def eos_token(record: PoolingRecord, batch: int, device: torch.device) -> Tensor:
    """(batch,) the row CLIP's text tower pools: the first ``eos_token_id`` by id, or, for configs
    whose ``eos_token_id`` is 2 (made before transformers fixed it), the largest id of each
    sequence (the end-of-text token has the largest id of CLIP's vocabulary).

    Raises:
        ValueError: the model got embeddings (no ids to find the token by), or a sequence has
            no end-of-text token (Hugging Face would silently pool its first token).
    """
    if record.input_ids is None:
        raise ValueError(
            "CLIP's text tower pools at the end-of-text token, found by its id; the model received "
            "embeddings, not token ids. Pass the token ids."
        )
    ids = record.input_ids.to(device)
    if record.eos_token_id == 2:
        return ids.to(torch.int).argmax(dim=-1)
    if record.eos_token_id is None:
        raise ValueError("The text tower has no eos_token_id (in itself or its config) to find its pooled token by.")
    found: Tensor = ids.eq(record.eos_token_id)
    missing = (~found.any(dim=-1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"Text example(s) {missing} have no end-of-text token (id {record.eos_token_id}): CLIP's text "
            "tower pools at that token, and without it the model would read the first token's state "
            "instead, an embedding of nothing in particular. Tokenize with the model's tokenizer "
            "(it appends the end-of-text token), or truncate so that the token is kept."
        )
    return found.to(torch.int).argmax(dim=-1)


def recorded_position(record: PoolingRecord, batch: int, seq: int, device: torch.device) -> Tensor:
    """(batch,) the row a by-id pooling mode reads (see :func:`last_non_pad_token`, :func:`eos_token`)."""
    if record.mode == "eos_token":
        return eos_token(record, batch, device)
    return last_non_pad_token(record, batch, seq, device)


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
    elif adapter.pooling in BY_ID_MODES:
        if record is None:
            raise ValueError(
                f"The adapter {adapter.name!r} pools a token found by its id; "
                "pass the capture's pooling record (Captured.pooling)."
            )
        weights[torch.arange(batch), recorded_position(record, batch, seq, real_tokens.device)] = 1.0
    elif adapter.pooling == "last_position":  # whatever the mask says (SigLIP's text tower)
        weights[:, -1] = 1.0
    elif adapter.pooling == "probe":  # every position is read by the attention-pooling head
        weights = torch.ones(batch, seq, dtype=dtype, device=real_tokens.device)
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
