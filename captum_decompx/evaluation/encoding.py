"""Tokenized batches of texts or text pairs, as the faithfulness protocol's methods and metrics see them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

Example = Union[str, tuple[str, str]]


@dataclass
class Batch:
    """One tokenized batch, as the methods see it.

    Attributes:
        input_ids: (batch, seq).
        attention_mask: (batch, seq), 1 on real tokens.
        token_type_ids: (batch, seq) segment ids, or None when the tokenizer gives none.
        candidates: (batch, seq) bool, the tokens that may be ranked and masked: real tokens that
            the tokenizer did not add (not [CLS], [SEP], <s>, </s>, padding).
        labels: (batch,) gold labels.
    """

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Optional[Tensor]
    candidates: Tensor
    labels: Tensor

    def forward_args(self) -> tuple[Tensor, ...]:
        """The ``additional_forward_args`` of a model called as ``model(input_ids, attention_mask,
        token_type_ids)``: ``(attention_mask,)``, plus ``token_type_ids`` when there are any."""
        if self.token_type_ids is None:
            return (self.attention_mask,)
        return (self.attention_mask, self.token_type_ids)


def _encode(tokenizer: Any, examples: Sequence[Example], max_length: Optional[int], *, pad: bool = True):
    """Tokenize texts or pairs: padded tensors, or (``pad=False``) lists of ids."""
    texts = [list(column) for column in zip(*examples)] if isinstance(examples[0], (tuple, list)) else [list(examples)]
    options: dict[str, Any] = {"truncation": max_length is not None, "max_length": max_length}
    if pad:
        options.update(padding=True, return_tensors="pt", return_special_tokens_mask=True)
    return tokenizer(*texts, **options)


def encode_examples(
    tokenizer: Any,
    examples: Sequence[Example],
    labels: Sequence[int],
    *,
    max_length: Optional[int] = 128,
    device: Union[str, torch.device, None] = None,
) -> Batch:
    """Tokenize texts or ``(text_a, text_b)`` pairs into a padded :class:`Batch`.

    Args:
        tokenizer: a Hugging Face tokenizer.
        examples: the texts or pairs (not mixed).
        labels: the gold label of every example.
        max_length: truncate longer inputs (None: no truncation).
        device: where the tensors go.

    Returns:
        a :class:`Batch`; its candidates are the real tokens the tokenizer did not add.
    """
    if len(examples) == 0:
        raise ValueError("No examples to encode.")
    if len(examples) != len(labels):
        raise ValueError(f"{len(examples)} examples but {len(labels)} labels.")
    encoded = _encode(tokenizer, examples, max_length)
    attention_mask = encoded["attention_mask"].to(device)
    token_type_ids = encoded.get("token_type_ids")
    special = encoded["special_tokens_mask"].to(device).bool()
    return Batch(
        input_ids=encoded["input_ids"].to(device),
        attention_mask=attention_mask,
        token_type_ids=None if token_type_ids is None else token_type_ids.to(device),
        candidates=attention_mask.bool() & ~special,
        labels=torch.as_tensor([int(label) for label in labels], device=device),
    )
